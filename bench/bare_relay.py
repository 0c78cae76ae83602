"""Bare uvloop TCP relay to Postgres: bytes forwarded both ways, nothing parsed.

The ceiling for a single-process Python proxy on this machine (what pgreactive's pass-through
would reach if its own per-message work cost nothing).  Used by `FLOOR=1 bench/passthrough.sh`.
Usage: .venv/bin/python bench/bare_relay.py LISTEN_PORT [UPSTREAM_PORT=5432]   (127.0.0.1 only)
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

UPSTREAM = ("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 5432)


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class Client(asyncio.Protocol):
    upstream: Upstream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.early: list[bytes] = []
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(lambda: Upstream(self), *UPSTREAM)
        for data in self.early:
            self.upstream.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.transport.close()


async def main() -> None:
    await asyncio.get_running_loop().create_server(Client, "127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
