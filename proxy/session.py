"""One client session: start-up, authentication relay, then the message relay.

Shell module.  It owns the client socket and the session's upstream connection and drives
the pure parts: `FrontendReader` (client framing), `BackendScanner` (upstream framing) and
`Tracker` (what is in flight, what exists upstream).  States:

    STARTUP ──StartupMessage──▶ CONNECTING ──connected──▶ AUTHENTICATING ──AuthenticationOk──▶ READY
       │ SSLRequest/GSSENCRequest: answer 'N', stay                                   │
       │ CancelRequest: forward upstream, close                                       ▼
       └ replication=… : RAW (bytes relayed untouched)                             CLOSED

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
from collections.abc import Callable
from enum import Enum, auto
from typing import TYPE_CHECKING, cast

from analyzer import Kind, TxnCommand, analyze
from proxy import codec
from proxy.codec import BackendTag, FrontendTag, TxnStatus
from proxy.errors import ProtocolViolation, ProxyError, ShuttingDown, UpstreamUnavailable
from proxy.framing import BackendScanner, FrontendReader
from proxy.state import Settings
from proxy.tracker import Pending, Request, Tracker
from proxy.upstream import UpstreamProtocol, connect

if TYPE_CHECKING:
    from proxy.server import Server

log = logging.getLogger("pgreactive.session")

_ids = itertools.count(1)

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
_FATAL_MARKERS = (b"VFATAL\x00", b"VPANIC\x00")
# CommandComplete tags of statements that change session settings or end a transaction.
_SETTINGS_TAGS = (b"SET\x00", b"RESET\x00", b"DISCARD", b"SAVEPOINT", b"RELEASE", b"ROLLBACK")
_END_TAGS = {b"COMMIT\x00": True, b"PREPARE TRANSACTION\x00": True, b"ROLLBACK\x00": False}


class State(Enum):
    STARTUP = auto()
    CONNECTING = auto()
    AUTHENTICATING = auto()
    READY = auto()
    RAW = auto()
    CLOSED = auto()


def _pending_for(tag: int, payload: bytes) -> Pending | None:
    """The tracker entry for one frontend message forwarded upstream (None: no answer)."""
    match tag:
        case FrontendTag.QUERY:
            return Pending(Request.QUERY, sql=codec.decode_query(payload))
        case FrontendTag.PARSE:
            p = codec.decode_parse(payload)
            return Pending(Request.PARSE, name=p.statement, sql=p.query, param_oids=p.param_oids)
        case FrontendTag.BIND:
            b = codec.decode_bind(payload)
            return Pending(Request.BIND, name=b.portal, statement=b.statement)
        case FrontendTag.DESCRIBE:
            d = codec.decode_describe(payload)
            return Pending(Request.DESCRIBE, name=d.name, kind=d.kind)
        case FrontendTag.EXECUTE:
            return Pending(Request.EXECUTE, name=codec.decode_execute(payload).portal)
        case FrontendTag.CLOSE:
            c = codec.decode_close(payload)
            return Pending(Request.CLOSE, name=c.name, kind=c.kind)
        case FrontendTag.SYNC:
            return Pending(Request.SYNC)
        case FrontendTag.FUNCTION_CALL:
            return Pending(Request.FUNCTION_CALL)
        case FrontendTag.COPY_DONE | FrontendTag.COPY_FAIL:
            return Pending(Request.COPY_END)
    return None  # Flush, CopyData, PasswordMessage


class ClientSession(asyncio.Protocol):
    """asyncio protocol for one client connection and its upstream."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.id = next(_ids)
        self.state = State.STARTUP
        self.client: asyncio.Transport | None = None
        self.upstream: UpstreamProtocol | None = None
        self.reader = FrontendReader(server.config.limits.max_message_bytes)
        self.scanner = BackendScanner(_DECODED)
        self.tracker = Tracker()
        self.startup: codec.StartupMessage | None = None
        self.parameters: dict[str, str] = {}  # from ParameterStatus
        self.settings = Settings()  # every setting's current value (ParameterStatus + SQL)
        self._completed_in_query = 0  # CommandCompletes seen in the current simple Query
        self._txn_outcome: bool | None = None  # COMMIT (True) / ROLLBACK (False) seen
        self._error_since_ready = False
        self.backend_key: tuple[int, bytes] | None = None
        self.draining = False  # shutting down: close at the next idle moment
        self._early: list[bytes] = []  # client bytes that arrived while connecting
        self._raw_after_connect = False  # a replication session: relay bytes untouched
        self._upstream_closing = False  # we ended it, or Postgres sent FATAL
        self._peer = "?"

    # --- client socket -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.session_opened(self)
        log.info("conn=%d open from %s", self.id, self._peer)

    def data_received(self, data: bytes) -> None:
        try:
            if self.state is State.READY:
                self._relay_client(data)
            elif self.state is State.RAW:
                self._send_upstream(data)
            elif self.state is State.STARTUP:
                self._startup(data)
            elif self.state is State.CONNECTING:
                self._early.append(data)
            elif self.state is State.AUTHENTICATING:
                self._authenticate(data)
        except ProxyError as exc:
            self.fail(exc)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client = None
        was = self.state
        self.state = State.CLOSED
        self._close_upstream(cancel=not self.tracker.idle() or was is State.RAW)
        self.server.session_closed(self)
        log.info("conn=%d closed", self.id)

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # --- start-up ------------------------------------------------------------------

    def _startup(self, data: bytes) -> None:
        if data[:1] == b"\x16" and not self.reader.pending():
            # A TLS ClientHello without SSLRequest (PG 17 direct TLS): not supported here,
            # and never to be parsed as a start-up packet (PITFALLS A4).
            self.close()
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
            case codec.SSLRequest() | codec.GSSENCRequest():
                self._write_client(b"N")  # not supported: the client goes on in plaintext
            case codec.CancelRequest(pid=pid, secret=secret):
                self.server.forward_cancel(pid, secret)
                self.state = State.CLOSED
                assert self.client is not None
                self.client.close()
            case codec.StartupMessage():
                self._begin(packet)

    def _begin(self, startup: codec.StartupMessage) -> None:
        params = dict(startup.parameters)
        unrecognized = [name for name in params if name.startswith("_pq_.")]
        if startup.minor > 0 or unrecognized:
            # We speak 3.0 both ways: tell the client, and ask the upstream for 3.0 only.
            self._write_client(codec.negotiate_protocol_version(0, unrecognized))
            for name in unrecognized:
                del params[name]
        if "user" not in params:
            raise ProtocolViolation("no PostgreSQL user name specified in startup packet")
        self.startup = codec.StartupMessage(3, 0, params)
        self.settings = Settings.from_startup(params)
        raw = params.get("replication", "false").lower() not in ("false", "off", "no", "0")
        self.state = State.CONNECTING
        self._raw_after_connect = raw
        self.server.spawn(self._connect())

    async def _connect(self) -> None:
        upstream = self.server.config.upstream
        try:
            protocol = await connect(self, upstream.host, upstream.port, upstream.connect_timeout)
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
            self.fail(
                UpstreamUnavailable(
                    f"could not connect to upstream server {upstream.url()}: {reason}"
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
        self._send_upstream(codec.encode_startup(self.startup))
        early, self._early = self._early, []
        if self._raw_after_connect:
            self.state = State.RAW
            self._send_upstream(self.reader.pending() + b"".join(early))
            return
        self.state = State.AUTHENTICATING
        self.data_received(b"".join(early))

    def _authenticate(self, data: bytes) -> None:
        """Until AuthenticationOk the client may send only authentication responses."""
        for tag, raw in self.reader.feed(data):
            if tag != FrontendTag.PASSWORD:
                raise ProtocolViolation(
                    f"expected an authentication response, got message type {chr(tag)!r}"
                )
            self._send_upstream(raw)

    # --- relay ---------------------------------------------------------------------

    def _relay_client(self, data: bytes) -> None:
        out: list[bytes] = []
        push = self.tracker.push
        for tag, raw in self.reader.feed(data):
            if tag == FrontendTag.TERMINATE:
                if out:
                    self._send_upstream(b"".join(out))
                self._terminate()
                return
            entry = _pending_for(tag, raw[5:])
            if entry is not None:
                push(entry)
            out.append(raw)
        if out:
            self._send_upstream(out[0] if len(out) == 1 else b"".join(out))

    def upstream_data(self, data: bytes) -> None:
        """Bytes from Postgres: account for them, then forward them as they came."""
        try:
            messages = self.scanner.feed(data)
        except ProxyError:
            log.warning("conn=%d upstream sent malformed data; closing", self.id)
            self._close_upstream(cancel=False)
            return
        if self.state is State.RAW:
            self._write_client(data)
            return
        tracker = self.tracker
        for tag, payload in messages:
            if tag == BackendTag.PARAMETER_STATUS:
                name, value = codec.decode_parameter_status(payload)
                self.parameters[name] = value
                self.settings.reported(name, value)
            elif tag == BackendTag.ERROR_RESPONSE:
                if any(marker in payload for marker in _FATAL_MARKERS):
                    self._upstream_closing = True
                self._error_since_ready = True
                tracker.on_backend(tag, payload)
            elif self.state is State.READY:
                if tag == BackendTag.COMMAND_COMPLETE:
                    self._command_complete(payload)
                tracker.on_backend(tag, payload)
                if tag == BackendTag.READY_FOR_QUERY:
                    self._ready()
            elif tag == BackendTag.AUTHENTICATION:
                if codec.auth_code(payload) == codec.AuthCode.OK:
                    self.state = State.READY  # authenticated: what follows is relayed
            elif tag == BackendTag.BACKEND_KEY_DATA:
                self.backend_key = codec.decode_backend_key_data(payload)
        self.server.stats.bytes_to_client += len(data)
        self._write_client(data)
        if self.draining and self.tracker.idle() and self.scanner.at_boundary():
            self.close(ShuttingDown("terminating connection due to administrator command"))

    # --- session settings ----------------------------------------------------------

    def _command_complete(self, tag: bytes) -> None:
        """Track SET/RESET/DISCARD and transaction ends from a CommandComplete."""
        head = self.tracker.pending[0] if self.tracker.pending else None
        index = 0
        if head is not None and head.request is Request.QUERY:
            index = self._completed_in_query
            self._completed_in_query += 1
        if tag in _END_TAGS and tag != b"ROLLBACK\x00":
            self._txn_outcome = _END_TAGS[tag]
            return
        if not tag.startswith(_SETTINGS_TAGS) or head is None:
            return
        sql = self._sql_of(head)
        statements = analyze(sql).statements if sql else ()
        if index >= len(statements):
            return
        statement = statements[index]
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
        elif tag == b"ROLLBACK\x00":
            self._txn_outcome = False
        elif statement.kind is Kind.SESSION:
            for change in statement.session_changes:
                self.settings.apply(change.action, change.name, change.value, change.local)

    def _sql_of(self, entry: Pending) -> str:
        if entry.request is Request.QUERY:
            return entry.sql
        statement = self.tracker.portals.get(entry.name)
        prepared = self.tracker.statements.get(statement) if statement is not None else None
        return prepared.sql if prepared is not None else ""

    def _ready(self) -> None:
        self._completed_in_query = 0
        if self.tracker.status is TxnStatus.IDLE:
            committed = self._txn_outcome
            if committed is None:
                committed = not self._error_since_ready  # an implicit transaction
            self.settings.end_transaction(committed)
            self._txn_outcome = None
            self._error_since_ready = False

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

    def pause_client(self) -> None:
        if self.client is not None:
            self.client.pause_reading()

    def resume_client(self) -> None:
        if self.client is not None:
            self.client.resume_reading()

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
            self._write_client(error.as_error_response())
        cancel = not self.tracker.idle()
        self.state = State.CLOSED
        self._close_client()
        self._close_upstream(cancel=cancel)

    def drain(self) -> None:
        """Shutdown: close now if nothing is in flight, else after the current work."""
        self.draining = True
        if self.state is not State.READY or (self.tracker.idle() and self.scanner.at_boundary()):
            self.close(ShuttingDown("terminating connection due to administrator command"))

    def _terminate(self) -> None:
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

    def _send_upstream(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            self.server.stats.bytes_to_upstream += len(data)
            upstream.transport.write(data)

    def _write_client(self, data: bytes) -> None:
        if self.client is not None:
            self.client.write(data)


SessionFactory = Callable[[], ClientSession]
