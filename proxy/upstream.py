"""The proxy's connections to Postgres: one per client session, plus one-shot cancels.

Shell module: owns the upstream socket and hands every byte to its session.  Back-pressure
runs both ways: when the upstream socket cannot take more, the client is paused, and the
session pauses this connection when the client cannot take more.  TLS, when the sslmode
asks for it, is negotiated by `proxy.tls.open_connection`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, cast

from proxy import codec
from proxy.tls import UpstreamTLS, open_connection

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
