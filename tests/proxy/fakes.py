"""Fakes for driving a real caching `ClientSession` without sockets, Redis or Postgres.

* Wire builders: one function per protocol message, frontend (`Query`, `Parse`, `Bind`, ...)
  and backend (`RowDescription`, `DataRow`, `ReadyForQuery`, ...), each returning the whole
  message's bytes, so a test reads like the conversation it scripts.
* `FakeTransport`: what the session writes to a socket is recorded; `take()` returns it as
  a list of whole messages (pytest then shows a readable diff) and forgets it.
* `Proxy`: a real `Server` (never started: nothing listens) with a real `CacheService` over
  a `GatedBackend` (the in-memory backend, whose invalidation bump can be held on an
  `asyncio.Event`).  `Proxy.connect()` runs the session's real start-up — StartupMessage,
  `_connect` with a fake upstream connection, AuthenticationOk, the hidden state read-back
  of `proxy.state.STARTUP_SQL` — and returns a `Peer` at READY.
* `Peer.send(...)` feeds client messages; `Peer.answer(...)` feeds what Postgres answers;
  both then let the event loop run the tasks and callbacks they started (`settle`).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cache.memory import MemoryBackend
from cache.service import CacheService
from proxy import codec, session
from proxy.codec import BackendTag, FrontendTag
from proxy.config import cache_settings, load
from proxy.metrics import Stats
from proxy.server import Server
from proxy.session import ClientSession, State
from proxy.state import RESULT_SETTINGS, STARTUP_SQL
from proxy.upstream import UpstreamProtocol

TEXT_OID = 25
INT4_OID = 23

# --- frontend messages (what the client sends) -------------------------------------------


def _cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def Query(sql: str) -> bytes:
    return codec.message(FrontendTag.QUERY, _cstr(sql))


def Parse(name: str, sql: str, oids: Sequence[int] = ()) -> bytes:
    return codec.encode_parse(name, sql, tuple(oids))


def Bind(portal: str = "", statement: str = "", params: Sequence[str | None] = ()) -> bytes:
    """Bind with text parameters and text results."""
    body = _cstr(portal) + _cstr(statement) + struct.pack("!H", 0)
    body += struct.pack("!H", len(params))
    for value in params:
        if value is None:
            body += struct.pack("!i", -1)
        else:
            body += struct.pack("!i", len(value.encode())) + value.encode()
    body += struct.pack("!H", 0)
    return codec.message(FrontendTag.BIND, body)


def Describe(kind: str, name: str = "") -> bytes:
    return codec.message(FrontendTag.DESCRIBE, kind.encode() + _cstr(name))


def Execute(portal: str = "", max_rows: int = 0) -> bytes:
    return codec.message(FrontendTag.EXECUTE, _cstr(portal) + struct.pack("!i", max_rows))


def Sync() -> bytes:
    return codec.message(FrontendTag.SYNC)


def Flush() -> bytes:
    return codec.message(FrontendTag.FLUSH)


def StartupMessage(**parameters: str) -> bytes:
    return codec.encode_startup(codec.StartupMessage(3, 0, parameters))


# --- backend messages (what Postgres answers) --------------------------------------------


def AuthenticationOk() -> bytes:
    return codec.message(BackendTag.AUTHENTICATION, struct.pack("!i", 0))


def ParameterStatus(name: str, value: str) -> bytes:
    return codec.message(BackendTag.PARAMETER_STATUS, _cstr(name) + _cstr(value))


def BackendKeyData(pid: int = 4242, secret: int = 7) -> bytes:
    return codec.message(BackendTag.BACKEND_KEY_DATA, struct.pack("!ii", pid, secret))


def ReadyForQuery(status: str = "I") -> bytes:
    return codec.message(BackendTag.READY_FOR_QUERY, status.encode())


def RowDescription(*columns: str, oid: int = TEXT_OID) -> bytes:
    body = struct.pack("!H", len(columns))
    for name in columns:
        body += _cstr(name) + struct.pack("!IhIhih", 0, 0, oid, -1, -1, 0)
    return codec.message(BackendTag.ROW_DESCRIPTION, body)


def DataRow(*values: str | None) -> bytes:
    body = struct.pack("!H", len(values))
    for value in values:
        if value is None:
            body += struct.pack("!i", -1)
        else:
            body += struct.pack("!i", len(value.encode())) + value.encode()
    return codec.message(BackendTag.DATA_ROW, body)


def CommandComplete(tag: str) -> bytes:
    return codec.message(BackendTag.COMMAND_COMPLETE, _cstr(tag))


def ParseComplete() -> bytes:
    return codec.message(BackendTag.PARSE_COMPLETE)


def BindComplete() -> bytes:
    return codec.message(BackendTag.BIND_COMPLETE)


def NoData() -> bytes:
    return codec.message(BackendTag.NO_DATA)


def ParameterDescription(*oids: int) -> bytes:
    return codec.message(
        BackendTag.PARAMETER_DESCRIPTION, struct.pack(f"!H{len(oids)}I", len(oids), *oids)
    )


def ErrorResponse(sqlstate: str, text: str) -> bytes:
    return codec.error_response("ERROR", sqlstate, text)


def reread_row(user: str = "postgres", temporary: bool = False) -> bytes:
    """The DataRow answering STARTUP_SQL / REREAD_SQL (`proxy.state.decode_reread`)."""
    settings = {"search_path": '"$user", public', "timezone": "Etc/UTC"}
    return DataRow(user, user, "t" if temporary else "f",
                   *(settings.get(name) for name in RESULT_SETTINGS))


def reread_answer(user: str = "postgres") -> list[bytes]:
    """Postgres's whole answer to the proxy's hidden state read-back."""
    return [
        RowDescription("session_user", "current_user", "temp", *RESULT_SETTINGS),
        reread_row(user),
        CommandComplete("SELECT 1"),
        ReadyForQuery("I"),
    ]


# --- transports --------------------------------------------------------------------------


def split(data: bytes) -> list[bytes]:
    """Whole tagged messages, in order (the data must end at a message boundary)."""
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        out.append(data[pos : pos + 1 + length])
        pos += 1 + length
    assert pos == len(data), "a message cut short"
    return out


class FakeTransport:
    """A socket's transport that records what is written to it."""

    def __init__(self, peer: str = "fake") -> None:
        self.data = bytearray()
        self.paused = False
        self.closed = False
        self._peer = peer

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def take_bytes(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        return data

    def take(self) -> list[bytes]:
        """Every message written since the last take."""
        return split(self.take_bytes())

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self._peer, 5432) if name == "peername" else default


# --- the proxy around one or more sessions -----------------------------------------------


async def settle(rounds: int = 20) -> None:
    """Let the callbacks and tasks started so far run (none of them waits on real I/O)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class GatedBackend(MemoryBackend):
    """The in-memory backend; while `gate` is set, an invalidation's bump waits for it."""

    gate: asyncio.Event | None = None
    bumped: list[list[str]]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.bumped = []

    async def bump(self, gen_keys: Sequence[str], tokens: Sequence[str] = ()) -> bool:
        if self.gate is not None:
            await self.gate.wait()
        self.bumped.append(list(gen_keys))
        return await super().bump(gen_keys, tokens)


@dataclass
class Peer:
    """One client session: its client socket and its upstream socket."""

    session: ClientSession
    client: FakeTransport
    upstream: FakeTransport

    async def send(self, *messages: bytes) -> None:
        """The client sends `messages` in one chunk."""
        self.session.data_received(b"".join(messages))
        await settle()

    async def answer(self, *messages: bytes) -> None:
        """Postgres sends `messages` in one chunk."""
        upstream = self.session.upstream
        assert upstream is not None
        upstream.data_received(b"".join(messages))
        await settle()

    def close(self) -> None:
        if self.session.state is not State.CLOSED or self.session.client is not None:
            self.session.connection_lost(None)


class Proxy:
    """A caching proxy with no socket: a real `Server`, `CacheService` and sessions."""

    def __init__(self) -> None:
        self.config = load(None, {}, {})
        self.stats = Stats()
        self.backend = GatedBackend()
        self.service = CacheService(cache_settings(self.config), self.backend, self.stats)
        self.server = Server(self.config, self.service, self.stats)
        self.peers: list[Peer] = []

    async def connect(
        self, user: str = "postgres", database: str = "app", early: Sequence[bytes] = ()
    ) -> Peer:
        """A session through its real start-up, at READY with its state read back; the
        start-up's bytes are taken off both transports.  `early`: client messages sent in
        the StartupMessage's chunk (they wait until the session is ready)."""
        client = FakeTransport()
        upstream = FakeTransport()

        async def fake_connect(owner: ClientSession, *args: object) -> UpstreamProtocol:
            protocol = UpstreamProtocol(owner)
            protocol.connection_made(upstream)  # type: ignore[arg-type]
            return protocol

        real_connect = session.connect
        session.connect = fake_connect  # type: ignore[assignment]
        try:
            s = ClientSession(self.server)
            s.connection_made(client)  # type: ignore[arg-type]
            peer = Peer(s, client, upstream)
            await peer.send(StartupMessage(user=user, database=database), *early)
        finally:
            session.connect = real_connect
        assert s.state is State.AUTHENTICATING
        assert upstream.take_bytes() == StartupMessage(user=user, database=database)
        startup_reply = [
            AuthenticationOk(),
            ParameterStatus("client_encoding", "UTF8"),
            ParameterStatus("standard_conforming_strings", "on"),
            BackendKeyData(),
            ReadyForQuery("I"),
        ]
        await peer.answer(*startup_reply)
        assert s.state is State.READY
        assert client.take() == startup_reply
        # The proxy reads the session's state back before the client's first request.
        assert upstream.take() == [Query(STARTUP_SQL)]
        await peer.answer(*reread_answer(user))
        assert client.take() == []  # the read-back is never seen by the client
        assert s.cache is not None and not s.cache.unknown
        self.peers.append(peer)
        return peer

    async def close(self) -> None:
        for peer in self.peers:
            peer.close()
        await settle()
        await self.service.close()
