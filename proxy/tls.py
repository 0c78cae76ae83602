"""TLS on both legs: the certificates and settings in use, and TLS on a client's socket.

Shell module (it loads files and drives `ssl` objects).

* `client_context()` builds the context clients see from `tls.*`: the certificate and key,
  optionally a CA that client certificates must be signed by, ALPN ``postgresql``.  The
  server builds it at start and again on SIGHUP, so a rotated certificate is used by the
  next connection; a file that cannot be loaded is a `ConfigError` naming its key.
* `UpstreamTLS.from_config()` turns `upstream.sslmode` and friends into what a connection
  to Postgres needs (libpq's meanings): a context that verifies as much as the mode asks,
  and whether a server that answers `N` to SSLRequest may be used in plaintext.
  `open_connection()` opens every connection to Postgres (sessions, cancels, catalog):
  with TLS, the SSLRequest's one-byte answer is read before anything else; `S` starts
  TLS, `N` goes on in plaintext only when the sslmode allows it (prefer).  Anything else,
  or more than one byte before the handshake (bytes a man in the middle could have
  injected, CVE-2021-23222), ends the attempt; an ErrorResponse answer is never shown
  (CVE-2024-10977).
* `ClientTLS` is server-side TLS on a client's socket, over `ssl.MemoryBIO`.  It sits
  between the raw transport (whose protocol it becomes: ciphertext in) and the session
  (whose transport it becomes: plaintext out, encrypted as it is written).  Not
  `loop.start_tls`: a direct-TLS client (PostgreSQL 17's ``sslnegotiation=direct``) is
  recognised by its first bytes, the ClientHello, which the session has already read and
  hands over here; ``start_tls`` would only see what arrives after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from proxy import codec
from proxy.config import Config, ConfigError, TLSConfig, UpstreamConfig
from proxy.errors import ProtocolViolation

log = logging.getLogger("pgreactive.tls")

ALPN = "postgresql"  # PostgreSQL 17's ALPN protocol name (required for direct TLS)


def _no_passphrase() -> bytes:
    raise ssl.SSLError("the private key is encrypted (a passphrase is not supported)")


def _load_chain(context: ssl.SSLContext, cert: tuple[str, str], key: tuple[str, str]) -> None:
    """Load a certificate and key, each given as (config key, path)."""
    for name, path in (cert, key):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    try:
        context.load_cert_chain(cert[1], key[1], password=_no_passphrase)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{cert[0]}: cannot use {cert[1]} with {key[1]}: {exc.reason or exc}"
        ) from None


def _load_ca(context: ssl.SSLContext, key: str, path: str) -> None:
    try:
        if path == "system":
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            context.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise ConfigError(f"{key}: cannot load {path}: {reason}") from None


def client_context(config: TLSConfig) -> ssl.SSLContext | None:
    """The context clients' TLS uses, or None when no certificate is configured."""
    if not config.cert_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # as Postgres's ssl_min_protocol_version
    _load_chain(context, ("tls.cert_file", config.cert_file), ("tls.key_file", config.key_file))
    context.set_alpn_protocols([ALPN])
    if config.client_ca_file:
        _load_ca(context, "tls.client_ca_file", config.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """How connections to Postgres use TLS (None of these at all: `sslmode=disable`)."""

    context: ssl.SSLContext
    required: bool  # `N` to SSLRequest is an error (require and above), else plaintext
    server_hostname: str | None  # SNI, and the name verify-full checks

    @classmethod
    def from_config(cls, config: UpstreamConfig) -> UpstreamTLS | None:
        """libpq's sslmode meanings: prefer and require do not verify the certificate
        (require does as verify-ca when sslrootcert is set, as libpq does); verify-ca
        checks it was signed by sslrootcert; verify-full also checks the host name."""
        mode = config.sslmode
        if mode == "disable":
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        verify = mode.startswith("verify-") or (mode == "require" and bool(config.sslrootcert))
        context.check_hostname = mode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        if verify:
            _load_ca(context, "upstream.sslrootcert", config.sslrootcert)
        if config.sslcert:
            _load_chain(
                context, ("upstream.sslcert", config.sslcert), ("upstream.sslkey", config.sslkey)
            )
        return cls(context, mode != "prefer", config.host)


def contexts(config: Config) -> tuple[ssl.SSLContext | None, UpstreamTLS | None]:
    """Both legs' TLS, every file read now: the client side's context (None: no TLS) and
    the upstream's settings (None: disable).  A file that cannot be used: ConfigError."""
    return client_context(config.tls), UpstreamTLS.from_config(config.upstream)


def describe(exc: BaseException) -> str:
    """A short reason for a failed (TLS) connection, for an error message."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"SSL error: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"SSL error: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class UpstreamTLSError(OSError):
    """The upstream's TLS could not be set up as the sslmode requires."""


class _SSLAnswer(asyncio.Protocol):
    """Waits for the server's answer to SSLRequest."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.extra = bytearray()  # bytes after the answer's first chunk

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)
        else:
            self.extra += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionResetError("server closed the connection"))


P = TypeVar("P", bound=asyncio.Protocol)


async def open_connection(
    factory: Callable[[], P], host: str, port: int, tls: UpstreamTLS | None
) -> tuple[asyncio.Transport, P]:
    """A connection to Postgres with `factory`'s protocol on it, TLS as `tls` says."""
    loop = asyncio.get_running_loop()
    if tls is None:
        return await loop.create_connection(factory, host, port)
    raw, answer = await loop.create_connection(_SSLAnswer, host, port)
    try:
        raw.write(codec.SSL_REQUEST)
        reply = await answer.answer + answer.extra
        protocol = factory()
        if reply[:1] == b"S" and len(reply) > 1:
            raise UpstreamTLSError("received unencrypted data after SSL response")
        transport: asyncio.Transport | None = raw
        if reply == b"S":
            transport = await loop.start_tls(
                raw, protocol, tls.context, server_hostname=tls.server_hostname
            )
        elif reply == b"N" and not tls.required:
            raw.set_protocol(protocol)
        elif reply == b"N":
            raise UpstreamTLSError("server does not support SSL, but SSL was required")
        else:
            raise UpstreamTLSError(f"received invalid response to SSL negotiation: {reply[:1]!r}")
    except BaseException:
        raw.close()
        raise
    assert transport is not None  # (start_tls returns None only after close)
    protocol.connection_made(transport)
    return transport, protocol


class ClientTLS(asyncio.Transport, asyncio.Protocol):
    """Server-side TLS between a client's raw transport and its session (see the module
    docstring).  Handshake and read errors close the connection (logged, nothing sent:
    there is no TLS session to send it in); `alpn_required` (direct TLS) makes a client
    that did not negotiate ALPN ``postgresql`` a protocol violation."""

    _READ_SIZE = 256 * 1024

    def __init__(
        self,
        context: ssl.SSLContext,
        raw: asyncio.Transport,
        app: asyncio.Protocol,
        *,
        alpn_required: bool,
        conn: int,
    ) -> None:
        super().__init__()
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._raw = raw
        self._app = app
        self._alpn_required = alpn_required
        self._conn = conn
        self._handshaken = False
        self._closed = False
        raw.set_protocol(self)

    # --- ciphertext from the client (the raw transport's protocol) -------------------

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._incoming.write(data)
        try:
            if not self._handshaken and not self._handshake():
                return
            plaintext = self._read()
        except ssl.SSLError as exc:
            log.warning("conn=%d TLS: %s; closing", self._conn, describe(exc))
            self._flush()  # an alert, if OpenSSL made one
            self._closed = True
            self._raw.close()
            return
        except ProtocolViolation as exc:
            log.warning("conn=%d %s; closing", self._conn, exc)
            self.write(exc.as_error_response())
            self.close()
            return
        if plaintext:
            self._app.data_received(plaintext)

    def _handshake(self) -> bool:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        self._handshaken = True
        self._flush()
        if self._alpn_required and self._ssl.selected_alpn_protocol() != ALPN:
            raise ProtocolViolation(
                f"received direct TLS connection request without ALPN protocol {ALPN!r}"
            )
        return True

    def _read(self) -> bytes:
        chunks: list[bytes] = []
        incoming, sslobj = self._incoming, self._ssl
        while True:
            try:
                chunk = sslobj.read(self._READ_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:  # the client's close_notify
                self._raw.close()
                break
            chunks.append(chunk)
            if not incoming.pending and not sslobj.pending():
                break  # all read: spare the exception another read would raise
        self._flush()  # reading may answer (a key update)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _flush(self) -> None:
        if self._outgoing.pending:
            self._raw.write(self._outgoing.read())

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._app.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self._app.eof_received()

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    # --- plaintext to the client (the session's transport) ---------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:  # e.g. after the client's close_notify
            log.info("conn=%d TLS: cannot write (%s); closing", self._conn, describe(exc))
            self.abort()
            return
        self._raw.write(self._outgoing.read())

    def close(self) -> None:
        """Send close_notify, then close the socket once what is buffered is sent."""
        if self._closed:
            return
        self._closed = True
        if self._handshaken:
            with contextlib.suppress(ssl.SSLError):  # (it waits for the client's: no need)
                self._ssl.unwrap()
            self._flush()
        self._raw.close()

    def abort(self) -> None:
        self._closed = True
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._closed or self._raw.is_closing()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        return self._raw.get_extra_info(name, default)
