"""The listener: accepts clients, keeps the session registry, forwards cancels, shuts down.

Shell module.  One `Server` per process.  SIGTERM/SIGINT call `shutdown()`: stop accepting,
let every session finish what is in flight for up to `limits.shutdown_grace_seconds`, then
close what is left (cancelling its running statement upstream first).

Admission, as Postgres does it: every accepted socket gets a session, but past
`limits.max_client_connections` admitted sessions a new one is *refused*: it still answers
SSLRequest and forwards a CancelRequest, and answers a StartupMessage with FATAL 53300.  At
start the soft RLIMIT_NOFILE is raised to the hard limit, and the connection limit lowered
to what the descriptors can hold (two per client: its socket and its upstream), so that
admitted clients never run the process out of descriptors.  Refused sessions waiting for
their StartupMessage are capped too (a flood of idle sockets must not take the descriptors
the admitted clients' upstream connections need): past the cap a socket is closed at once.
If descriptors run out all the same, libuv's accept keeps one spare to accept and close at
once what it cannot hold; the listener lives on.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from proxy.config import Config, ConfigError
from proxy.errors import ShuttingDown
from proxy.metrics import Latency, Stats
from proxy.session import Admission, ClientSession
from proxy.tls import client_context, contexts
from proxy.upstream import send_cancel

if TYPE_CHECKING:
    from cache.service import CacheService

log = logging.getLogger("pgreactive.server")

# Descriptors kept for everything but client sessions: listeners, Redis, the catalog and
# metrics connections, one-shot cancel connections, refused clients awaiting their answer.
RESERVED_FILES = 100
REFUSED_WAITING_MAX = RESERVED_FILES // 2  # refused sessions awaiting their StartupMessage


def client_capacity(open_files: int, wanted: int) -> int:
    """How many client sessions fit in `open_files` descriptors (at most `wanted`)."""
    return max(1, min(wanted, (open_files - RESERVED_FILES) // 2))


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:  # (Linux caps NOFILE: never infinite)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d to %d: %s", soft, hard, exc)
    return sys.maxsize if soft == resource.RLIM_INFINITY else soft


class Server:
    """Accepts client connections and owns every session."""

    def __init__(
        self,
        config: Config,
        cache: CacheService | None = None,
        stats: Stats | None = None,
        upstream_connect: Callable[[float], None] | None = None,
        latency: Latency | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.stats = stats if stats is not None else Stats()
        self.latency = latency or Latency(None)  # of the reads on the cache path
        # None: SSLRequest is answered N / sslmode=disable.  (ConfigError for a bad file.)
        self.client_tls, self.upstream_tls = contexts(config)
        # Observes the seconds each upstream connection took to open.
        self.upstream_connect = upstream_connect or _ignore
        self.sessions: set[ClientSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Server | None = None
        self._closed = asyncio.Event()
        self.max_clients = config.limits.max_client_connections
        self._counts = dict.fromkeys(Admission, 0)  # open sessions by admission

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        open_files = raise_open_files_limit()
        self.max_clients = client_capacity(open_files, self.config.limits.max_client_connections)
        if self.max_clients < self.config.limits.max_client_connections:
            log.warning(
                "limits.max_client_connections lowered from %d to %d: the open files limit"
                " is %d (each client takes two)",
                self.config.limits.max_client_connections,
                self.max_clients,
                open_files,
            )
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

    def reload_tls(self) -> None:
        """SIGHUP: read the client certificate files again (new connections use them);
        when they cannot be used, keep the running certificate."""
        try:
            self.client_tls = client_context(self.config.tls)
        except ConfigError as exc:
            log.error("TLS reload failed, keeping the running certificate: %s", exc)
            return
        log.info("TLS %s", "certificate loaded" if self.client_tls else "off")

    def bound_address(self) -> str:
        assert self._listener is not None
        host, port = self._listener.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # --- sessions ------------------------------------------------------------------

    def session_opened(self, session: ClientSession) -> Admission:
        """Register a new session and decide whether it is served (see the docstring)."""
        self.sessions.add(session)
        self.stats.client_connections += 1
        self.stats.client_connections_total += 1
        counts = self._counts
        if counts[Admission.ADMITTED] < self.max_clients:
            admission = Admission.ADMITTED
        elif counts[Admission.REFUSED] < REFUSED_WAITING_MAX:
            admission = Admission.REFUSED
        else:
            admission = Admission.DROPPED
        counts[admission] += 1
        if admission is not Admission.ADMITTED:
            self.stats.client_connections_refused += 1
        elif counts[admission] == self.max_clients:
            log.warning(
                "client connection limit reached (%d): further clients are refused with 53300",
                self.max_clients,
            )
        return admission

    def session_closed(self, session: ClientSession, admission: Admission) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.stats.client_connections -= 1
            self._counts[admission] -= 1

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a background task, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forward_cancel(self, pid: int, secret: bytes) -> None:
        """Send a CancelRequest for (pid, secret) to the upstream; any instance may do it."""
        self.spawn(self.cancel(pid, secret))

    async def cancel(self, pid: int, secret: bytes) -> None:
        """Forward a CancelRequest and wait until Postgres has closed that connection (it
        has read the request by then); never raises."""
        upstream = self.config.upstream
        try:
            await send_cancel(
                upstream.host, upstream.port, pid, secret, upstream.connect_timeout,
                self.upstream_tls,
            )  # fmt: skip
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
