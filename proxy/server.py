"""The listener: accepts clients, keeps the session registry, forwards cancels, shuts down.

Shell module.  One `Server` per process.  SIGTERM/SIGINT call `shutdown()`: stop accepting,
let every session finish what is in flight for up to `limits.shutdown_grace_seconds`, then
close what is left (cancelling its running statement upstream first).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from proxy.config import Config
from proxy.errors import ShuttingDown
from proxy.metrics import Stats
from proxy.session import ClientSession
from proxy.upstream import send_cancel

if TYPE_CHECKING:
    from cache.service import CacheService

log = logging.getLogger("pgreactive.server")


class Server:
    """Accepts client connections and owns every session."""

    def __init__(
        self,
        config: Config,
        cache: CacheService | None = None,
        stats: Stats | None = None,
        upstream_connect: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.stats = stats if stats is not None else (cache.stats if cache else Stats())
        # Observes the seconds each upstream connection took to open.
        self.upstream_connect = upstream_connect or _ignore
        self.sessions: set[ClientSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Server | None = None
        self._closed = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        self._listener = await loop.create_server(
            lambda: ClientSession(self), listen.host, listen.port, reuse_address=True
        )
        if self.cache is not None and not self.config.events.source:
            port = self.bound_address().rsplit(":", 1)[1]
            self.cache.source = f"{socket.gethostname()}:{port}"  # events name this instance
        log.info(
            "pgreactive listening on %s, proxying to %s (cache %s)",
            self.bound_address(),
            self.config.upstream.url(),
            "on" if self.config.cache.enabled else "off",
        )

    def bound_address(self) -> str:
        assert self._listener is not None
        host, port = self._listener.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # --- sessions ------------------------------------------------------------------

    def session_opened(self, session: ClientSession) -> None:
        self.sessions.add(session)
        self.stats.client_connections += 1
        self.stats.client_connections_total += 1

    def session_closed(self, session: ClientSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.stats.client_connections -= 1

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a background task, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forward_cancel(self, pid: int, secret: bytes) -> None:
        """Send a CancelRequest for (pid, secret) to the upstream; any instance may do it."""
        self.spawn(self._cancel(pid, secret))

    async def _cancel(self, pid: int, secret: bytes) -> None:
        upstream = self.config.upstream
        try:
            await send_cancel(upstream.host, upstream.port, pid, secret, upstream.connect_timeout)
        except (OSError, TimeoutError) as exc:
            log.warning("could not forward cancel request for pid %d: %s", pid, exc)

    # --- shutdown ------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop accepting, drain sessions for the grace period, then close the rest."""
        if self._listener is None:
            return
        log.info("shutting down: waiting for %d session(s)", len(self.sessions))
        self._listener.close()
        for session in list(self.sessions):
            session.drain()
        grace = self.config.limits.shutdown_grace_seconds
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.close(ShuttingDown("terminating connection due to administrator command"))
        # Let cancels and closes reach the wire.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        await asyncio.sleep(0)
        self._closed.set()
        log.info("stopped")


def _ignore(seconds: float) -> None:
    """An observer that keeps nothing."""
