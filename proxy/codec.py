"""PostgreSQL v3 wire-protocol codec: message tags, decoders and encoders.

Theory of operation: this module turns the payload of one complete message into a small
frozen dataclass, and builds the few messages the proxy itself has to send.  It knows the
byte layout of messages and nothing else: no sockets, no asyncio, no session state.  Framing
(finding where a message ends in a byte stream) lives in `proxy.framing`.

Only the messages the proxy must read are decoded (see DESIGN.md, "Protocol strategy");
DataRow payloads are never decoded.  Decoders raise `ProtocolViolation` (SQLSTATE 08P01)
on a payload that does not match the documented layout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from proxy.errors import ProtocolViolation, UnsupportedProtocol

PROTOCOL_3_0 = 196608  # (3 << 16) | 0
CANCEL_REQUEST_CODE = 80877102  # 1234.5678
SSL_REQUEST_CODE = 80877103  # 1234.5679
GSSENC_REQUEST_CODE = 80877104  # 1234.5680
MAX_STARTUP_PACKET = 10000  # PG's MAX_STARTUP_PACKET_LENGTH


class FrontendTag(IntEnum):
    """Type bytes of frontend (F) messages after start-up."""

    BIND = ord("B")
    CLOSE = ord("C")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_FAIL = ord("f")
    DESCRIBE = ord("D")
    EXECUTE = ord("E")
    FLUSH = ord("H")
    FUNCTION_CALL = ord("F")
    PARSE = ord("P")
    PASSWORD = ord("p")  # also SASLInitialResponse, SASLResponse, GSSResponse
    QUERY = ord("Q")
    SYNC = ord("S")
    TERMINATE = ord("X")


class BackendTag(IntEnum):
    """Type bytes of backend (B) messages."""

    AUTHENTICATION = ord("R")
    BACKEND_KEY_DATA = ord("K")
    BIND_COMPLETE = ord("2")
    CLOSE_COMPLETE = ord("3")
    COMMAND_COMPLETE = ord("C")
    COPY_BOTH_RESPONSE = ord("W")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_IN_RESPONSE = ord("G")
    COPY_OUT_RESPONSE = ord("H")
    DATA_ROW = ord("D")
    EMPTY_QUERY_RESPONSE = ord("I")
    ERROR_RESPONSE = ord("E")
    FUNCTION_CALL_RESPONSE = ord("V")
    NEGOTIATE_PROTOCOL_VERSION = ord("v")
    NO_DATA = ord("n")
    NOTICE_RESPONSE = ord("N")
    NOTIFICATION_RESPONSE = ord("A")
    PARAMETER_DESCRIPTION = ord("t")
    PARAMETER_STATUS = ord("S")
    PARSE_COMPLETE = ord("1")
    PORTAL_SUSPENDED = ord("s")
    READY_FOR_QUERY = ord("Z")
    ROW_DESCRIPTION = ord("T")


FRONTEND_TAGS = frozenset(int(t) for t in FrontendTag)


class TxnStatus(IntEnum):
    """Transaction status byte carried by ReadyForQuery."""

    IDLE = ord("I")
    IN_TRANSACTION = ord("T")
    IN_FAILED_TRANSACTION = ord("E")


class AuthCode(IntEnum):
    """The Int32 that opens an Authentication* message."""

    OK = 0
    CLEARTEXT_PASSWORD = 3
    MD5_PASSWORD = 5
    GSS = 7
    GSS_CONTINUE = 8
    SSPI = 9
    SASL = 10
    SASL_CONTINUE = 11
    SASL_FINAL = 12


# --- start-up packets (untagged) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """StartupMessage (F): protocol version and name/value parameters."""

    major: int
    minor: int
    parameters: dict[str, str]


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """SSLRequest (F)."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """GSSENCRequest (F)."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """CancelRequest (F): process id and secret key of the backend to cancel."""

    pid: int
    secret: bytes


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def decode_startup(payload: bytes) -> StartupPacket:
    """Decode the body (after the Int32 length) of an untagged start-up packet."""
    if len(payload) < 4:
        raise ProtocolViolation("invalid length of startup packet")
    code = int.from_bytes(payload[:4], "big")
    if code == SSL_REQUEST_CODE:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        # Protocol 3.2 allows secret keys of 4 to 256 bytes: take what the length says.
        if not 4 + 4 + 4 <= len(payload) <= 4 + 4 + 256:
            raise ProtocolViolation("invalid length of cancel request packet")
        return CancelRequest(int.from_bytes(payload[4:8], "big"), bytes(payload[8:]))
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise UnsupportedProtocol(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
        )
    return StartupMessage(major, minor, _decode_parameters(payload[4:]))


def _decode_parameters(body: bytes) -> dict[str, str]:
    if body == b"\x00":
        return {}
    if not body.endswith(b"\x00\x00"):
        raise ProtocolViolation("startup packet is not terminated by a zero byte")
    parts = body[:-2].split(b"\x00")
    if len(parts) % 2:
        raise ProtocolViolation("startup packet has a parameter name without a value")
    if not all(parts[0::2]):
        # PG reads an empty name as the terminator, so one before the end is malformed.
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    try:
        texts = [p.decode("utf-8") for p in parts]
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("startup packet is not valid UTF-8") from exc
    return dict(zip(texts[0::2], texts[1::2], strict=True))


def encode_startup(message: StartupMessage) -> bytes:
    """StartupMessage (F), as sent to the upstream."""
    body = bytearray(((message.major << 16) | message.minor).to_bytes(4, "big"))
    for name, value in message.parameters.items():
        body += name.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return (len(body) + 4).to_bytes(4, "big") + bytes(body)


SSL_REQUEST = (8).to_bytes(4, "big") + SSL_REQUEST_CODE.to_bytes(4, "big")  # SSLRequest (F)


def encode_cancel_request(pid: int, secret: bytes) -> bytes:
    """CancelRequest (F)."""
    body = CANCEL_REQUEST_CODE.to_bytes(4, "big") + pid.to_bytes(4, "big") + secret
    return (len(body) + 4).to_bytes(4, "big") + body


# --- frontend messages -----------------------------------------------------------------


class _Reader:
    """Cursor over one message payload; every read checks bounds."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolViolation("unterminated string in message")
        # Clients in another client_encoding send other bytes: keep them recoverable
        # (surrogateescape) rather than failing; the cache bypasses such sessions.
        text = self.buf[self.pos : end].decode("utf-8", "surrogateescape")
        self.pos = end + 1
        return text

    def count16(self) -> int:
        """An Int16 count: PG reads it unsigned (`pq_getmsgint(msg, 2)`), so 0..65535."""
        return int(self._unpack("!H", 2))

    def int32(self) -> int:
        return int(self._unpack("!i", 4))

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise ProtocolViolation("message too short")
        self.pos += 1
        return self.buf[self.pos - 1]

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise ProtocolViolation("message too short")
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def int16s(self) -> tuple[int, ...]:
        count = self.count16()
        return struct.unpack(f"!{count}h", self.take(2 * count))

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolViolation("message has trailing bytes")

    def _unpack(self, fmt: str, size: int) -> int:
        if self.pos + size > len(self.buf):
            raise ProtocolViolation("message too short")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return int(value)


@dataclass(frozen=True, slots=True)
class Parse:
    """Parse (F): statement name, query text and parameter type OIDs (0 = unspecified)."""

    statement: str
    query: str
    param_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bind:
    """Bind (F).  `params` holds each parameter's raw bytes (None for NULL)."""

    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Describe:
    """Describe (F) of a statement (`S`) or a portal (`P`)."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Execute:
    """Execute (F): portal name and row limit (0 = no limit)."""

    portal: str
    max_rows: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close (F) of a statement (`S`) or a portal (`P`)."""

    kind: str
    name: str


def decode_query(payload: bytes) -> str:
    """Query (F): the query string."""
    end = payload.find(b"\x00")
    if end >= 0 and end == len(payload) - 1:  # the usual case, without a _Reader
        return payload[:end].decode("utf-8", "surrogateescape")
    r = _Reader(payload)
    text = r.cstring()
    r.end()
    return text


def decode_parse(payload: bytes) -> Parse:
    """Parse (F)."""
    r = _Reader(payload)
    name, query = r.cstring(), r.cstring()
    count = r.count16()
    oids = struct.unpack(f"!{count}I", r.take(4 * count))
    r.end()
    return Parse(name, query, oids)


def decode_bind(payload: bytes) -> Bind:
    """Bind (F)."""
    r = _Reader(payload)
    portal, statement = r.cstring(), r.cstring()
    param_formats = r.int16s()
    count = r.count16()
    params: list[bytes | None] = []
    for _ in range(count):
        size = r.int32()
        params.append(None if size == -1 else r.take(size))
    result_formats = r.int16s()
    r.end()
    return Bind(portal, statement, param_formats, tuple(params), result_formats)


def decode_bind_names(payload: bytes, start: int = 0, end: int | None = None) -> tuple[str, str]:
    """Bind (F): only the portal and statement names (the relay needs no more).

    The payload is ``payload[start:end]`` (so a caller walking a chunk need not copy it).
    """
    if end is None:
        end = len(payload)
    first = payload.find(b"\x00", start, end)
    second = payload.find(b"\x00", first + 1, end) if first >= 0 else -1
    if second < 0:
        raise ProtocolViolation("unterminated string in message")
    portal = payload[start:first].decode("utf-8", "surrogateescape") if first > start else ""
    statement = payload[first + 1 : second].decode("utf-8", "surrogateescape")
    return portal, statement


def decode_describe(payload: bytes) -> Describe:
    """Describe (F)."""
    r = _Reader(payload)
    kind = chr(r.byte())
    if kind not in "SP":
        raise ProtocolViolation(f"invalid DESCRIBE message subtype {ord(kind)}")
    name = r.cstring()
    r.end()
    return Describe(kind, name)


def decode_execute(payload: bytes) -> Execute:
    """Execute (F)."""
    r = _Reader(payload)
    portal, max_rows = r.cstring(), r.int32()
    r.end()
    return Execute(portal, max_rows)


def decode_close(payload: bytes) -> Close:
    """Close (F)."""
    r = _Reader(payload)
    kind = chr(r.byte())
    if kind not in "SP":
        raise ProtocolViolation(f"invalid CLOSE message subtype {ord(kind)}")
    name = r.cstring()
    r.end()
    return Close(kind, name)


# --- backend messages ------------------------------------------------------------------


def decode_sasl_initial_response(payload: bytes) -> tuple[str, bytes]:
    """SASLInitialResponse (F): the mechanism and its initial data (b"" when absent).

    For SCRAM the data is the client-first-message, whose first byte is the gs2
    channel-binding flag: ``n`` (no binding), ``y`` (the client could bind but thinks the
    server cannot) or ``p`` (binding, with ``-PLUS``)."""
    r = _Reader(payload)
    mechanism = r.cstring()
    length = r.int32()
    return mechanism, (b"" if length < 0 else r.take(length))


def decode_parameter_status(payload: bytes) -> tuple[str, str]:
    """ParameterStatus (B): name and value."""
    r = _Reader(payload)
    return r.cstring(), r.cstring()


def decode_command_tag(payload: bytes) -> str:
    """CommandComplete (B): the command tag, e.g. ``INSERT 0 1``."""
    return payload.rstrip(b"\x00").decode("utf-8", "replace")


def decode_error_fields(payload: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse (B): field code → value (`C` is the SQLSTATE)."""
    fields: dict[str, str] = {}
    for part in payload.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def decode_backend_key_data(payload: bytes) -> tuple[int, bytes]:
    """BackendKeyData (B): process id and secret key."""
    if len(payload) < 8:
        raise ProtocolViolation("BackendKeyData too short")
    return int.from_bytes(payload[:4], "big"), bytes(payload[4:])


def auth_code(payload: bytes) -> int:
    """Authentication* (B): the request code."""
    if len(payload) < 4:
        raise ProtocolViolation("Authentication message too short")
    return int.from_bytes(payload[:4], "big")


def sasl_mechanisms(payload: bytes) -> list[str]:
    """AuthenticationSASL (B): the mechanisms offered, in order."""
    r = _Reader(payload[4:])
    mechanisms = []
    while (name := r.cstring()) != "":
        mechanisms.append(name)
    return mechanisms


# --- encoders for what the proxy sends itself -----------------------------------------


def authentication_sasl(mechanisms: list[str]) -> bytes:
    """AuthenticationSASL (B) offering `mechanisms`."""
    body = AuthCode.SASL.to_bytes(4, "big")
    body += b"".join(m.encode() + b"\x00" for m in mechanisms) + b"\x00"
    return message(BackendTag.AUTHENTICATION, body)


def message(tag: int, body: bytes = b"") -> bytes:
    """Frame one tagged message."""
    return bytes((tag,)) + (len(body) + 4).to_bytes(4, "big") + body


def error_response(severity: str, sqlstate: str, text: str, detail: str | None = None) -> bytes:
    """ErrorResponse (B) with severity (S and V), SQLSTATE (C) and message (M)."""
    body = bytearray()
    for code, value in (("S", severity), ("V", severity), ("C", sqlstate), ("M", text)):
        body += code.encode() + value.encode() + b"\x00"
    if detail:
        body += b"D" + detail.encode() + b"\x00"
    body += b"\x00"
    return message(BackendTag.ERROR_RESPONSE, bytes(body))


def encode_parse(statement: str, query: str, param_oids: tuple[int, ...]) -> bytes:
    """Parse (F), the whole message."""
    body = (
        statement.encode("utf-8", "surrogateescape") + b"\x00"
        + query.encode("utf-8", "surrogateescape") + b"\x00"
        + struct.pack(f"!H{len(param_oids)}I", len(param_oids), *param_oids)
    )
    return message(FrontendTag.PARSE, body)


def ready_for_query(status: TxnStatus) -> bytes:
    """ReadyForQuery (B)."""
    return message(BackendTag.READY_FOR_QUERY, bytes((status,)))


def negotiate_protocol_version(newest: int, unrecognized: list[str]) -> bytes:
    """NegotiateProtocolVersion (B): the newest version code spoken (e.g. 3.0 = 196608)."""
    body = newest.to_bytes(4, "big") + len(unrecognized).to_bytes(4, "big")
    body += b"".join(name.encode() + b"\x00" for name in unrecognized)
    return message(BackendTag.NEGOTIATE_PROTOCOL_VERSION, body)


def terminate() -> bytes:
    """Terminate (F)."""
    return message(FrontendTag.TERMINATE)
