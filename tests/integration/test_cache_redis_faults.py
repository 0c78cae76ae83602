"""Redis failures: fail open, then heal without staleness (DESIGN invariant 5, PITFALLS F1/F2).

Issue 4, point 8.  Each test runs its own throwaway ``redis-server`` on a free port and a
caching proxy pointed at it (``--redis`` given after `start_caching_proxy`'s own: the last
flag wins).

* Redis stopped mid-run and restarted **with its data** (``SHUTDOWN SAVE``, then a restart
  that loads the dump), and Redis unresponsive without losing data (SIGSTOP, then SIGCONT): every
  client query succeeds, ``pgreactive_cache_available`` reports the outage, a write made
  through the proxy during the outage (whose invalidation cannot be written) is never
  followed by the old cached entry — although that entry is still in Redis and its table
  counter was never bumped — and once Redis is back the proxy caches again.
* Redis under ``maxmemory`` pressure (entries and, with ``allkeys-*`` policies, generation
  counters evicted): no read returns data older than the last write acknowledged through the
  proxy.

Staleness checks follow test_cache_stress: a reader snapshots the highest acknowledged
`version` of a row before sending its read and the read must return at least that.
Timeouts are hang guards, never speed requirements.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
import pytest
import redis

from cache.keys import read_generations
from tests.conftest import (
    PG_DB,
    PG_HOST,
    PG_PORT,
    ProxyProcess,
    dsn,
    key_namespace,
    scrape,
    start_caching_proxy,
)

GUARD = 30.0  # hang guard for one wait or one query

HIT = 'pgreactive_cache_queries_total{outcome="hit",reason=""}'
AVAILABLE = "pgreactive_cache_available"
INVALIDATION_FAILURES = "pgreactive_invalidation_failures_total"

SHAPES = ("simple", "extended", "prepared", "asyncpg")

_CRASH = re.compile(r"Traceback \(most recent call last\)|Exception in callback")


# --- a throwaway redis-server ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` on a free port, its dump and log in a temporary directory."""

    def __init__(self, *args: str) -> None:
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="pgr-redis-")
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=GUARD, socket_connect_timeout=GUARD)

    def start(self) -> None:
        """Start (or restart, loading the dump if there is one) and wait until it answers."""
        assert self.process is None or self.process.poll() is not None
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--dbfilename",
            "dump.rdb",
            "--logfile",
            "redis.log",
            *self.args,
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + GUARD
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as c:
                    if c.ping():
                        return
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self.log()}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.log()}")
            time.sleep(0.05)

    def shutdown(self, *, save: bool) -> None:
        """``SHUTDOWN SAVE`` (the dump keeps every key for the next start) or ``NOSAVE``."""
        assert self.process is not None
        with self.client() as c, contextlib.suppress(redis.exceptions.ConnectionError):
            c.execute_command("SHUTDOWN", "SAVE" if save else "NOSAVE")
        self.process.wait(GUARD)

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its data and its sockets but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        try:
            with open(f"{self.dir}/redis.log", encoding="utf-8", errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _caching_proxy(server: RedisServer) -> ProxyProcess:
    """A caching proxy on `server` (the later --redis overrides start_caching_proxy's).

    Each test proves it is really this Redis the proxy uses: its outage stops the cache, its
    memory fills with the proxy's entries.
    """
    return start_caching_proxy("--redis", server.url)


def _assert_healthy(proxy: ProxyProcess) -> None:
    assert proxy.process.poll() is None, f"proxy exited ({proxy.process.returncode}):\n{proxy.log}"
    crash = [line for line in list(proxy.lines) if _CRASH.search(line)]
    assert not crash, "unhandled exception in the proxy:\n" + proxy.log


@pytest.fixture(scope="module")
def outage_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


@dataclass(frozen=True)
class OutageTables:
    """Per outage test: a probe table (row 1, no load) and a load table (rows 0..3)."""

    probe: dict[str, str]
    load: dict[str, str]


OUTAGES = ("restart", "frozen")


@pytest.fixture(scope="module")
def outage_tables() -> Iterator[OutageTables]:
    """Created before the proxy starts, so that its catalog knows them: a table created
    behind the back of a proxy whose catalog is loaded stays unknown, hence never cached."""
    prefix = f"pgr_{uuid.uuid4().hex[:10]}"
    tables = OutageTables(
        {o: f"{prefix}_{o}_p" for o in OUTAGES}, {o: f"{prefix}_{o}_l" for o in OUTAGES}
    )
    body = "(id int PRIMARY KEY, version bigint NOT NULL)"
    with _tables(*((t, body) for o in OUTAGES for t in (tables.probe[o], tables.load[o]))):
        with psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True) as conn:
            for o in OUTAGES:
                conn.execute(f"INSERT INTO {tables.probe[o]} VALUES (1, 0)")
                conn.execute(
                    f"INSERT INTO {tables.load[o]} SELECT g, 0 FROM generate_series(0, 3) g"
                )
        yield tables


@pytest.fixture(scope="module")
def outage_proxy(outage_redis: RedisServer, outage_tables: OutageTables) -> Iterator[ProxyProcess]:
    proxy = _caching_proxy(outage_redis)
    try:
        yield proxy
    finally:
        proxy.stop()


@contextlib.contextmanager
def _tables(*definitions: tuple[str, str]) -> Iterator[None]:
    """CREATE each (name, body) directly on Postgres; DROP them afterwards."""
    with psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True) as conn:
        try:
            for name, body in definitions:
                conn.execute(f"CREATE TABLE {name} {body}")
            yield
        finally:
            for name, _ in definitions:
                conn.execute(f"DROP TABLE IF EXISTS {name}")


# --- clients: every request shape, and a background load with a staleness check ------------


Conn = Any  # psycopg.AsyncConnection or asyncpg.Connection
Job = Callable[[], Coroutine[Any, Any, None]]


async def _connect(proxy: ProxyProcess, shape: str) -> Conn:
    if shape == "asyncpg":
        return await asyncpg.connect(proxy.url(), timeout=GUARD)
    return await psycopg.AsyncConnection.connect(
        proxy.dsn(connect_timeout=str(int(GUARD))), autocommit=True
    )


async def _close(conn: Conn) -> None:
    if isinstance(conn, asyncpg.Connection):
        await conn.close(timeout=GUARD)
    else:
        await conn.close()


async def _read(conn: Conn, shape: str, sql: str, key: int) -> int:
    """`sql` ends with "WHERE id = "; returns the first column of the one row."""
    async with asyncio.timeout(GUARD):
        if shape == "asyncpg":
            return int(await conn.fetchval(sql + "$1", key))
        if shape == "simple":
            cur = await conn.execute(sql + str(key))
        else:
            cur = await conn.execute(sql + "%s", (key,), prepare=shape == "prepared")
        row = await cur.fetchone()
        return int(row[0])


async def _write(conn: Conn, table: str, key: int) -> int:
    """Increment `version` of row `key` (autocommit); returns the acknowledged version."""
    sql = f"UPDATE {table} SET version = version + 1 WHERE id = "
    async with asyncio.timeout(GUARD):
        if isinstance(conn, asyncpg.Connection):
            # fetch(), not fetchval(): a row-limited write is test_cache_stress's business.
            rows = await conn.fetch(sql + "$1 RETURNING version", key)
            return int(rows[0][0])
        cur = await conn.execute(sql + "%s RETURNING version", (key,))
        row = await cur.fetchone()
        return int(row[0])


@dataclass
class Load:
    """Readers and writers on `table` through a proxy (plus optional direct writers).

    Writes through the proxy raise `acked[k]`; a read of row k must return at least the
    `acked[k]` seen before it was sent.  Direct writes (to Postgres, bypassing the proxy) are
    never acknowledged by the proxy, so they only make cached data differ from Postgres.
    Every operation must succeed: an exception ends the load and fails the test.
    """

    proxy: ProxyProcess
    table: str
    keys: int
    columns: str = "version"
    readers: tuple[str, ...] = SHAPES
    writers: tuple[str, ...] = ("extended", "asyncpg")
    direct_writers: int = 0
    read_pause: float = 0.002
    write_pause: float = 0.05
    hot: int | None = None  # if set, 3 reads in 4 go to rows [0, hot)
    acked: list[int] = field(init=False)
    reads: Counter[str] = field(default_factory=Counter)
    writes: int = 0
    direct: int = 0
    stale: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0

    def __post_init__(self) -> None:
        self.acked = [0] * self.keys
        self.gate.set()

    @property
    def ops(self) -> int:
        return sum(self.reads.values()) + self.writes + self.direct

    async def run(self, until_ops: int | None = None) -> None:
        """Run until `stop` is set (or `until_ops` operations were done)."""
        conns: list[Conn] = []
        try:
            jobs: list[Job] = []
            for i, shape in enumerate(self.readers):
                conn = await _connect(self.proxy, shape)
                conns.append(conn)
                jobs.append(self._reader_job(conn, shape, 100 + i, until_ops))
            for i, shape in enumerate(self.writers):
                conn = await _connect(self.proxy, shape)
                conns.append(conn)
                jobs.append(self._writer_job(conn, 200 + i, direct=False))
            for i in range(self.direct_writers):
                conn = await psycopg.AsyncConnection.connect(dsn(PG_HOST, PG_PORT), autocommit=True)
                conns.append(conn)
                jobs.append(self._writer_job(conn, 300 + i, direct=True))
            async with asyncio.TaskGroup() as group:
                for job in jobs:
                    group.create_task(job())
        finally:
            self.stop.set()
            for conn in conns:
                await _close(conn)

    async def pause(self) -> None:
        """Hold every client before its next operation; return when none is in flight."""
        self.gate.clear()
        async with asyncio.timeout(GUARD):
            while self.in_flight:
                await asyncio.sleep(0.01)

    def resume(self) -> None:
        self.gate.set()

    async def _turn(self) -> bool:
        await self.gate.wait()
        return not self.stop.is_set()

    def _reader_job(self, conn: Conn, shape: str, seed: int, until_ops: int | None) -> Job:
        rng = random.Random(seed)
        sql = f"SELECT {self.columns} FROM {self.table} WHERE id = "

        async def job() -> None:
            while await self._turn():
                if self.hot is not None and rng.random() < 0.75:
                    key = rng.randrange(self.hot)
                else:
                    key = rng.randrange(self.keys)
                floor = self.acked[key]  # before the read is sent
                self.in_flight += 1
                try:
                    version = await _read(conn, shape, sql, key)
                finally:
                    self.in_flight -= 1
                if version < floor:
                    self.stale.append(
                        f"{shape}: id={key} returned version {version} after version {floor}"
                        " was acknowledged"
                    )
                self.reads[shape] += 1
                if until_ops is not None and self.ops >= until_ops:
                    self.stop.set()
                await asyncio.sleep(rng.uniform(0, self.read_pause))

        return job

    def _writer_job(self, conn: Conn, seed: int, *, direct: bool) -> Job:
        rng = random.Random(seed)

        async def job() -> None:
            while True:
                await asyncio.sleep(rng.uniform(0, self.write_pause))
                if not await self._turn():
                    return
                key = rng.randrange(self.keys)
                self.in_flight += 1
                try:
                    if direct:
                        async with asyncio.timeout(GUARD):
                            await conn.execute(
                                f"UPDATE {self.table} SET version = version + 1000,"
                                " pad = md5(random()::text) || pad WHERE id = %s",
                                (key,),
                            )
                        self.direct += 1
                        continue
                    version = await _write(conn, self.table, key)
                finally:
                    self.in_flight -= 1
                if version > self.acked[key]:
                    self.acked[key] = version
                self.writes += 1

        return job


# --- helpers for the outage tests -----------------------------------------------------------


class Probe:
    """One connection per request shape, reading row 1 of a table no load writes to."""

    def __init__(self, proxy: ProxyProcess, table: str) -> None:
        self.proxy = proxy
        self.table = table
        self.sql = f"SELECT version FROM {table} WHERE id = "
        self.conns: dict[str, Conn] = {}

    async def open(self) -> None:
        for shape in SHAPES:
            self.conns[shape] = await _connect(self.proxy, shape)

    async def close(self) -> None:
        for conn in self.conns.values():
            await _close(conn)

    async def read_all(self) -> dict[str, int]:
        return {shape: await _read(c, shape, self.sql, 1) for shape, c in self.conns.items()}

    async def write(self) -> int:
        return await _write(self.conns["extended"], self.table, 1)


def _metric(proxy: ProxyProcess, name: str) -> float:
    return scrape(proxy).get(name, 0.0)


async def _cache_all_shapes(probe: Probe, expected: int, load: Load) -> None:
    """Read every shape until each was answered from the cache (the load is held meanwhile,
    so that the hits counted are the probe's)."""
    await load.pause()
    try:
        async with asyncio.timeout(GUARD):
            while True:
                before = _metric(probe.proxy, HIT)
                assert await probe.read_all() == dict.fromkeys(SHAPES, expected)
                if _metric(probe.proxy, HIT) - before == len(SHAPES):
                    return
                await asyncio.sleep(0.05)
    finally:
        load.resume()


async def _recover(probe: Probe, expected: int, load: Load) -> None:
    """After an outage: every read returns `expected` (never the old cached value) while the
    proxy heals; return once it is available again and every shape is cached again."""
    async with asyncio.timeout(GUARD):
        while _metric(probe.proxy, AVAILABLE) != 1:
            assert await probe.read_all() == dict.fromkeys(SHAPES, expected), (
                "a read after the outage returned the entry cached before it"
            )
            await asyncio.sleep(0.05)
    await _cache_all_shapes(probe, expected, load)


def _entry_still_current(table: str, server: RedisServer, *, but_global_epoch: bool) -> bool:
    """Whether Redis holds an entry for a read of `table` whose recorded generations equal
    the counters' current values, i.e. only the epoch bump of the proxy's heal stops it from
    being served.  With `but_global_epoch`, the global epoch is not compared (a heal probe
    sent to a frozen Redis may have been carried out when it woke up)."""
    ns = key_namespace(PG_DB, server.url)
    gen_keys = read_generations(ns, [table], {})
    with server.client() as c:
        current = [v or b"?" for v in c.mget(gen_keys)]
        for key in c.scan_iter(match=ns.entry("*"), count=1000):
            value = c.get(key)
            if value is None or b"\n" not in value:
                continue
            recorded = value.split(b"\n", 1)[0].split(b",")
            if len(recorded) != len(gen_keys):
                continue
            if all(
                r == v or (but_global_epoch and k == ns.global_epoch)
                for k, r, v in zip(gen_keys, recorded, current, strict=True)
            ):
                return True
    return False


# --- 8a: Redis stopped and restarted, Redis paused -----------------------------------------


async def test_redis_restart_fails_open_then_heals_without_stale_reads(
    outage_redis: RedisServer, outage_proxy: ProxyProcess, outage_tables: OutageTables
) -> None:
    """Redis shut down (saving its data) and restarted from that dump, under load."""
    probe = Probe(outage_proxy, outage_tables.probe["restart"])
    await probe.open()
    load = Load(outage_proxy, outage_tables.load["restart"], keys=4)
    running = asyncio.create_task(load.run())
    try:
        await _cache_all_shapes(probe, 0, load)
        assert _metric(outage_proxy, AVAILABLE) == 1
        failures = _metric(outage_proxy, INVALIDATION_FAILURES)

        await asyncio.to_thread(outage_redis.shutdown, save=True)  # the load keeps going
        ops_at_stop = load.ops
        assert await probe.read_all() == dict.fromkeys(SHAPES, 0)
        assert _metric(outage_proxy, AVAILABLE) == 0
        assert await probe.write() == 1  # acknowledged; its invalidation is lost
        assert await probe.read_all() == dict.fromkeys(SHAPES, 1)
        assert _metric(outage_proxy, INVALIDATION_FAILURES) > failures
        await asyncio.sleep(1.5)  # the breaker cools and probes a dead Redis
        assert await probe.read_all() == dict.fromkeys(SHAPES, 1)

        await load.pause()
        assert load.ops > ops_at_stop, "the load did not run while Redis was down"
        await asyncio.to_thread(outage_redis.start)
        # The dump brought back the entry read before the outage, with generations that
        # are still current: nothing but the proxy's heal keeps it from being served.
        assert _entry_still_current(probe.table, outage_redis, but_global_epoch=False), (
            "precondition: the entry cached before the outage is back"
        )
        load.resume()

        await _recover(probe, 1, load)
        assert not running.done()
    finally:
        load.stop.set()
        load.resume()
        await running
        await probe.close()
    assert not load.stale, load.stale[:10]
    assert load.writes > 0 and all(load.reads[s] > 0 for s in SHAPES)
    _assert_healthy(outage_proxy)


async def test_redis_frozen_fails_open_then_heals_without_stale_reads(
    outage_redis: RedisServer, outage_proxy: ProxyProcess, outage_tables: OutageTables
) -> None:
    """Redis stops answering (SIGSTOP: connections hang, commands time out) and keeps its
    data; SIGCONT brings it back exactly as it was."""
    probe = Probe(outage_proxy, outage_tables.probe["frozen"])
    await probe.open()
    load = Load(outage_proxy, outage_tables.load["frozen"], keys=4)
    running = asyncio.create_task(load.run())
    try:
        await _recover(probe, 0, load)  # available (after an earlier test's outage too)
        failures = _metric(outage_proxy, INVALIDATION_FAILURES)

        outage_redis.freeze()
        assert await probe.read_all() == dict.fromkeys(SHAPES, 0)
        assert _metric(outage_proxy, AVAILABLE) == 0
        assert await probe.write() == 1  # acknowledged; its invalidation is not written
        assert await probe.read_all() == dict.fromkeys(SHAPES, 1)
        assert _metric(outage_proxy, INVALIDATION_FAILURES) > failures
        await asyncio.sleep(1.5)  # the breaker cools and probes a hung Redis
        assert await probe.read_all() == dict.fromkeys(SHAPES, 1)

        await load.pause()
        outage_redis.thaw()
        # The invalidation attempted while Redis was frozen may still land when it thaws (its
        # command sat in Redis's socket buffer), or be lost; either way no read below may be
        # stale.  (test_redis_restart_fails_open_then_heals_without_stale_reads proves the
        # lost case: there the epoch bump on heal is all that keeps the pre-outage entry from
        # being served.)
        _entry_still_current(probe.table, outage_redis, but_global_epoch=True)
        load.resume()
        await _recover(probe, 1, load)
        assert not running.done()
    finally:
        outage_redis.thaw()
        load.stop.set()
        load.resume()
        await running
        await probe.close()
    assert not load.stale, load.stale[:10]
    assert load.writes > 0 and all(load.reads[s] > 0 for s in SHAPES)
    _assert_healthy(outage_proxy)


# --- 8b: maxmemory pressure -------------------------------------------------------------------


PRESSURE_ROWS = 40
PRESSURE_OPS = 1500


@pytest.fixture
def big_table(unique_name: str) -> Iterator[str]:
    """PRESSURE_ROWS rows of ~32 kB each (random hex: an entry Redis cannot share or shrink)."""
    body = "(id int PRIMARY KEY, version bigint NOT NULL, pad text NOT NULL)"
    with _tables((unique_name, body)):
        with psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {unique_name} SELECT g, 0, (SELECT string_agg(md5(random()::text"
                f" || g || i), '') FROM generate_series(1, 1000) i)"
                f" FROM generate_series(0, {PRESSURE_ROWS - 1}) g"
            )
        yield unique_name


@pytest.fixture(params=["allkeys-lru", "volatile-lru", "allkeys-random"])
def pressured(
    request: pytest.FixtureRequest, big_table: str
) -> Iterator[tuple[RedisServer, ProxyProcess]]:
    """A 2 MB Redis with the given eviction policy, and a caching proxy on it (started after
    `big_table` exists, so that its catalog knows the table)."""
    server = RedisServer("--maxmemory", "2mb", "--maxmemory-policy", request.param)
    try:
        proxy = _caching_proxy(server)
        try:
            yield server, proxy
        finally:
            proxy.stop()
    finally:
        server.close()


async def test_no_stale_read_under_maxmemory_pressure(
    pressured: tuple[RedisServer, ProxyProcess], big_table: str
) -> None:
    server, proxy = pressured
    with server.client() as c:
        evicted_before = int(c.info("stats")["evicted_keys"])
    hits_before = _metric(proxy, HIT)
    load = Load(
        proxy,
        big_table,
        keys=PRESSURE_ROWS,
        columns="version, pad",
        writers=("extended", "asyncpg"),
        direct_writers=1,
        write_pause=0.1,
        hot=6,
    )
    async with asyncio.timeout(120):  # hang guard
        await load.run(until_ops=PRESSURE_OPS)
    with server.client() as c:
        evicted = int(c.info("stats")["evicted_keys"]) - evicted_before
    hits = _metric(proxy, HIT) - hits_before
    summary = (
        f"reads {dict(load.reads)}, writes {load.writes}, direct {load.direct},"
        f" evicted {evicted}, hits {hits}"
    )
    print(summary)  # shown with -s, or on failure
    assert not load.stale, f"{summary}\n" + "\n".join(load.stale[:10])
    assert evicted > 0, f"no eviction: the test did not put Redis under pressure ({summary})"
    assert hits > 0, f"nothing served from the cache ({summary})"
    assert load.writes > 0 and load.direct > 0 and all(load.reads[s] > 0 for s in SHAPES)
    _assert_healthy(proxy)
