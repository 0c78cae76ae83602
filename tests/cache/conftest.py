"""Fixtures for the cache store tests: both backends, a throwaway redis-server, a TCP relay.

The shared Redis at 127.0.0.1:6379 is used through db 13 only (flushed around each test).
Tests that stop, stall or reconfigure Redis get a redis-server of their own on a free port,
reached through `Relay`, an asyncio TCP relay that can cut (reset every connection and refuse
new ones) or stall (hold bytes in both directions) without touching the server's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from cache.backend import Backend
from cache.memory import MemoryBackend
from cache.store import RedisBackend

REDIS_HOST = os.environ.get("PGREACTIVE_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("PGREACTIVE_TEST_REDIS_PORT", "6379"))
REDIS_DB = 13
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
EPOCH = "t:epoch"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def direct() -> AsyncIterator[aioredis.Redis]:
    """A plain client on the shared Redis, db 13, flushed before and after the test."""
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, direct: aioredis.Redis) -> AsyncIterator[Backend]:
    """Each backend in turn, started, with epoch key `EPOCH`."""
    b: Backend
    if request.param == "memory":
        b = MemoryBackend(epoch_key=EPOCH)
    else:
        b = RedisBackend.from_url(REDIS_URL, epoch_key=EPOCH, op_timeout=2.0, connect_timeout=2.0)
    await b.start()
    assert b.available
    yield b
    await b.close()


@pytest.fixture
async def redis_backend(direct: aioredis.Redis) -> AsyncIterator[RedisBackend]:
    b = RedisBackend.from_url(REDIS_URL, epoch_key=EPOCH, op_timeout=2.0, connect_timeout=2.0)
    await b.start()
    yield b
    await b.close()


class RedisServer:
    """A throwaway redis-server without persistence."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server not installed")
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("throwaway redis-server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


class Relay:
    """127.0.0.1:`port` → 127.0.0.1:`target`, with `cut`, `stall` and `restore`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._up = True
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        """Reset every relayed connection and refuse (reset) new ones until `restore`."""
        self._up = False
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def stall(self) -> None:
        """Keep connections open but forward nothing until `restore`."""
        self._flowing.clear()

    def restore(self) -> None:
        self._up = True
        self._flowing.set()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await self._flowing.wait()
                if not self._up:
                    break
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.transport.abort()
            self._writers.discard(dst)


@pytest.fixture
async def relay(redis_server: RedisServer) -> AsyncIterator[Relay]:
    r = await Relay(redis_server.port).start()
    yield r
    await r.close()
