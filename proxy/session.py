"""One client session: start-up, authentication relay, then the message relay.

Shell module.  It owns the client socket and the session's upstream connection and drives
the pure parts: `FrontendReader` (client framing), `BackendScanner` (upstream framing) and
`Tracker` (what is in flight, what exists upstream).  States:

    STARTUP ──StartupMessage──▶ CONNECTING ──connected──▶ AUTHENTICATING ──AuthenticationOk──▶ READY
       │ SSLRequest: 'S' + TLS with a certificate, else 'N'; GSSENCRequest: 'N'       │
       │ TLS ClientHello (direct TLS): TLS with a certificate, else close             │
       │ CancelRequest: forward upstream, close once Postgres has closed it           ▼
       └ replication=… : RAW (bytes relayed untouched)                             CLOSED

From accept to READY (or RAW) runs one `limits.startup_timeout` timer: the whole start-up,
not a per-read timeout, so a client trickling a byte at a time is closed like an idle one.
A session refused by the server's connection limit goes through STARTUP like any other
(SSLRequest answered, CancelRequest forwarded) and answers its StartupMessage with 53300.

Errors raised by pure code are caught in exactly one place (`data_received`) and turned
into an ErrorResponse (SQLSTATE from the exception) before the session closes.  Upstream
bytes are forwarded in the chunks they arrived in; the scanner only looks at headers, so a
result of any size streams through with bounded memory (transport flow control pauses the
upstream while the client drains).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import time
from collections.abc import Callable, Coroutine
from enum import Enum, auto
from typing import TYPE_CHECKING, Any, Protocol, cast

from analyzer import Analysis, Kind, StatementAnalysis, TxnCommand, analyze
from proxy import codec
from proxy.codec import BackendTag, FrontendTag, TxnStatus, decode_bind_names
from proxy.errors import (
    ChannelBindingUnavailable,
    InternalError,
    ProtocolViolation,
    ProxyError,
    ShuttingDown,
    StartupTimeout,
    TLSRequired,
    TooManyConnections,
    UpstreamUnavailable,
)
from proxy.framing import BackendScanner, FrontendReader
from proxy.state import Settings
from proxy.tls import ClientTLS, describe
from proxy.tracker import SYNC_ENTRY, Pending, Request, Tracker, pending_for
from proxy.upstream import UpstreamProtocol, connect

if TYPE_CHECKING:
    import ssl

    from cache.service import CacheService, Invalidate
    from proxy.caching import SessionCache
    from proxy.config import Config
    from proxy.metrics import Latency, Stats
    from proxy.tls import UpstreamTLS

log = logging.getLogger("pgreactive.session")

_ids = itertools.count(1)
_SHUTTING_DOWN = ShuttingDown("terminating connection due to administrator command")

# Backend messages the relay decodes; everything else (DataRow above all) is skipped.
_DECODED = frozenset(
    int(t)
    for t in (
        BackendTag.AUTHENTICATION,
        BackendTag.BACKEND_KEY_DATA,
        BackendTag.PARAMETER_STATUS,
        BackendTag.READY_FOR_QUERY,
        BackendTag.ERROR_RESPONSE,
        BackendTag.PARSE_COMPLETE,
        BackendTag.BIND_COMPLETE,
        BackendTag.CLOSE_COMPLETE,
        BackendTag.NO_DATA,
        BackendTag.COMMAND_COMPLETE,
        BackendTag.EMPTY_QUERY_RESPONSE,
        BackendTag.PORTAL_SUSPENDED,
        BackendTag.COPY_IN_RESPONSE,
        BackendTag.ROW_DESCRIPTION,
    )
)
# CommandComplete tags after which the statement is analysed even without the cache (they
# change settings, savepoints or prepared statements); _END_TAGS end a transaction.
_SETTINGS_TAGS = (
    b"SET\x00", b"RESET\x00", b"DISCARD", b"SAVEPOINT", b"RELEASE", b"ROLLBACK", b"DEALLOCATE\x00"
)
_END_TAGS = {b"COMMIT\x00": True, b"PREPARE TRANSACTION\x00": True, b"ROLLBACK\x00": False}
_DECODE_ALL = frozenset(range(256))
# Hot-path constants (an enum member lookup costs ~90 ns on Python 3.11, a global ~8 ns).
_TERMINATE = int(FrontendTag.TERMINATE)
_PARAMETER_STATUS = int(BackendTag.PARAMETER_STATUS)
_BACKEND_KEY_DATA = int(BackendTag.BACKEND_KEY_DATA)
_COMMAND_COMPLETE = int(BackendTag.COMMAND_COMPLETE)
_ERROR_RESPONSE = int(BackendTag.ERROR_RESPONSE)
_READY_FOR_QUERY = int(BackendTag.READY_FOR_QUERY)
_PARSE_COMPLETE = int(BackendTag.PARSE_COMPLETE)
_PORTAL_SUSPENDED = int(BackendTag.PORTAL_SUSPENDED)
_NOTIFICATION_RESPONSE = int(BackendTag.NOTIFICATION_RESPONSE)
_EXECUTE = int(FrontendTag.EXECUTE)
_UNNAMED_EXECUTE = Pending(Request.EXECUTE)  # shared by relay-only sessions: never changed
_LENGTH = struct.Struct("!I").unpack_from
_FRONTEND_TAGS = codec.FRONTEND_TAGS
_F_BIND = int(FrontendTag.BIND)
_F_DESCRIBE = int(FrontendTag.DESCRIBE)
_F_SYNC = int(FrontendTag.SYNC)
_DATA_ROW = int(BackendTag.DATA_ROW)
_ROW_DESCRIPTION = int(BackendTag.ROW_DESCRIPTION)
_BIND_COMPLETE = int(BackendTag.BIND_COMPLETE)
_DESCRIBED = frozenset((int(BackendTag.ROW_DESCRIPTION), int(BackendTag.NO_DATA)))
_BIND = Request.BIND
_DESCRIBE = Request.DESCRIBE
_EXECUTE_REQUEST = Request.EXECUTE
_QUERY = Request.QUERY
_UNNAMED_PORTAL_DESCRIBE = Pending(Request.DESCRIBE, "", "", "P")  # shared, like the Execute
# Describe portal "", Execute portal "" without a row limit, Sync.
_THEN_RUN_UNNAMED = (
    b"D\x00\x00\x00\x06P\x00" b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" b"S\x00\x00\x00\x04"
)
# Decoded backend messages whose payload the relay never reads (the tracker needs the tag).
_PAYLOAD_UNREAD = frozenset(
    int(t)
    for t in (
        BackendTag.PARSE_COMPLETE,
        BackendTag.BIND_COMPLETE,
        BackendTag.CLOSE_COMPLETE,
        BackendTag.NO_DATA,
        BackendTag.ROW_DESCRIPTION,
        BackendTag.EMPTY_QUERY_RESPONSE,
        BackendTag.PORTAL_SUSPENDED,
        BackendTag.COPY_IN_RESPONSE,
    )
)


class Admission(Enum):
    """What the server's connection limit makes of a new client connection."""

    ADMITTED = auto()
    REFUSED = auto()  # answered FATAL 53300 after its start-up packet, as Postgres does
    DROPPED = auto()  # closed at once: too many refused sessions wait already


class State(Enum):
    STARTUP = auto()
    CONNECTING = auto()
    AUTHENTICATING = auto()
    READY = auto()
    RAW = auto()
    CLOSED = auto()


class SessionHost(Protocol):
    """What a session needs of the server that accepted it (`proxy.server.Server`): a
    port, so that this module knows no server class."""

    config: Config
    cache: CacheService | None
    stats: Stats
    latency: Latency  # of the reads on the cache path
    client_tls: ssl.SSLContext | None  # None: SSLRequest is answered N
    upstream_tls: UpstreamTLS | None  # None: sslmode=disable
    upstream_connect: Callable[[float], None]  # observes how long a connection took

    def session_opened(self, session: ClientSession) -> Admission: ...

    def session_closed(self, session: ClientSession, admission: Admission) -> None: ...

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None: ...

    def forward_cancel(self, pid: int, secret: bytes) -> None: ...

    async def cancel(self, pid: int, secret: bytes) -> None: ...


class ClientSession(asyncio.Protocol):
    """asyncio protocol for one client connection and its upstream."""

    def __init__(self, server: SessionHost) -> None:
        self.server = server
        self.id = next(_ids)
        self.state = State.STARTUP
        self.client: asyncio.Transport | None = None
        self.tls: ClientTLS | None = None  # the client's TLS, once started
        self.upstream: UpstreamProtocol | None = None
        self.reader = FrontendReader(server.config.limits.max_message_bytes)
        self.scanner = BackendScanner(_DECODED)
        self.tracker = Tracker()
        self.startup: codec.StartupMessage | None = None
        self.parameters: dict[str, str] = {}  # from ParameterStatus
        self.settings = Settings()  # every setting's current value (ParameterStatus + SQL)
        self._completed_in_query = 0  # CommandCompletes seen in the current simple Query
        self._error_since_ready = False
        self.backend_key: tuple[int, bytes] | None = None
        self.draining = False  # shutting down: close at the next idle moment
        self._early: list[bytes] = []  # client bytes that arrived while connecting
        self._raw_after_connect = False  # a replication session: relay bytes untouched
        self._auth_expects_response = False  # Postgres asked for a password / SASL message
        self._plus_hidden = False  # SCRAM-SHA-256-PLUS removed from the offer (see below)
        self._held_at_auth: list[tuple[int, bytes]] = []  # sent before AuthenticationOk
        self._upstream_closing = False  # we ended it, or Postgres sent FATAL
        self._peer = "?"
        self._paused_upstream: set[str] = set()  # why upstream reading is paused
        self._paused_client: set[str] = set()
        self.cache: SessionCache | None = None
        self.invalidating = False  # a commit waits for its invalidation (upstream paused)
        self._binds: dict[bytes, Pending] = {}  # relay-only: shared Bind entries by names
        self.admission = Admission.ADMITTED  # what the connection limit made of this client
        self._startup_timer: asyncio.TimerHandle | None = None
        if server.cache is not None:
            from proxy.caching import SessionCache

            self.cache = SessionCache(self, server.cache)

    # --- client socket -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.admission = self.server.session_opened(self)
        log.info("conn=%d open from %s", self.id, self._peer)
        if self.admission is Admission.DROPPED:
            self.state = State.CLOSED
            self.client.close()
            return
        self._startup_timer = asyncio.get_running_loop().call_later(
            self.server.config.limits.startup_timeout, self._startup_timed_out
        )

    def data_received(self, data: bytes) -> None:
        try:
            if self.state is State.READY:
                if self.cache is None and not self.reader.buffered and not self._held_at_auth:
                    self._relay_fresh(data)  # the usual case, one call less
                else:
                    self._relay_client(data)
            elif self.state is State.RAW:
                self.send_upstream(data)
            elif self.state is State.STARTUP:
                self._startup(data)
            elif self.state is State.CONNECTING:
                self._early.append(data)
            elif self.state is State.AUTHENTICATING:
                self._authenticate(data)
        except ProxyError as exc:
            self.fail(exc)
        except Exception:  # a bug of ours: end this session only, visibly
            log.exception("conn=%d internal error", self.id)
            self.fail(InternalError("internal error in pgreactive; see its log"))

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client = None
        if self.cache is not None:
            self.cache.close()
        was = self.state
        self.state = State.CLOSED
        self._close_upstream(cancel=not self.tracker.idle() or was is State.RAW)
        self._started()
        self.server.session_closed(self, self.admission)
        log.info("conn=%d closed", self.id)

    def pause_writing(self) -> None:
        self.pause_upstream("client")

    def resume_writing(self) -> None:
        self.resume_upstream("client")

    # --- what the cache path asks of its session (`proxy.caching.CacheSession`) ---------

    @property
    def connected(self) -> bool:
        """The client is still there."""
        return self.client is not None

    @property
    def stats(self) -> Stats:
        return self.server.stats

    @property
    def latency(self) -> Latency:
        return self.server.latency

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self.server.spawn(coroutine)

    @property
    def database(self) -> str:
        """The database this session is connected to (Postgres defaults it to the user)."""
        params = self.startup.parameters if self.startup is not None else {}
        return params.get("database") or params.get("user", "")

    # --- start-up ------------------------------------------------------------------

    def _startup(self, data: bytes) -> None:
        if data[:1] == b"\x16" and not self.reader.pending():
            # A TLS ClientHello without SSLRequest (PG 17 direct TLS), never to be parsed
            # as a start-up packet (PITFALLS A4): TLS if we have a certificate, else close.
            context = self.server.client_tls
            if context is None or self.tls is not None:
                self.close()
            else:
                self._start_tls(context, data, direct=True)
            return
        packets = self.reader.feed(data)
        while packets:
            self._startup_packet(codec.decode_startup(packets[0][1][4:]))
            if self.state is not State.STARTUP:
                break
            packets = self.reader.feed(b"")  # bytes pipelined behind an SSLRequest
        if self.state is State.CONNECTING:
            self.reader.startup = False  # what is left in it is read once connected

    def _startup_packet(self, packet: codec.StartupPacket) -> None:
        match packet:
            case codec.SSLRequest() | codec.GSSENCRequest() if self.tls is not None:
                raise ProtocolViolation("SSLRequest or GSSENCRequest inside TLS")
            case codec.SSLRequest() if self.server.client_tls is not None:
                if self.reader.pending():
                    # Bytes sent before the handshake are not protected by it: a man in the
                    # middle may have injected them (CVE-2021-23214).  Refuse, in plaintext.
                    raise ProtocolViolation("received unencrypted data after SSL request")
                self.write_client(b"S")
                self._start_tls(self.server.client_tls, b"", direct=False)
            case codec.SSLRequest() | codec.GSSENCRequest():
                self.write_client(b"N")  # not supported: the client goes on in plaintext
            case codec.CancelRequest(pid=pid, secret=secret):
                self.state = State.CLOSED
                self.server.spawn(self._cancel_then_close(pid, secret))
            case codec.StartupMessage():
                if self.admission is Admission.REFUSED:
                    raise TooManyConnections("sorry, too many clients already")
                self._begin(packet)

    async def _cancel_then_close(self, pid: int, secret: bytes) -> None:
        """Close the CancelRequest's socket only once Postgres has read the request: a
        driver that waits for that close before its next statement (asyncpg does) must
        never have that next statement cancelled instead."""
        await self.server.cancel(pid, secret)
        self._close_client()

    def _started(self) -> None:
        """Start-up is over (authenticated, relaying raw, or closed): stop its timer."""
        if self._startup_timer is not None:
            self._startup_timer.cancel()
            self._startup_timer = None

    def _startup_timed_out(self) -> None:
        self._startup_timer = None
        if self.state in (State.STARTUP, State.CONNECTING, State.AUTHENTICATING):
            self.fail(StartupTimeout("canceling authentication due to timeout"))

    def _start_tls(self, context: ssl.SSLContext, first: bytes, *, direct: bool) -> None:
        """Put TLS between the client's socket and this session: from now on `client` is
        the TLS transport and `data_received` gets plaintext (after the handshake)."""
        assert self.client is not None
        self.tls = ClientTLS(context, self.client, self, alpn_required=direct, conn=self.id)
        self.client = self.tls
        if first:
            self.tls.data_received(first)

    def _begin(self, startup: codec.StartupMessage) -> None:
        params = dict(startup.parameters)
        unrecognized = [name for name in params if name.startswith("_pq_.")]
        if startup.minor > 0 or unrecognized:
            # We speak 3.0 both ways: tell the client, and ask the upstream for 3.0 only.
            # The version field is the full code of the newest version we speak, as Postgres
            # sends it (libpq refuses a bare minor number as a downgrade below 3.0).
            self.write_client(codec.negotiate_protocol_version(codec.PROTOCOL_3_0, unrecognized))
            for name in unrecognized:
                del params[name]
        if "user" not in params:
            raise ProtocolViolation("no PostgreSQL user name specified in startup packet")
        if self.tls is None and self.server.config.tls.required:
            database = params.get("database") or params["user"]
            raise TLSRequired(
                f"pgreactive requires TLS (tls.required): connection from {self._peer} for "
                f'user "{params["user"]}", database "{database}" is not encrypted'
            )
        self.startup = codec.StartupMessage(3, 0, params)
        self.settings = Settings.from_startup(params)
        raw = params.get("replication", "false").lower() not in ("false", "off", "no", "0")
        self.state = State.CONNECTING
        self._raw_after_connect = raw
        self.server.spawn(self._connect())

    async def _connect(self) -> None:
        upstream = self.server.config.upstream
        started = time.perf_counter()
        try:
            protocol = await connect(
                self, upstream.host, upstream.port, upstream.connect_timeout,
                self.server.upstream_tls,
            )  # fmt: skip
            self.server.upstream_connect(time.perf_counter() - started)
        except (OSError, TimeoutError) as exc:
            self.fail(
                UpstreamUnavailable(
                    f"could not connect to upstream server {upstream.url()}: {describe(exc)}"
                )
            )
            return
        if self.state is State.CLOSED:
            assert protocol.transport is not None
            protocol.transport.close()
            return
        self.upstream = protocol
        self.server.stats.upstream_connections += 1
        assert self.startup is not None
        self.send_upstream(codec.encode_startup(self.startup))
        early, self._early = self._early, []
        if self._raw_after_connect:
            self.state = State.RAW
            self._started()
            self.send_upstream(self.reader.pending() + b"".join(early))
            return
        self.state = State.AUTHENTICATING
        self.capture_all(True)  # the first Authentication message whole (it may be rewritten)
        self.data_received(b"".join(early))

    def _authenticate(self, data: bytes) -> None:
        """Until AuthenticationOk nothing but authentication responses goes upstream.

        While Postgres waits for a password or SASL message, anything else is refused as
        Postgres would refuse it (08P01).  Otherwise (e.g. trust: AuthenticationOk is on its
        way) other messages wait here and are relayed once the client is authenticated.
        """
        for tag, raw in self.reader.feed(data):
            if tag == FrontendTag.PASSWORD and not self._held_at_auth:
                self._auth_expects_response = False
                if self._plus_hidden:
                    self._check_channel_binding(raw)
                self.send_upstream(raw)
            elif self._auth_expects_response:
                raise ProtocolViolation(
                    f"expected an authentication response, got message type {chr(tag)!r}"
                )
            else:
                self._held_at_auth.append((tag, raw))

    # --- relay ---------------------------------------------------------------------

    def _relay_client(self, data: bytes) -> None:
        messages = self.reader.feed(data)
        if self._held_at_auth:
            self._held_at_auth.extend(messages)  # still behind the start-up's ReadyForQuery
            return
        self._relay_messages(messages)

    def _relay_fresh(self, data: bytes) -> None:
        """Relay only, nothing buffered (the usual case): walk the messages of `data` in
        place, record what each expects, and send the complete ones in one write.

        The same as `FrontendReader.feed` + `_relay_messages`, inlined for the frequent
        messages: this runs for every client chunk of a relay-only session.
        """
        tracker = self.tracker
        push = tracker.push
        # Outside error-skipping and COPY, recording is a plain append (`push` never
        # starts either state, so this holds for the whole chunk).
        plain = not (tracker.skipping or tracker.copy_in)
        binds = self._binds
        append = tracker.pending.append if plain else push
        reader = self.reader
        quick_limit = reader.quick_limit
        n = len(data)
        pos = 0
        while n - pos >= 5:
            tag = data[pos]
            length = _LENGTH(data, pos + 1)[0]
            if not 4 <= length <= quick_limit or tag not in _FRONTEND_TAGS:
                reader.check(tag, length)  # raises, unless a long message is allowed
            end = pos + 1 + length
            if end > n:
                break
            if tag == _F_BIND:
                # Relay entries are never changed: one per (portal, statement) names.
                first = data.find(b"\x00", pos + 5, end)
                second = data.find(b"\x00", first + 1, end) if first >= 0 else -1
                names = data[pos + 5 : second]
                bind = binds.get(names) if second >= 0 else None
                if bind is None:  # (a malformed Bind raises here)
                    portal, statement = decode_bind_names(data, pos + 5, end)
                    bind = Pending(_BIND, portal, "", "", (), statement)
                    if len(binds) < 64:
                        binds[names] = bind
                else:
                    portal = bind.name
                if plain and not portal and data.endswith(_THEN_RUN_UNNAMED) and (
                    end + len(_THEN_RUN_UNNAMED) == n
                ):
                    # libpq's PQsendQueryPrepared: Bind, then exactly Describe, Execute and
                    # Sync of the unnamed portal, every entry known without a look.
                    tracker.pending.extend(
                        (bind, _UNNAMED_PORTAL_DESCRIBE, _UNNAMED_EXECUTE, SYNC_ENTRY)
                    )
                    pos = n
                    break
                append(bind)
            elif tag == _EXECUTE and length == 9 and data[pos + 5] == 0:
                append(_UNNAMED_EXECUTE)
            elif tag == _F_DESCRIBE and length == 6 and data[pos + 5 : end] == b"P\x00":
                append(_UNNAMED_PORTAL_DESCRIBE)
            elif tag == _F_SYNC:
                push(SYNC_ENTRY)
            elif tag == _TERMINATE:
                if pos:
                    self.send_upstream(data[:pos])
                self.terminate()
                return
            else:
                entry = pending_for(tag, data[pos + 5 : end])
                if entry is not None:
                    push(entry)
            pos = end
        if pos < n:
            reader.keep(data[pos:])  # the start of a message: the rest comes later
            data = data[:pos]
        upstream = self.upstream
        if data and upstream is not None and upstream.transport is not None:
            self.server.stats.bytes_to_upstream += len(data)
            upstream.transport.write(data)

    def _relay_messages(self, messages: list[tuple[int, bytes]]) -> None:
        if self.cache is not None:
            self.cache.client_messages(messages)
            return
        push = self.tracker.push
        for index, (tag, raw) in enumerate(messages):
            if tag == _TERMINATE:
                if index:
                    self.send_upstream(b"".join(raw for _, raw in messages[:index]))
                self.terminate()
                return
            entry = pending_for(tag, raw[5:])
            if entry is not None:
                push(entry)
        if messages:
            self.send_upstream(
                messages[0][1] if len(messages) == 1 else b"".join(raw for _, raw in messages)
            )

    def client_messages(self, messages: list[tuple[int, bytes]]) -> None:
        """Client messages that were held back (behind a cache lookup, or until the client
        was authenticated), now to be relayed; errors end the session as usual."""
        if self.state is not State.READY:
            return
        try:
            self._relay_messages(messages)
        except ProxyError as exc:
            self.fail(exc)
        except Exception:
            log.exception("conn=%d internal error", self.id)
            self.fail(InternalError("internal error in pgreactive; see its log"))

    def upstream_data(self, data: bytes) -> None:
        """Bytes from Postgres: account for them, then forward them as they came."""
        if (
            self.cache is None
            and self.state is State.READY
            and self.scanner.at_boundary()
            and not self._held_at_auth
        ):
            self.server.stats.bytes_to_client += len(data)
            try:
                self._relay_plain_fresh(data)
            except ProtocolViolation:
                log.warning("conn=%d upstream sent malformed data; closing", self.id)
                self._close_upstream(cancel=False)
            except Exception:
                log.exception("conn=%d cannot follow the upstream's messages", self.id)
                self.close(InternalError("internal error in pgreactive; see its log"))
            return
        per_message = self.scanner.decode is _DECODE_ALL
        try:
            messages = self.scanner.feed(data)
        except ProxyError:
            log.warning("conn=%d upstream sent malformed data; closing", self.id)
            self._close_upstream(cancel=False)
            return
        self.server.stats.bytes_to_client += len(data)
        if self.state is State.RAW:
            self.write_client(data)
            return
        self._relay_guarded(data, messages, 0, 0, per_message)

    def _relay_guarded(
        self,
        data: bytes,
        messages: list[tuple[int, bytes, int]],
        index: int,
        written: int,
        per_message: bool,
    ) -> None:
        try:
            self._relay_upstream(data, messages, index, written, per_message)
        except Exception:
            log.exception("conn=%d cannot follow the upstream's messages", self.id)
            self.close(InternalError("internal error in pgreactive; see its log"))

    def _relay_upstream(
        self,
        data: bytes,
        messages: list[tuple[int, bytes, int]],
        index: int,
        written: int,
        per_message: bool,
    ) -> None:
        """Account for messages[index:] and forward `data` from offset `written` on.

        Usually the whole chunk goes out in one write.  While the cache copies a result
        (`per_message`: the scanner returned every message whole) messages are written one
        by one, so one can be replaced or dropped (a hidden ParseComplete, a row-limited
        Execute's extra row) and an incomplete last message waits for its end.  At a
        commit whose invalidation must finish first, the stream stops just before the
        message that tells the client, and resumes there once the invalidation is done.
        """
        tracker = self.tracker
        cache = self.cache
        if cache is None and self.state is State.READY and not self._held_at_auth:
            self._relay_plain(data, messages)
            return
        write = self.write_client
        for i in range(index, len(messages)):
            tag, payload, end = messages[i]
            if tag == BackendTag.PARAMETER_STATUS:
                name, value = codec.decode_parameter_status(payload)
                self.parameters[name] = value
                self.settings.reported(name, value)
                replacement = None
            elif self.state is not State.READY or tag == BackendTag.BACKEND_KEY_DATA:
                # (BackendKeyData follows AuthenticationOk.)
                replacement = self._startup_reply(tag, payload)
            elif (
                cache is not None
                and tracker.pending
                and tracker.pending[0].hidden
                and tag != _NOTIFICATION_RESPONSE
            ):
                # A reply to a request the proxy made on the client's behalf (a deferred
                # Parse, a Close, a settings re-read): the client never sees it, except an
                # ErrorResponse of a request that stands in for one of the client's own.
                replacement = cache.hidden_reply(tracker.pending[0], tag, payload)
                if tag == _ERROR_RESPONSE and replacement is None:
                    self._error(payload)
                tracker.on_backend(tag, payload)
            else:
                barrier: Invalidate | None = None
                head = tracker.pending[0] if tracker.pending else None
                replacement = cache.observe(tag, payload, head) if cache is not None else None
                if tag == _COMMAND_COMPLETE:
                    barrier = self._command_complete(payload, head)
                elif tag == _PORTAL_SUSPENDED and head is not None:
                    # A row-limited Execute of an UPDATE ... RETURNING has run the whole
                    # statement although it answers PortalSuspended: collect its writes.
                    self._command_complete(b"", head)
                elif tag == _ERROR_RESPONSE:
                    self._error(payload)
                tracker.on_backend(tag, payload)
                if tag == BackendTag.READY_FOR_QUERY:
                    barrier = self._ready()
                if barrier is not None:
                    start = end - 5 - len(payload)
                    if per_message or start >= written:
                        if start > written:
                            write(data[written:start])
                        held = replacement if replacement is not None else (
                            data[start:end] if start >= 0 else codec.message(tag, payload)
                        )
                        after = end
                    else:
                        held, after = b"", written  # its start is out already
                    self.pause_upstream("barrier")
                    self.invalidating = True
                    self.server.spawn(
                        self._after_barrier(barrier, held, data, messages, i + 1, after,
                                            per_message)
                    )
                    return
            if replacement is None and not per_message:
                continue
            start = end - 5 - len(payload)
            if start >= written:
                if start > written:
                    write(data[written:start])
                write(replacement if replacement is not None else data[start:end])
            elif per_message:
                write(replacement if replacement is not None else codec.message(tag, payload))
            # else: a hidden reply split across chunks in relay mode cannot happen (a hidden
            # Parse switches the scanner to per-message mode before it is sent).
            written = end
        if written < len(data) and (not per_message or self.scanner.decode is not _DECODE_ALL):
            # Relay mode, or per-message mode just ended: the (incomplete) rest goes as is.
            write(data[written:] if written else data)
        if self._held_at_auth and self._auth_expects_response:
            # Postgres asked for a password, but the client had already sent something else:
            # Postgres would read that message now and refuse it.
            tag = self._held_at_auth[0][0]
            self._held_at_auth = []
            self.fail(
                ProtocolViolation(f"expected password response, got message type {chr(tag)!r}")
            )
            return
        if self._held_at_auth and self.state is State.READY and tracker.status_known:
            # Messages sent before authentication ended go up after the start-up's
            # ReadyForQuery, so that ReadyForQuery is not taken for theirs.
            early, self._held_at_auth = self._held_at_auth, []
            self.client_messages(early)
        if self.draining:
            self._close_if_drained()

    def _relay_plain(self, data: bytes, messages: list[tuple[int, bytes, int]]) -> None:
        """`_relay_upstream` without a cache: account for the messages, send the chunk."""
        plain_message = self._plain_message
        for tag, payload, _ in messages:
            plain_message(tag, payload)
        self.write_client(data)
        if self.draining:
            self._close_if_drained()

    def _relay_plain_fresh(self, data: bytes) -> None:
        """`_relay_plain` for a chunk that starts at a message boundary (the usual case):
        walk its messages in place, slicing out only the payloads that are read, with the
        tracker's most frequent steps inlined (`Tracker.on_backend` does the rest)."""
        tracker = self.tracker
        pending = tracker.pending
        on_backend = tracker.on_backend
        plain_message = self._plain_message
        n = len(data)
        pos = 0
        while n - pos >= 5:
            tag = data[pos]
            length = _LENGTH(data, pos + 1)[0]
            if length < 4:
                raise ProtocolViolation(f"invalid backend message length {length}")
            end = pos + 1 + length
            if end > n:
                break
            if tag == _DATA_ROW:
                pass
            elif tag in _PAYLOAD_UNREAD:  # ParseComplete, BindComplete, RowDescription, ...
                head = pending[0] if pending else None
                if head is not None and tag == _BIND_COMPLETE and head.request is _BIND:
                    pending.popleft()
                    tracker.portals[head.name] = head.statement
                elif head is not None and head.request is _DESCRIBE and tag in _DESCRIBED:
                    pending.popleft()
                elif head is not None and head.request is _QUERY and tag == _ROW_DESCRIPTION:
                    pass  # a simple Query's RowDescription
                else:
                    on_backend(tag, b"")
            elif tag == _COMMAND_COMPLETE and pending and data.startswith(b"SELECT ", pos + 5):
                # A SELECT's end: nothing to track but its position.
                request = pending[0].request
                if request is _EXECUTE_REQUEST:
                    pending.popleft()
                elif request is _QUERY:
                    self._completed_in_query += 1
                    tracker.portals.pop("", None)  # it ran in a new unnamed portal
                else:
                    plain_message(tag, data[pos + 5 : end])
            elif tag == _READY_FOR_QUERY:
                on_backend(tag, data[pos + 5 : end])
                self._ready()
            elif tag in _DECODED:
                plain_message(tag, data[pos + 5 : end])
            pos = end
        if pos < n:
            self.scanner.feed(data[pos:])  # a message that ends in a later chunk
        client = self.client
        if client is not None:
            client.write(data)
        if self.draining:
            self._close_if_drained()

    def _plain_message(self, tag: int, payload: bytes) -> None:
        tracker = self.tracker
        if tag == _COMMAND_COMPLETE:
            self._command_complete(payload, tracker.pending[0] if tracker.pending else None)
        elif tag == _READY_FOR_QUERY:
            tracker.on_backend(tag, payload)
            self._ready()
            return
        elif tag == _PARAMETER_STATUS:
            name, value = codec.decode_parameter_status(payload)
            self.parameters[name] = value
            self.settings.reported(name, value)
            return
        elif tag == _ERROR_RESPONSE:
            self._error(payload)
        elif tag == _BACKEND_KEY_DATA:
            self.backend_key = codec.decode_backend_key_data(payload)
            return
        tracker.on_backend(tag, payload)

    async def _after_barrier(
        self,
        barrier: Invalidate,
        held: bytes,
        data: bytes,
        messages: list[tuple[int, bytes, int]],
        index: int,
        written: int,
        per_message: bool,
    ) -> None:
        try:
            assert self.cache is not None
            await self.cache.settle(barrier)
        except Exception:  # the cache never fails a query: log and go on
            log.exception("conn=%d invalidation failed", self.id)
        if self.state is State.CLOSED or self.client is None:
            return
        self.invalidating = False
        if held:
            self.write_client(held)
        self.resume_upstream("barrier")
        self._relay_guarded(data, messages, index, written, per_message)

    def _startup_reply(self, tag: int, payload: bytes) -> bytes | None:
        """Authentication phase: watch for AuthenticationOk, BackendKeyData and FATALs;
        returns what to send the client instead of this message (None: itself)."""
        if tag == BackendTag.AUTHENTICATION:
            code = codec.auth_code(payload)
            self.capture_all(False)  # seen whole: the rest is relayed in chunks again
            if code == codec.AuthCode.OK:
                self.state = State.READY  # authenticated: what follows is relayed
                self._started()
                self._auth_expects_response = False
            else:
                self._auth_expects_response = code not in (
                    codec.AuthCode.SASL_FINAL, codec.AuthCode.OK
                )
            if code == codec.AuthCode.SASL:
                return self._offer_sasl(payload)
        elif tag == BackendTag.BACKEND_KEY_DATA:
            self.backend_key = codec.decode_backend_key_data(payload)
        elif tag == BackendTag.ERROR_RESPONSE:
            self._error(payload)
        return None

    def _offer_sasl(self, payload: bytes) -> bytes | None:
        """AuthenticationSASL without SCRAM-SHA-256-PLUS.

        Channel binding cannot be relayed: its tls-server-end-point data is a hash of the
        certificate of the TLS session the client sees, which is ours, never the one Postgres
        checks against (PITFALLS A8b).  Postgres offers -PLUS only on a TLS connection, and
        there it refuses a client that says it could bind but thinks the server cannot (gs2
        flag ``y``, what libpq on TLS sends when -PLUS is not offered): `_authenticate`
        refuses that login itself, with a message that says what to change."""
        mechanisms = codec.sasl_mechanisms(payload)
        if "SCRAM-SHA-256-PLUS" not in mechanisms:
            return None
        self._plus_hidden = True
        return codec.authentication_sasl([m for m in mechanisms if m != "SCRAM-SHA-256-PLUS"])

    def _check_channel_binding(self, raw: bytes) -> None:
        """The SASLInitialResponse after `_offer_sasl` hid -PLUS: refuse gs2 flag ``y``."""
        self._plus_hidden = False
        _, data = codec.decode_sasl_initial_response(raw[5:])
        if data[:1] == b"y":
            raise ChannelBindingUnavailable(
                "SCRAM channel binding cannot pass through pgreactive: Postgres offers it on "
                "its TLS connection and would refuse this client, which uses TLS too; "
                "connect with channel_binding=disable (or use upstream.sslmode=disable)"
            )

    def _error(self, payload: bytes) -> None:
        self._error_since_ready = True
        if codec.decode_error_fields(payload).get("V") in ("FATAL", "PANIC"):
            self._upstream_closing = True

    def capture_all(self, on: bool) -> None:
        """Decode every backend message (DataRows too) while a result is being captured."""
        self.scanner.decode = _DECODE_ALL if on else _DECODED

    # --- session settings ----------------------------------------------------------

    def _command_complete(self, tag: bytes, head: Pending | None) -> Invalidate | None:
        """Track settings, transaction ends and (with the cache) writes at CommandComplete.

        A transaction ends at its COMMIT / ROLLBACK / PREPARE TRANSACTION CommandComplete
        (not at ReadyForQuery: `COMMIT AND CHAIN`, or statements after a COMMIT in the same
        Query, begin another one before any ReadyForQuery).
        """
        index = 0
        if head is not None and head.request is Request.QUERY:
            index = self._completed_in_query
            self._completed_in_query += 1
        if self.cache is None and not tag.startswith(_SETTINGS_TAGS) and tag not in _END_TAGS:
            return None  # relay only, and nothing that changes settings: the usual case
        statement: StatementAnalysis | None = None
        if head is not None and (self.cache is not None or tag.startswith(_SETTINGS_TAGS)):
            statement = self._statement(head, index)
        ended = _END_TAGS.get(tag)
        txn = statement.transaction if statement is not None else None
        if ended is False and txn is not None and txn.command is TxnCommand.ROLLBACK_TO:
            ended = None
        if ended is not None:
            self.settings.end_transaction(ended)
            self._error_since_ready = False  # what follows starts a new transaction
        elif statement is not None:
            self._track_settings(statement)
            if statement.kind is Kind.DEALLOCATE and statement.statement_name is not None:
                # The tag of DEALLOCATE name is just "DEALLOCATE": the tracker cannot see it.
                self.tracker.statements.pop(statement.statement_name, None)
        if self.cache is not None:
            return self.cache.completed(statement, head.params if head else (), tag)
        return None

    def _statement(self, head: Pending, index: int) -> StatementAnalysis | None:
        """What the statement that just completed was (None if unknown)."""
        if head.request is not Request.QUERY and head.request is not Request.EXECUTE:
            return None
        analysis = head.analysis
        if not isinstance(analysis, Analysis):
            sql = head.sql if head.request is Request.QUERY else (head.sql or self._sql_of(head))
            if not sql:
                return None
            if self.cache is None:
                analysis = analyze(sql)  # (relay entries may be shared: no memo on them)
            else:
                analysis = analyze(sql, options=self.cache.options())
                head.analysis = analysis
        statements = analysis.statements
        return statements[index] if index < len(statements) else None

    def _track_settings(self, statement: StatementAnalysis) -> None:
        txn = statement.transaction
        if txn is not None and txn.savepoint is not None:
            match txn.command:
                case TxnCommand.SAVEPOINT:
                    self.settings.savepoint(txn.savepoint)
                case TxnCommand.ROLLBACK_TO:
                    self.settings.rollback_to(txn.savepoint)
                    self._error_since_ready = False  # the transaction is usable again
                case TxnCommand.RELEASE:
                    self.settings.release(txn.savepoint)
        else:
            # SET/RESET/DISCARD, and set_config() inside a SELECT: a setting that changed
            # must change the cache key, whatever statement changed it.
            for change in statement.session_changes:
                self.settings.apply(change.action, change.name, change.value, change.local)

    def _sql_of(self, entry: Pending) -> str:
        if entry.request is Request.QUERY:
            return entry.sql
        statement = self.tracker.portals.get(entry.name)
        prepared = self.tracker.statements.get(statement) if statement is not None else None
        return prepared.sql if prepared is not None else ""

    def _ready(self) -> Invalidate | None:
        """ReadyForQuery: settings and writes of an implicit transaction that just ended."""
        self._completed_in_query = 0
        barrier = None
        if self.tracker.status is TxnStatus.IDLE:
            committed = not self._error_since_ready  # an error rolled the implicit one back
            self.settings.end_transaction(committed)
            self._error_since_ready = False
            if self.cache is not None:
                barrier = self.cache.transaction_ended(committed)
        if self.cache is not None:
            self.cache.ready()
        return barrier

    def upstream_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        self.server.stats.upstream_connections -= 1
        if self.client is None or self.state is State.CLOSED:
            return
        if self._upstream_closing:
            self._close_client()
            return
        log.warning("conn=%d upstream connection lost: %s", self.id, exc or "closed")
        self.close(UpstreamUnavailable("server closed the connection unexpectedly"))

    def pause_client(self, reason: str = "upstream") -> None:
        if not self._paused_client and self.client is not None:
            self.client.pause_reading()
        self._paused_client.add(reason)

    def resume_client(self, reason: str = "upstream") -> None:
        paused = self._paused_client
        if reason not in paused:
            return
        paused.discard(reason)
        if not paused and self.client is not None:
            self.client.resume_reading()

    def pause_upstream(self, reason: str) -> None:
        upstream = self.upstream
        if not self._paused_upstream and upstream is not None and upstream.transport is not None:
            upstream.transport.pause_reading()
        self._paused_upstream.add(reason)

    def resume_upstream(self, reason: str) -> None:
        self._paused_upstream.discard(reason)
        upstream = self.upstream
        if not self._paused_upstream and upstream is not None and upstream.transport is not None:
            upstream.transport.resume_reading()

    # --- ending --------------------------------------------------------------------

    def fail(self, error: ProxyError) -> None:
        """End the session because of `error`, telling the client why."""
        log.warning("conn=%d %s: %s", self.id, error.sqlstate, error)
        if isinstance(error, ProtocolViolation):
            self.server.stats.protocol_errors += 1
        self.close(error)

    def close(self, error: ProxyError | None = None) -> None:
        """Close both sides; send `error` first if the client stream is at a boundary."""
        if self.client is not None and error is not None and self.scanner.at_boundary():
            self.write_client(error.as_error_response())
        cancel = not self.tracker.idle()
        self.state = State.CLOSED
        self._close_client()
        self._close_upstream(cancel=cancel)

    def drain(self) -> None:
        """Shutdown: close now if nothing is in flight, else after the current work."""
        self.draining = True
        if self.state is not State.READY:
            self.close(_SHUTTING_DOWN)
        else:
            self._close_if_drained()

    def _close_if_drained(self) -> None:
        """Shutting down: close with 57P01 (as Postgres does on a fast shutdown) once
        nothing is in flight and the client stream is at a message boundary."""
        if self.tracker.idle() and self.scanner.at_boundary():
            self.close(_SHUTTING_DOWN)

    def terminate(self) -> None:
        self.state = State.CLOSED
        self._close_upstream(cancel=False)
        self._close_client()

    def _close_client(self) -> None:
        if self.client is not None:
            self.client.close()

    def _close_upstream(self, cancel: bool) -> None:
        upstream = self.upstream
        if upstream is None or upstream.transport is None or self._upstream_closing:
            if upstream is not None and upstream.transport is not None:
                upstream.transport.close()
            return
        self._upstream_closing = True
        if cancel and self.backend_key is not None:
            self.server.forward_cancel(*self.backend_key)
        if self.state is not State.RAW:
            upstream.transport.write(codec.terminate())
        upstream.transport.close()

    # --- writing -------------------------------------------------------------------

    def send_upstream(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            self.server.stats.bytes_to_upstream += len(data)
            upstream.transport.write(data)

    def write_client(self, data: bytes) -> None:
        if self.client is not None:
            self.client.write(data)


SessionFactory = Callable[[], ClientSession]
