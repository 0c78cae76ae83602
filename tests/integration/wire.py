"""A minimal raw-socket PostgreSQL v3 frontend, for tests that need control of every byte.

Drivers hide what the proxy actually sends (and refuse to send what a hostile client
would), so fault, fuzz and back-pressure tests talk to the proxy through this instead:
build frontend messages byte by byte, read backend messages one at a time, and tell
"the proxy closed the connection" apart from "the proxy is silent" (a hang).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Hang guard for anything the proxy should answer promptly (generous: the machine is noisy).
GUARD = 10.0


# --- frontend messages ---------------------------------------------------------------


def untagged(body: bytes) -> bytes:
    """A start-up packet: Int32 length (self-inclusive), then the body."""
    return struct.pack("!I", len(body) + 4) + body


def startup_message(params: Mapping[str, str], major: int = 3, minor: int = 0) -> bytes:
    """StartupMessage (F)."""
    body = struct.pack("!I", (major << 16) | minor)
    for name, value in params.items():
        body += name.encode() + b"\x00" + value.encode() + b"\x00"
    return untagged(body + b"\x00")


def ssl_request() -> bytes:
    """SSLRequest (F)."""
    return untagged(struct.pack("!I", SSL_REQUEST_CODE))


def gssenc_request() -> bytes:
    """GSSENCRequest (F)."""
    return untagged(struct.pack("!I", GSSENC_REQUEST_CODE))


def cancel_request(pid: int, secret: bytes) -> bytes:
    """CancelRequest (F)."""
    return untagged(struct.pack("!II", CANCEL_REQUEST_CODE, pid) + secret)


def message(tag: bytes, body: bytes = b"") -> bytes:
    """One tagged frontend message with a correct length."""
    return tag + struct.pack("!I", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def query(sql: str) -> bytes:
    """Query (F)."""
    return message(b"Q", cstr(sql))


def parse(name: str, sql: str, oids: Iterable[int] = ()) -> bytes:
    """Parse (F)."""
    oids = tuple(oids)
    return message(b"P", cstr(name) + cstr(sql) + struct.pack(f"!h{len(oids)}I", len(oids), *oids))


def bind(
    portal: str = "",
    statement: str = "",
    params: Iterable[bytes | None] = (),
    result_formats: Iterable[int] = (),
) -> bytes:
    """Bind (F) with text parameters."""
    params = tuple(params)
    formats = tuple(result_formats)
    body = cstr(portal) + cstr(statement) + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    body += struct.pack(f"!h{len(formats)}h", len(formats), *formats)
    return message(b"B", body)


def describe(kind: str = "P", name: str = "") -> bytes:
    """Describe (F)."""
    return message(b"D", kind.encode() + cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    """Execute (F)."""
    return message(b"E", cstr(portal) + struct.pack("!i", max_rows))


def close(kind: str = "S", name: str = "") -> bytes:
    """Close (F)."""
    return message(b"C", kind.encode() + cstr(name))


def sync() -> bytes:
    """Sync (F)."""
    return message(b"S")


def flush() -> bytes:
    """Flush (F)."""
    return message(b"H")


def terminate() -> bytes:
    """Terminate (F)."""
    return message(b"X")


def password(text: str) -> bytes:
    """PasswordMessage (F)."""
    return message(b"p", cstr(text))


# --- backend messages ----------------------------------------------------------------


def error_fields(payload: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse payload → {field code: value}."""
    fields: dict[str, str] = {}
    for part in payload.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


class Closed(Exception):
    """The peer closed the connection (EOF or reset)."""


@dataclass
class Login:
    """What a start-up exchange returned."""

    messages: list[tuple[bytes, bytes]]
    pid: int | None = None
    secret: bytes | None = None
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.messages) and self.messages[-1][0] == b"Z"

    @property
    def error(self) -> dict[str, str] | None:
        for tag, payload in self.messages:
            if tag == b"E":
                return error_fields(payload)
        return None


class RawClient:
    """A blocking socket that speaks just enough of the protocol for tests."""

    def __init__(
        self, host: str, port: int, *, timeout: float = GUARD, rcvbuf: int | None = None
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.timeout = timeout
        self.buf = bytearray()

    @classmethod
    def wrap(cls, sock: socket.socket, *, timeout: float = GUARD) -> RawClient:
        """A RawClient on an already connected socket."""
        client = cls.__new__(cls)
        sock.settimeout(timeout)
        client.sock, client.timeout, client.buf = sock, timeout, bytearray()
        return client

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, *, reset: bool = False) -> None:
        """Close; with `reset`, abortively (RST instead of FIN)."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, need: int) -> None:
        while len(self.buf) < need:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed(f"connection closed with {len(self.buf)} unread byte(s)")
            self.buf += chunk

    def recv_exact(self, n: int) -> bytes:
        self._fill(n)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_message(self) -> tuple[bytes, bytes]:
        """The next backend message as (tag, payload); raises Closed or TimeoutError."""
        self._fill(5)
        length = struct.unpack("!I", self.buf[1:5])[0]
        assert length >= 4, f"backend sent a length of {length}"
        self._fill(1 + length)
        tag, payload = bytes(self.buf[:1]), bytes(self.buf[5 : 1 + length])
        del self.buf[: 1 + length]
        return tag, payload

    def read_until(self, *tags: bytes) -> list[tuple[bytes, bytes]]:
        """Messages up to and including the first whose tag is in `tags`."""
        out = []
        while True:
            msg = self.recv_message()
            out.append(msg)
            if msg[0] in tags:
                return out

    def expect_error_then_close(self) -> dict[str, str]:
        """The next message must be an ErrorResponse, and the connection must then close."""
        tag, payload = self.recv_message()
        assert tag == b"E", f"expected ErrorResponse, got {tag!r} {payload[:200]!r}"
        fields = error_fields(payload)
        self.expect_closed()
        return fields

    def expect_closed(self, guard: float | None = None) -> bytes:
        """Wait (within `guard`) until the peer closes; return any bytes that came first."""
        deadline = time.monotonic() + (guard or self.timeout)
        got = bytes(self.buf)
        self.buf.clear()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection still open after the guard; got {got[:200]!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            except TimeoutError:
                raise AssertionError(
                    f"connection still open after the guard; got {got[:200]!r}"
                ) from None
            finally:
                self.sock.settimeout(self.timeout)
            if not chunk:
                return got
            got += chunk

    def login(self, user: str = "postgres", database: str = "test", **params: str) -> Login:
        """Send a 3.0 StartupMessage and read until ReadyForQuery or an ErrorResponse."""
        self.send(startup_message({"user": user, "database": database, **params}))
        return self.finish_login()

    def finish_login(self, password_text: str | None = None) -> Login:
        """Read the start-up replies (answering a cleartext password request if given one)."""
        login = Login([])
        while True:
            tag, payload = self.recv_message()
            login.messages.append((tag, payload))
            if tag == b"R" and struct.unpack("!I", payload[:4])[0] == 3:
                if password_text is None:
                    return login
                self.send(password(password_text))
            elif tag == b"K":
                login.pid = struct.unpack("!I", payload[:4])[0]
                login.secret = payload[4:]
            elif tag == b"S":
                name, value, _ = payload.split(b"\x00", 2)
                login.parameters[name.decode()] = value.decode()
            elif tag in (b"Z", b"E"):
                return login

    def simple_query(self, sql: str) -> list[tuple[bytes, bytes]]:
        """Send one Query and read its whole response up to ReadyForQuery."""
        self.send(query(sql))
        return self.read_until(b"Z")


def rows(messages: list[tuple[bytes, bytes]]) -> list[list[bytes | None]]:
    """Decode the DataRows among `messages` (text format) into lists of bytes."""
    out = []
    for tag, payload in messages:
        if tag != b"D":
            continue
        (count,) = struct.unpack("!h", payload[:2])
        pos, row = 2, []
        for _ in range(count):
            (size,) = struct.unpack("!i", payload[pos : pos + 4])
            pos += 4
            if size < 0:
                row.append(None)
            else:
                row.append(payload[pos : pos + size])
                pos += size
        out.append(row)
    return out


def errors(messages: list[tuple[bytes, bytes]]) -> list[dict[str, str]]:
    """The ErrorResponses among `messages`, decoded."""
    return [error_fields(p) for t, p in messages if t == b"E"]
