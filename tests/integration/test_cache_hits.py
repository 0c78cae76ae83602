"""Cache hits that cannot be faked (issue 4, acceptance point 1).

The proof of a hit: read a row through a caching proxy, change it *directly* in Postgres
(bypassing the proxy, so nothing invalidates), read again through the proxy and get the old
value -- it can only have come from the cache.  A write through the proxy must then make the
next read fresh.  The hit/miss counters on /metrics must move accordingly.

Isolation.  Every test gets a database of its own, created directly at :5432 with its tables
before the proxy first sees it: the proxy loads a database's catalog on first use and learns
about later DDL only when the DDL goes through it, so a table created directly afterwards
would be unknown (and never cached).  The proxies of this module use a throwaway Redis of
their own: any proxy on a shared Redis may bump the global epoch (when it heals after a
Redis outage, as in the fault tests running alongside), which would invalidate our entries
in the middle of a hit proof.

The helpers above the tests (throwaway Redis, fresh databases, metric deltas) are shared by
``test_cache_invalidation.py`` and ``test_cache_transactions.py``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.conftest import PG_DB, PG_HOST, PG_PORT, PG_USER, ProxyProcess, dsn, scrape
from tests.conftest import start_caching_proxy as _start_caching_proxy

TIMEOUT = 30.0  # hang guard for a single client call, never a performance assertion

# --- metrics -------------------------------------------------------------------------

HIT = 'pgreactive_cache_queries_total{outcome="hit",reason=""}'
MISS = 'pgreactive_cache_queries_total{outcome="miss",reason=""}'
INVALIDATIONS = "pgreactive_invalidations_total{"  # per database and reach
FILLS_STORED = 'pgreactive_cache_fills_total{result="stored"}'


def bypass(reason: str) -> str:
    """The metric counting reads forwarded for `reason`."""
    return f'pgreactive_cache_queries_total{{outcome="bypass",reason="{reason}"}}'


class Meter:
    """Counter deltas of one proxy since the meter was made (or last reset)."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.proxy = proxy
        self.before = scrape(proxy)

    def reset(self) -> None:
        self.before = scrape(self.proxy)

    def deltas(self) -> dict[str, float]:
        now = scrape(self.proxy)
        return {k: now.get(k, 0.0) - self.before.get(k, 0.0) for k in set(now) | set(self.before)}

    def delta(self, name: str) -> float:
        return self.deltas().get(name, 0.0)

    def invalidations(self) -> float:
        return sum(v for k, v in self.deltas().items() if k.startswith(INVALIDATIONS))

    def cache(self) -> dict[str, float]:
        """The non-zero deltas of the cache-decision counters (for assertion messages)."""
        return {
            k: v
            for k, v in self.deltas().items()
            if v
            and any(w in k for w in ("cache_queries", "invalidation", "fills", "cache_available"))
        }


# --- a throwaway Redis, databases of a test's own, proxies ---------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_redis() -> Iterator[str]:
    """A redis-server of our own on a free port (no persistence); yields its URL."""
    directory = tempfile.mkdtemp(prefix="pgr-redis-")
    process: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(5):  # another process may take the free port before redis binds it
            port = free_port()
            process = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", directory],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)
            if process.poll() is None:
                break
        else:
            raise RuntimeError("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def caching_proxy(redis_url: str, *args: str) -> ProxyProcess:
    """A caching proxy (catalog connection, metrics) on the Redis at `redis_url`."""
    # The last --redis on the command line wins over the helper's shared db 12.
    return _start_caching_proxy(*args, "--redis", redis_url)


def direct_dsn(dbname: str = PG_DB) -> str:
    return dsn(PG_HOST, PG_PORT, dbname=dbname, user=PG_USER)


def direct(dbname: str) -> psycopg.Connection[Any]:
    """An autocommit connection straight to Postgres (bypassing every proxy)."""
    return psycopg.connect(direct_dsn(dbname), autocommit=True, connect_timeout=int(TIMEOUT))


def proxied(proxy: ProxyProcess, dbname: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection through `proxy`."""
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(proxy.dsn(dbname=dbname), connect_timeout=int(TIMEOUT), **kwargs)


@contextlib.contextmanager
def fresh_database(
    setup: str = "",
    connect: Callable[[str], psycopg.Connection[Any]] = direct,
    admin_dbname: str = PG_DB,
) -> Iterator[str]:
    """A database of the test's own (unique name) with `setup` run in it, dropped after
    (WITH FORCE: the proxy's catalog connection to it is still open)."""
    name = f"pgr_{uuid.uuid4().hex[:12]}"
    with connect(admin_dbname) as admin:
        admin.execute(f"create database {name}")
    try:
        if setup:
            with connect(name) as conn:
                conn.execute(setup)
        yield name
    finally:
        with connect(admin_dbname) as admin:
            admin.execute(f"drop database if exists {name} with (force)")


# --- fixtures of this module -----------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with throwaway_redis() as url:
        yield url


@pytest.fixture(scope="module")
def proxy(redis_url: str) -> Iterator[ProxyProcess]:
    p = caching_proxy(redis_url)
    yield p
    p.stop()


SETUP = """
create table t (id int primary key, v text not null);
insert into t values (1, 'a'), (2, 'b'), (3, 'c');
create table kinds (
    id int primary key, i8 bigint, num numeric(12, 4), f8 float8, txt text, b bytea,
    ts timestamptz, d date, iv interval, j jsonb, arr int[], u uuid, flag bool
);
insert into kinds values
    (1, 9007199254740993, 12345.6789, 0.1, 'héllo ☃', '\\x00ff10',
     '2024-02-29 23:59:59.123456+00', '2024-02-29', '1 day 02:03:04', '{"a": [1, 2, null]}',
     '{1,NULL,3}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true),
    (2, null, null, null, null, null, null, null, null, null, null, null, null),
    (3, -1, -0.0001, 'NaN', '', '', '-infinity', 'infinity', '-1 mon', 'null', '{}',
     '00000000-0000-0000-0000-000000000000', false);
"""


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database(SETUP) as name:
        yield name


# --- psycopg: simple, extended, prepared, binary, pipeline -----------------------------


def _read_simple(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("select v from t where id = 1").fetchall()


def _read_extended(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("select v from t where id = %s", (1,)).fetchall()


def _read_prepared(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("select v from t where id = %s", (1,), prepare=True).fetchall()


def _read_binary(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    cur = conn.cursor(binary=True)
    rows = cur.execute("select v from t where id = %s", (1,)).fetchall()
    assert cur.pgresult is not None and cur.pgresult.fformat(0) == 1
    return rows


def _read_pipeline(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    with conn.pipeline():
        cur = conn.execute("select v from t where id = %s", (1,))
    return cur.fetchall()


def _write_simple(conn: psycopg.Connection[Any], value: str) -> None:
    conn.execute(f"update t set v = '{value}' where id = 1")


def _write_extended(conn: psycopg.Connection[Any], value: str) -> None:
    conn.execute("update t set v = %s where id = %s", (value, 1))


def _write_prepared(conn: psycopg.Connection[Any], value: str) -> None:
    conn.execute("update t set v = %s where id = %s", (value, 1), prepare=True)


def _write_binary(conn: psycopg.Connection[Any], value: str) -> None:
    conn.cursor(binary=True).execute("update t set v = %s where id = %s", (value, 1))


def _write_pipeline(conn: psycopg.Connection[Any], value: str) -> None:
    with conn.pipeline():
        conn.execute("update t set v = %s where id = %s", (value, 1))


PROTOCOLS: dict[str, tuple[Callable[..., list[tuple[Any, ...]]], Callable[..., None]]] = {
    "simple": (_read_simple, _write_simple),
    "extended": (_read_extended, _write_extended),
    "prepared": (_read_prepared, _write_prepared),
    "binary": (_read_binary, _write_binary),
    "pipeline": (_read_pipeline, _write_pipeline),
}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_hit_survives_direct_change_until_write_through_proxy(
    proxy: ProxyProcess, database: str, protocol: str
) -> None:
    read, write = PROTOCOLS[protocol]
    with proxied(proxy, database) as pc, direct(database) as dc:
        meter = Meter(proxy)
        assert read(pc) == [("a",)]
        assert (meter.delta(MISS), meter.delta(HIT)) == (1, 0), meter.cache()

        dc.execute("update t set v = 'direct' where id = 1")  # the proxy cannot see this
        meter.reset()
        assert read(pc) == [("a",)], "the second read was not served from the cache"
        assert (meter.delta(MISS), meter.delta(HIT)) == (0, 1), meter.cache()

        meter.reset()
        write(pc, "proxy")
        assert meter.invalidations() >= 1, meter.cache()
        assert read(pc) == [("proxy",)], "a write through the proxy did not invalidate"
        assert read(pc) == [("proxy",)]
        assert (meter.delta(MISS), meter.delta(HIT)) == (1, 1), meter.cache()

    with proxied(proxy, database) as other:  # a new session sees the same
        assert read(other) == [("proxy",)]


def test_pipeline_write_then_read_in_one_pipeline(proxy: ProxyProcess, database: str) -> None:
    """A read queued behind a write in the same pipeline sees the write, never the cache."""
    with proxied(proxy, database) as pc:
        assert _read_extended(pc) == [("a",)]
        assert _read_extended(pc) == [("a",)]  # cached now
        with pc.pipeline():
            pc.execute("update t set v = %s where id = %s", ("piped", 1))
            cur = pc.execute("select v from t where id = %s", (1,))
        assert cur.fetchall() == [("piped",)]
        assert _read_extended(pc) == [("piped",)]


# --- the cached answer is what Postgres sent ---------------------------------------------


def _wire(cur: psycopg.Cursor[Any]) -> dict[str, Any]:
    """Everything libpq got for a result: field descriptions, raw value bytes, the tag."""
    res = cur.pgresult
    assert res is not None
    fields = [
        (res.fname(i), res.ftable(i), res.ftablecol(i), res.ftype(i), res.fmod(i),
         res.fsize(i), res.fformat(i))
        for i in range(res.nfields)
    ]  # fmt: skip
    rows = [[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)]
    return {"fields": fields, "rows": rows, "status": res.command_status}


QUERIES = {
    "many-types": "select * from kinds where id <> {p} order by id",
    "no-rows": "select id, txt from kinds where id = {p} + 100",
    "expressions": "select id, txt || '!' as shout, num * 2 as twice, arr[1] from kinds "
    "where id >= {p} order by id desc",
}


def _run(conn: psycopg.Connection[Any], protocol: str, query: str) -> dict[str, Any]:
    if protocol == "simple":
        cur = conn.execute(query.format(p="0"))
    else:
        cur = conn.cursor(binary=protocol == "binary")
        cur.execute(query.format(p="%s"), (0,))
    return _wire(cur)  # raw bytes: psycopg cannot load a timestamptz of -infinity


@pytest.mark.parametrize("query", list(QUERIES))
@pytest.mark.parametrize("protocol", ["simple", "extended", "binary"])
def test_cached_answer_is_byte_identical(
    proxy: ProxyProcess, database: str, protocol: str, query: str
) -> None:
    sql = QUERIES[query]
    with proxied(proxy, database) as pc, direct(database) as dc:
        reference = _run(dc, protocol, sql)  # what Postgres itself answers
        assert _run(pc, protocol, sql) == reference  # the miss, relayed and captured
        dc.execute("update kinds set txt = 'changed', num = 0, arr = '{7}'")
        dc.execute("insert into kinds (id) values (-100), (100)")
        assert _run(dc, protocol, sql) != reference  # the change is visible directly
        meter = Meter(proxy)
        assert _run(pc, protocol, sql) == reference, "the cached answer differs from Postgres's"
        assert meter.delta(HIT) == 1, meter.cache()


def test_text_and_binary_results_never_mix(proxy: ProxyProcess, database: str) -> None:
    """The same SQL read with text results, then with binary ones (and back): each client
    gets its own format, properly decoded, even when both are cached."""
    sql = "select id, i8, num, txt, d, flag from kinds where id = %s"
    expected = [(1, 9007199254740993, Decimal("12345.6789"), "héllo ☃",
                 date(2024, 2, 29), True)]  # fmt: skip
    with proxied(proxy, database) as pc:
        meter = Meter(proxy)
        for _ in range(2):  # miss + miss, then hit + hit
            for binary in (False, True, False):
                cur = pc.cursor(binary=binary)
                assert cur.execute(sql, (1,)).fetchall() == expected, f"binary={binary}"
                assert cur.pgresult is not None
                formats = {cur.pgresult.fformat(i) for i in range(cur.pgresult.nfields)}
                assert formats == {1 if binary else 0}
        assert (meter.delta(MISS), meter.delta(HIT)) == (2, 4), meter.cache()


async def test_asyncpg_binary_and_psycopg_text_never_mix(
    proxy: ProxyProcess, database: str
) -> None:
    """asyncpg (binary results) and psycopg (text results) send the very same SQL text."""
    sql = "select id, num, d, arr from kinds where id = $1"
    conn = await asyncpg.connect(proxy.url(dbname=database), timeout=TIMEOUT)
    try:
        with proxied(proxy, database) as pc:
            for _ in range(2):
                rows = await conn.fetch(sql, 1, timeout=TIMEOUT)
                assert [tuple(r) for r in rows] == [
                    (1, Decimal("12345.6789"), date(2024, 2, 29),
                     [1, None, 3])
                ]  # fmt: skip
                cur = pc.execute(sql.replace("$1", "%s"), (1,))
                assert cur.fetchall() == [
                    (1, Decimal("12345.6789"), date(2024, 2, 29),
                     [1, None, 3])
                ]  # fmt: skip
                assert cur.pgresult is not None and cur.pgresult.fformat(0) == 0
    finally:
        await conn.close(timeout=TIMEOUT)


# --- asyncpg: named statements, binary formats, row-limited Execute ---------------------


@pytest.mark.parametrize("method", ["fetch", "fetchrow", "fetchval"])
async def test_asyncpg_hit_survives_direct_change_until_write(
    proxy: ProxyProcess, database: str, method: str
) -> None:
    sql = "select v from t where id = $1"
    conn = await asyncpg.connect(proxy.url(dbname=database), timeout=TIMEOUT)

    async def read() -> Any:
        value = await getattr(conn, method)(sql, 1, timeout=TIMEOUT)
        if method == "fetch":
            return [tuple(r) for r in value]
        return tuple(value) if method == "fetchrow" else value

    def shaped(v: str) -> Any:
        return {"fetch": [(v,)], "fetchrow": (v,), "fetchval": v}[method]

    try:
        with direct(database) as dc:
            meter = Meter(proxy)
            assert await read() == shaped("a")
            assert (meter.delta(MISS), meter.delta(HIT)) == (1, 0), meter.cache()

            dc.execute("update t set v = 'direct' where id = 1")
            meter.reset()
            assert await read() == shaped("a"), "the second read was not served from the cache"
            assert (meter.delta(MISS), meter.delta(HIT)) == (0, 1), meter.cache()

            await conn.execute("update t set v = $1 where id = $2", "proxy", 1, timeout=TIMEOUT)
            assert await read() == shaped("proxy")
            assert await read() == shaped("proxy")
            # the connection is still in step: a transaction and a plain query work
            async with conn.transaction():
                assert await conn.fetchval("select count(*) from t", timeout=TIMEOUT) == 3
            assert await conn.fetchval("select 41 + 1", timeout=TIMEOUT) == 42
    finally:
        await conn.close(timeout=TIMEOUT)


async def test_asyncpg_fetchrow_of_several_rows(proxy: ProxyProcess, database: str) -> None:
    """fetchrow on a query with several rows is a row-limited Execute: it must give the
    first row (a PortalSuspended, emulated on a hit), and fetch the whole set."""
    sql = "select id, v from t where id >= $1 order by id"
    full = [(1, "a"), (2, "b"), (3, "c")]
    conn = await asyncpg.connect(proxy.url(dbname=database), timeout=TIMEOUT)
    try:
        with direct(database) as dc:
            for _ in range(2):
                assert tuple(await conn.fetchrow(sql, 1, timeout=TIMEOUT)) == (1, "a")
                assert await conn.fetchval(sql, 1, timeout=TIMEOUT) == 1
            for _ in range(2):
                assert [tuple(r) for r in await conn.fetch(sql, 1, timeout=TIMEOUT)] == full
            dc.execute("update t set v = v || '-direct'")  # invisible to the cache
            meter = Meter(proxy)
            assert [tuple(r) for r in await conn.fetch(sql, 1, timeout=TIMEOUT)] == full
            assert tuple(await conn.fetchrow(sql, 1, timeout=TIMEOUT)) == (1, "a")
            assert await conn.fetchval(sql, 1, timeout=TIMEOUT) == 1
            assert [tuple(r) for r in await conn.fetch(sql, 1, timeout=TIMEOUT)] == full
            assert meter.delta(HIT) == 4, meter.cache()

            await conn.execute("update t set v = 'p' || id", timeout=TIMEOUT)
            assert tuple(await conn.fetchrow(sql, 1, timeout=TIMEOUT)) == (1, "p1")
            assert [tuple(r) for r in await conn.fetch(sql, 1, timeout=TIMEOUT)] == [
                (1, "p1"), (2, "p2"), (3, "p3")
            ]  # fmt: skip
            assert tuple(await conn.fetchrow(sql, 1, timeout=TIMEOUT)) == (1, "p1")
            # a cursor (row-limited Executes inside a transaction) still pages correctly
            async with conn.transaction():
                cursor = await conn.cursor(sql, 1)
                assert [tuple(r) for r in await cursor.fetch(2)] == [(1, "p1"), (2, "p2")]
                assert [tuple(r) for r in await cursor.fetch(2)] == [(3, "p3")]
    finally:
        await conn.close(timeout=TIMEOUT)
