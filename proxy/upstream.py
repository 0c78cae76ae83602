"""The proxy's connections to Postgres: one per client session, plus one-shot cancels.

Shell module: owns the upstream socket and hands every byte to its session.  Back-pressure
runs both ways: when the upstream socket cannot take more, the client is paused, and the
session pauses this connection when the client cannot take more.

With upstream TLS, a connection starts with an SSLRequest whose one-byte answer is read
before anything else: `S` starts TLS, `N` continues in plaintext only when the sslmode
allows it (prefer).  Anything else, or more than one byte before the handshake (bytes a
man in the middle could have injected, CVE-2021-23222), ends the attempt; an ErrorResponse
answer is never shown (CVE-2024-10977).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol, TypeVar, cast

from proxy import codec
from proxy.tls import UpstreamTLS

log = logging.getLogger("pgreactive.upstream")


class UpstreamOwner(Protocol):
    """What an upstream connection reports to (the client session)."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def pause_client(self) -> None: ...
    def resume_client(self) -> None: ...


class UpstreamProtocol(asyncio.Protocol):
    """asyncio protocol for one session's upstream connection."""

    def __init__(self, owner: UpstreamOwner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.owner.upstream_data(data)

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.owner.pause_client()

    def resume_writing(self) -> None:
        self.owner.resume_client()


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


async def connect(
    owner: UpstreamOwner, host: str, port: int, timeout: float, tls: UpstreamTLS | None = None
) -> UpstreamProtocol:
    """Open an upstream connection for `owner`, or raise OSError/TimeoutError."""
    async with asyncio.timeout(timeout):
        _, protocol = await open_connection(lambda: UpstreamProtocol(owner), host, port, tls)
    return protocol


class _Cancel(asyncio.Protocol):
    """Waits for the server to close the connection a CancelRequest went on."""

    def __init__(self) -> None:
        self.closed = asyncio.get_running_loop().create_future()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def send_cancel(
    host: str, port: int, pid: int, secret: bytes, timeout: float, tls: UpstreamTLS | None = None
) -> None:
    """Deliver a CancelRequest to the upstream on a connection of its own (with TLS when
    the sessions use it, as libpq 17's cancel does).

    The server answers nothing and closes the connection; waiting for that close makes
    sure the request was read before we return.
    """
    async with asyncio.timeout(timeout):
        transport, protocol = await open_connection(_Cancel, host, port, tls)
        try:
            transport.write(codec.encode_cancel_request(pid, secret))
            await protocol.closed
        finally:
            transport.close()
