"""A minimal pipelined Redis client for the cache's hot path (one lookup per cacheable read).

Shell module.  redis-py spends most of a cache hit's CPU in connection-pool checkout,
command packing, timeouts per call and response bookkeeping.  Here every session shares one
connection: commands are written as they come (pipelined, no pool) and replies are matched
to their requests in order (Redis answers in order), parsed by hiredis.  Timeouts cost one
timer for the whole connection: a watchdog fails the connection when its oldest request has
waited longer than `op_timeout`, which fails every pending request with `RespError` so the
caller's circuit breaker opens.  Error replies are returned as `hiredis.ReplyError` values,
never raised here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis


class RespError(ConnectionError):
    """The connection failed, timed out or was closed: nothing more will be answered."""


class _Protocol(asyncio.Protocol):
    def __init__(self, client: RespClient) -> None:
        self.client = client
        self.reader = hiredis.Reader()

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        waiters = self.client.waiters
        reader.feed(data)
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if not waiters:
                if self.client.waiters is waiters:  # (else failed meanwhile: ignore the rest)
                    self.client.fail(RespError("reply without a request"))
                return
            waiter, _ = waiters.popleft()
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_result(reply)
            else:
                waiter(reply)  # a `send` callback: runs now, in this data_received

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.fail(RespError(f"connection lost: {exc or 'closed'}"))


Callback = Callable[[Any], None]
"""Gets the reply, or the `RespError` that failed the connection; must not raise."""


class RespClient:
    """One pipelined connection to Redis; `call()` sends a command and awaits its reply,
    `send()` (connected only) has a callback called with it, without a task or future."""

    def __init__(
        self, host: str, port: int, db: int, *, op_timeout: float, connect_timeout: float
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.op_timeout = op_timeout
        self.connect_timeout = connect_timeout
        self.waiters: deque[tuple[asyncio.Future[Any] | Callback, float]] = deque()
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []  # commands to write at the end of this loop iteration
        self._loop: asyncio.AbstractEventLoop | None = None

    async def call(self, *args: bytes | str | int) -> Any:
        """Send one command; its reply (a `hiredis.ReplyError` for an error reply)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            transport = await self._connect()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(future, args)
        return await future

    def send(self, callback: Callback, *args: bytes | str | int) -> bool:
        """Send one command if connected (else False, and nothing is sent); `callback`
        gets its reply or the `RespError` that failed the connection."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        self._queue(callback, args)
        return True

    def _queue(self, waiter: asyncio.Future[Any] | Callback, args: tuple[Any, ...]) -> None:
        self.waiters.append((waiter, time.monotonic()))
        # (the connection's loop: `get_running_loop()` costs a getpid() system call)
        loop = self._loop
        assert loop is not None
        # Commands of every session in this loop iteration go out in one write (one syscall).
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(hiredis.pack_command(args))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.op_timeout, self._check)

    async def _connect(self) -> asyncio.Transport:
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_future()
            try:
                await self._open()
                self._connecting.set_result(None)
            except BaseException as exc:
                self._connecting.set_exception(RespError(f"cannot connect: {exc!r}"))
                self._connecting.exception()  # retrieved: no "never retrieved" warning
                raise RespError(f"cannot connect: {exc!r}") from exc
            finally:
                self._connecting = None
        else:
            await asyncio.shield(self._connecting)
        assert self._transport is not None
        return self._transport

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            transport, _ = await loop.create_connection(
                lambda: _Protocol(self), self.host, self.port
            )
        self._transport = transport
        self._loop = loop
        if self.db:
            future: asyncio.Future[Any] = loop.create_future()
            self.waiters.append((future, time.monotonic()))
            self._transport.write(hiredis.pack_command(cast(Any, ("SELECT", self.db))))
            async with asyncio.timeout(self.connect_timeout + self.op_timeout):
                reply = await future
            if isinstance(reply, hiredis.ReplyError):
                raise RespError(f"SELECT {self.db}: {reply}")

    def _flush(self) -> None:
        out, self._out = self._out, []
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(out))

    def _check(self) -> None:
        self._watchdog = None
        if not self.waiters:
            return
        waited = time.monotonic() - self.waiters[0][1]
        if waited >= self.op_timeout:
            self.fail(RespError(f"no reply within {self.op_timeout:.3f}s"))
            return
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self.op_timeout - waited, self._check)

    def fail(self, error: RespError) -> None:
        """Close the connection and fail every pending request."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        waiters, self.waiters = self.waiters, deque()
        while waiters:  # emptied as it goes: a data_received still holding it sees that
            waiter, _ = waiters.popleft()
            if not isinstance(waiter, asyncio.Future):
                waiter(error)
            elif not waiter.done():
                waiter.set_exception(error)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def close(self) -> None:
        self.fail(RespError("closed"))
