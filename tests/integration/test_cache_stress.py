"""Never stale under concurrency (DESIGN invariant 2, PITFALLS E1/E5/F4): issue 4, point 7.

Two caching proxies share one Redis.  Writers (half on each proxy; psycopg simple and
extended, asyncpg `fetch` and the row-limited `fetchval`) keep incrementing a `version`
column of a few hot rows through the proxies, in autocommit; each write's RETURNING value is
recorded as *acknowledged* once the driver call returns.  Readers (half on each proxy, every
request shape: simple Query, extended with the unnamed statement, a named prepared statement,
asyncpg's binary row-limited Execute) snapshot the acknowledged version of a row *before*
sending their read and check that the read returned at least that version.  Both proxies run
with ``PGREACTIVE_TEST_FILL_DELAY_MS`` so that fills sleep between their lookup and their
store, which makes the read-fill / invalidate race (E5) happen often; the test checks that it
did happen (refused fills) and that the cache was really used (hits), so it cannot pass by
never caching.

Reads never go backwards either (invariant 9, issue 9 point 3): every read is recorded with
the test's own monotonic clock at its start and end, and afterwards each read is compared
with every read of the same row that *ended before it started*, in the same session and
across sessions (either proxy): none may return an older version.  Both proxies also run with
``PGREACTIVE_TEST_INVALIDATE_DELAY_MS``, which delays each invalidation after Postgres has
confirmed the commit, widening the window in which the commit is visible in Postgres but the
cache still holds the old version (without in-flight marks that window gives backwards reads
by the hundred).  Ordering comes from the clock, never durations: nothing asserts on timing.

The outcome is deterministic: the assertion is that *zero* stale and *zero* backwards reads
were observed (a correct proxy never produces one, whatever the interleaving).  Timeouts are
hang guards.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT, ProxyProcess, dsn, scrape, start_caching_proxy

KEYS = 4  # hot rows
WRITERS = 8
READERS = 8
TARGET_OPS = 20_000
WRITER_PAUSE = 0.2  # each writer sleeps uniform(0, this) s between writes: keeps hits possible
FILL_DELAY_MS = "20"
INVALIDATE_DELAY_MS = "20"
GUARD = 150.0  # hang guard for the whole run (expected: well under 30 s)
CONNECT_TIMEOUT = 20.0

READ_MODES = ("simple", "extended", "prepared", "asyncpg")
WRITE_MODES = ("simple", "extended", "asyncpg_fetchval", "asyncpg_fetch")

_CRASH = re.compile(r"Traceback \(most recent call last\)|Exception in callback")

HIT = 'pgreactive_cache_queries_total{outcome="hit",reason=""}'
MISS = 'pgreactive_cache_queries_total{outcome="miss",reason=""}'
REFUSED = 'pgreactive_cache_fills_total{result="refused"}'
STORED = 'pgreactive_cache_fills_total{result="stored"}'
FAILED = "pgreactive_invalidation_failures_total"
COUNTED = (HIT, MISS, REFUSED, STORED, FAILED)


@pytest.fixture(scope="module")
def table() -> Iterator[str]:
    """Rows (id, version 0): 0..KEYS-1 for the stress run, more for the single-write tests.

    Created before the proxies start, so that both load a catalog that knows it (a table
    created directly, or through the *other* proxy, stays unknown to a proxy whose catalog
    is already loaded, and unknown tables are never cached).
    """
    name = f"pgr_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, version bigint NOT NULL)")
        conn.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(0, {KEYS - 1}) g")
        conn.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(100, 119) g")
    try:
        yield name
    finally:
        with psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture(scope="module")
def proxies(table: str) -> Iterator[tuple[ProxyProcess, ProxyProcess]]:
    """Two caching proxies sharing the default Redis, fills and invalidations delayed by up
    to 20 ms."""
    env = {
        "PGREACTIVE_TEST_FILL_DELAY_MS": FILL_DELAY_MS,
        "PGREACTIVE_TEST_INVALIDATE_DELAY_MS": INVALIDATE_DELAY_MS,
    }
    first = start_caching_proxy(env=env)
    try:
        second = start_caching_proxy(env=env)
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second
    finally:
        second.stop()
        first.stop()


def _totals(proxies: tuple[ProxyProcess, ...]) -> Counter[str]:
    total: Counter[str] = Counter()
    for p in proxies:
        metrics = scrape(p)
        for name in COUNTED:
            total[name] += int(metrics.get(name, 0))
    return total


def _assert_healthy(proxy: ProxyProcess) -> None:
    assert proxy.process.poll() is None, f"proxy exited ({proxy.process.returncode}):\n{proxy.log}"
    crash = [line for line in list(proxy.lines) if _CRASH.search(line)]
    assert not crash, "unhandled exception in the proxy:\n" + proxy.log


@dataclass(frozen=True, slots=True)
class Read:
    """One completed read: which row, what it returned, when (test clock) and where."""

    key: int
    version: int
    start: float
    end: float
    session: str


@dataclass
class Run:
    """Shared state of one stress run (one event loop, so no locks are needed)."""

    table: str
    acked: list[int] = field(default_factory=lambda: [0] * KEYS)
    reads: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)
    stale: list[str] = field(default_factory=list)
    log: list[Read] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ops(self) -> int:
        return sum(self.reads.values()) + sum(self.writes.values())


def _now() -> str:
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f",{int(now * 1000) % 1000:03d}"


Conn = Any  # psycopg.AsyncConnection or asyncpg.Connection


async def _connect(proxy: ProxyProcess, mode: str) -> Conn:
    if mode.startswith("asyncpg"):
        return await asyncpg.connect(proxy.url(), timeout=CONNECT_TIMEOUT)
    return await psycopg.AsyncConnection.connect(
        proxy.dsn(connect_timeout=str(int(CONNECT_TIMEOUT))), autocommit=True
    )


async def _close(conn: Conn) -> None:
    if isinstance(conn, asyncpg.Connection):
        await conn.close(timeout=CONNECT_TIMEOUT)
    else:
        await conn.close()


def _reader_call(conn: Conn, mode: str, table: str) -> Callable[[int], Awaitable[int]]:
    sql = f"SELECT version FROM {table} WHERE id = "

    async def simple(k: int) -> int:  # no parameters: the simple protocol
        cur = await conn.execute(sql + str(k))
        row = await cur.fetchone()
        return int(row[0])

    async def extended(k: int) -> int:  # the unnamed statement, every time
        cur = await conn.execute(sql + "%s", (k,), prepare=False)
        row = await cur.fetchone()
        return int(row[0])

    async def prepared(k: int) -> int:  # a named prepared statement
        cur = await conn.execute(sql + "%s", (k,), prepare=True)
        row = await cur.fetchone()
        return int(row[0])

    async def binary(k: int) -> int:  # named statement, binary formats, Execute(max_rows=1)
        return int(await conn.fetchval(sql + "$1", k))

    return {"simple": simple, "extended": extended, "prepared": prepared, "asyncpg": binary}[mode]


def _writer_call(conn: Conn, mode: str, table: str) -> Callable[[int], Awaitable[int]]:
    sql = f"UPDATE {table} SET version = version + 1 WHERE id = "

    async def simple(k: int) -> int:
        cur = await conn.execute(f"{sql}{k} RETURNING version")
        row = await cur.fetchone()
        return int(row[0])

    async def extended(k: int) -> int:
        cur = await conn.execute(sql + "%s RETURNING version", (k,), prepare=False)
        row = await cur.fetchone()
        return int(row[0])

    async def fetchval(k: int) -> int:  # Execute(max_rows=1): Postgres answers PortalSuspended
        return int(await conn.fetchval(sql + "$1 RETURNING version", k))

    async def fetch(k: int) -> int:  # Execute(max_rows=0): CommandComplete
        rows = await conn.fetch(sql + "$1 RETURNING version", k)
        return int(rows[0][0])

    calls = {
        "simple": simple,
        "extended": extended,
        "asyncpg_fetchval": fetchval,
        "asyncpg_fetch": fetch,
    }
    return calls[mode]


async def _writer(run: Run, conn: Conn, mode: str, seed: int) -> None:
    rng = random.Random(seed)
    write = _writer_call(conn, mode, run.table)
    while not run.done.is_set():
        await asyncio.sleep(rng.uniform(0, WRITER_PAUSE))
        if run.done.is_set():
            break
        k = rng.randrange(KEYS)
        version = await write(k)
        # The call returned: the commit is acknowledged; later reads must see >= version.
        if version > run.acked[k]:
            run.acked[k] = version
        run.writes[mode] += 1


async def _reader(run: Run, conn: Conn, mode: str, where: str, seed: int) -> None:
    rng = random.Random(seed)
    read = _reader_call(conn, mode, run.table)
    while not run.done.is_set():
        k = rng.randrange(KEYS)
        floor = run.acked[k]  # snapshot before the read is sent
        start = time.monotonic()
        version = await read(k)
        run.log.append(Read(k, version, start, time.monotonic(), f"{mode} via {where}"))
        if version < floor:
            run.stale.append(
                f"{_now()} {mode} read via {where}: id={k} returned version {version}, but version"
                f" {floor} was acknowledged before the read started"
            )
        run.reads[mode] += 1
        if run.ops >= TARGET_OPS:
            run.done.set()


async def _stress(proxies: tuple[ProxyProcess, ProxyProcess], table: str) -> Run:
    run = Run(table)
    conns: list[Conn] = []
    try:
        jobs: list[Coroutine[Any, Any, None]] = []
        for i in range(WRITERS):
            proxy, mode = proxies[i % 2], WRITE_MODES[(i // 2) % len(WRITE_MODES)]
            conn = await _connect(proxy, mode)
            conns.append(conn)
            jobs.append(_writer(run, conn, mode, seed=1000 + i))
        for i in range(READERS):
            proxy, mode = proxies[i % 2], READ_MODES[(i // 2) % len(READ_MODES)]
            conn = await _connect(proxy, mode)
            conns.append(conn)
            jobs.append(_reader(run, conn, mode, f"proxy {i % 2} #{i}", seed=2000 + i))
        try:
            async with asyncio.timeout(GUARD):
                async with asyncio.TaskGroup() as group:
                    for job in jobs:
                        group.create_task(job)
        except TimeoutError:
            pytest.fail(f"hang guard: only {run.ops} operations after {GUARD} s")
    finally:
        for conn in conns:
            await _close(conn)
    return run


def backwards_reads(reads: list[Read]) -> list[tuple[Read, Read]]:
    """Each read that returned an older version than some read of the same row that had
    ended before it started, with the newest such earlier read: (earlier, later)."""
    found: list[tuple[Read, Read]] = []
    by_key: dict[int, list[Read]] = {}
    for read in reads:
        by_key.setdefault(read.key, []).append(read)
    for rows in by_key.values():
        ended = sorted(rows, key=lambda r: r.end)
        newest: Read | None = None  # the newest version among reads ended so far
        i = 0
        for read in sorted(rows, key=lambda r: r.start):
            while i < len(ended) and ended[i].end < read.start:
                if newest is None or ended[i].version > newest.version:
                    newest = ended[i]
                i += 1
            if newest is not None and read.version < newest.version:
                found.append((newest, read))
    return found


def test_backwards_reads_are_found() -> None:
    """The checker itself: a read that starts after a newer read ended is backwards, one
    that overlaps it is not, in the same session or another."""
    reads = [
        Read(0, 2, 0.0, 1.0, "a"),
        Read(0, 1, 0.5, 2.0, "b"),  # overlaps the first: may return the older version
        Read(0, 1, 1.5, 3.0, "b"),  # started after version 2 was returned: backwards
        Read(1, 1, 4.0, 5.0, "a"),  # another row: unrelated
        Read(0, 2, 6.0, 7.0, "a"),
        Read(0, 0, 8.0, 9.0, "a"),  # backwards, in the same session
    ]
    found = backwards_reads(reads)
    assert [(a.start, b.start) for a, b in found] == [(0.0, 1.5), (0.0, 8.0)]
    assert [a.session == b.session for a, b in found] == [False, True]


async def test_no_stale_read_across_two_proxies_under_load(
    proxies: tuple[ProxyProcess, ProxyProcess], table: str
) -> None:
    before = _totals(proxies)
    run = await _stress(proxies, table)
    after = _totals(proxies)
    delta = {name: after[name] - before[name] for name in COUNTED}
    reads = sum(run.reads.values())
    summary = f"reads {dict(run.reads)}, writes {dict(run.writes)}, cache {delta}"
    backwards = backwards_reads(run.log)
    same_session = sum(1 for a, b in backwards if a.session == b.session)
    print(f"{summary}; backwards reads: {len(backwards)} ({same_session} within a session)")

    if run.stale or backwards:
        warnings = [
            f"proxy {i}: {line}"
            for i, p in enumerate(proxies)
            for line in list(p.lines)
            if "WARNING" in line or "ERROR" in line
        ]
        pytest.fail(
            f"{len(run.stale)} stale reads and {len(backwards)} backwards reads"
            f" ({same_session} within a session) ({summary}); first ones:\n"
            + "\n".join(run.stale[:20])
            + "\n"
            + "\n".join(
                f"id={b.key}: {b.session} returned version {b.version} at +{b.start - a.end:.4f}"
                f" s after {a.session} had returned version {a.version}"
                for a, b in backwards[:20]
            )
            + f"\n{len(warnings)} proxy warnings, first ones:\n"
            + "\n".join(warnings[:40])
        )
    assert run.ops >= TARGET_OPS
    assert all(run.reads[m] > 0 for m in READ_MODES), summary
    assert all(run.writes[m] > 0 for m in WRITE_MODES), summary
    # Every write was acknowledged, so Postgres holds exactly the highest acknowledged values.
    with psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True) as conn:
        final = conn.execute(
            f"SELECT id, version FROM {table} WHERE id < {KEYS} ORDER BY id"
        ).fetchall()
    assert [v for _, v in final] == run.acked
    assert sum(run.acked) == sum(run.writes.values())
    # The cache was really used, and the read-fill / invalidate race really happened.
    assert delta[HIT] > reads // 10, summary
    assert delta[REFUSED] > 0, summary
    for p in proxies:
        _assert_healthy(p)


# --- the smallest deterministic form of one way to be stale under load ----------------


@pytest.fixture
async def reader(
    proxies: tuple[ProxyProcess, ProxyProcess],
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(proxies[1].dsn(), autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


CALLS = ["fetchval", "fetchrow", "fetch", "execute"]


@pytest.mark.parametrize("call", CALLS)
async def test_asyncpg_write_invalidates_whatever_the_row_limit(
    proxies: tuple[ProxyProcess, ProxyProcess],
    table: str,
    reader: psycopg.AsyncConnection[Any],
    call: str,
) -> None:
    """asyncpg's fetchval/fetchrow send Execute with max_rows=1: an UPDATE ... RETURNING of
    one row then ends in PortalSuspended, not CommandComplete, yet it ran to completion and
    commits at Sync.  The write must be invalidated like any other (before the ack)."""
    key = 100 + CALLS.index(call)  # a row of its own, still at version 0
    query = f"SELECT version FROM {table} WHERE id = {key}"
    for _ in range(3):  # cache it (on the other proxy, sharing Redis)
        cur = await reader.execute(query)
        assert await cur.fetchone() == (0,)
    before = scrape(proxies[1])[HIT]
    cur = await reader.execute(query)
    assert await cur.fetchone() == (0,)
    assert scrape(proxies[1])[HIT] == before + 1, "the read was not served from the cache"

    writer = await asyncpg.connect(proxies[0].url(), timeout=CONNECT_TIMEOUT)
    try:
        sql = f"UPDATE {table} SET version = version + 1 WHERE id = $1 RETURNING version"
        if call == "fetchval":
            assert await writer.fetchval(sql, key) == 1
        elif call == "fetchrow":
            assert tuple(await writer.fetchrow(sql, key)) == (1,)
        elif call == "fetch":
            assert [tuple(r) for r in await writer.fetch(sql, key)] == [(1,)]
        else:
            assert await writer.execute(sql, key) == "UPDATE 1"
    finally:
        await writer.close(timeout=CONNECT_TIMEOUT)
    cur = await reader.execute(query)
    assert await cur.fetchone() == (1,), f"stale after an acknowledged asyncpg {call}()"
