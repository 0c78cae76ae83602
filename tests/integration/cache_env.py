"""The small kit shared by the test_cache_*.py modules that run against a caching proxy.

Reading through the proxy with the cache decisions it counted (`fetch`, `read`, `cached`),
retrying a scenario that a foreign global-epoch bump spoiled (`foreign_bump_retry`), running
admin SQL directly (`admin`), clearing a database's keys from the proxy's Redis db (`forget`),
and a module-scoped database with a caching proxy in front of it (`Env`, `module_env`).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import redis

from cache.keys import global_epoch
from tests.conftest import (
    CACHE_REDIS_DB,
    PG_HOST,
    PG_PORT,
    ProxyProcess,
    dsn,
    key_namespace,
    proxy_namespace,
    scrape,
    start_caching_proxy,
)

Result = tuple[object, ...]
Conn = psycopg.Connection[tuple[object, ...]]
Params = tuple[object, ...] | None

_DECISION = re.compile(r'pgreactive_cache_queries_total\{outcome="(\w+)",reason="([^"]*)"\}')


def decisions(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """The cache decisions counted between two scrapes: 'hit', 'miss', 'bypass:<reason>'."""
    out: list[str] = []
    for key, value in after.items():
        match = _DECISION.fullmatch(key)
        if match:
            label = match[1] if match[1] != "bypass" else f"bypass:{match[2]}"
            out += [label] * round(value - before.get(key, 0.0))
    return sorted(out)


def connect(conninfo: str) -> Conn:
    # prepare_threshold=None: parameterised queries always use the unnamed statement.
    return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)


def fetch(
    conn: Conn,
    sql: str,
    params: Params = None,
    prepare: bool | None = None,
    *,
    typmod_and_format: bool = False,
) -> Result:
    """The raw answer: columns (name, type OID; with `typmod_and_format` also typmod and
    format), every value as the bytes of the DataRow, the command tag; or ("error", SQLSTATE)."""
    try:
        cur = conn.execute(sql, params, prepare=prepare, binary=False)
    except psycopg.Error as exc:
        return ("error", exc.sqlstate)
    res = cur.pgresult
    assert res is not None
    columns: tuple[tuple[object, ...], ...]
    if typmod_and_format:
        columns = tuple(
            (res.fname(i), res.ftype(i), res.fmod(i), res.fformat(i)) for i in range(res.nfields)
        )
    else:
        columns = tuple((res.fname(i), res.ftype(i)) for i in range(res.nfields))
    rows = tuple(tuple(res.get_value(r, c) for c in range(res.nfields)) for r in range(res.ntuples))
    return ("ok", columns, rows, res.command_status)


def read(
    proxy: ProxyProcess,
    conn: Conn,
    sql: str,
    params: Params = None,
    prepare: bool | None = None,
    *,
    typmod_and_format: bool = False,
) -> tuple[Result, list[str]]:
    """`fetch` through the proxy, with the cache decisions it made for it."""
    before = scrape(proxy)
    result = fetch(conn, sql, params, prepare, typmod_and_format=typmod_and_format)
    return result, decisions(before, scrape(proxy))


def cached(
    proxy: ProxyProcess,
    conn: Conn,
    sql: str,
    params: Params = None,
    prepare: bool | None = None,
    tries: int = 60,
    *,
    typmod_and_format: bool = False,
) -> Result:
    """Read until the proxy answers from its cache (fills are stored in the background, and a
    catalog reload makes a read bypass once); the answer of that hit."""
    seen: list[str] = []
    for _ in range(tries):
        result, decided = read(
            proxy, conn, sql, params, prepare, typmod_and_format=typmod_and_format
        )
        seen += decided
        if decided == ["hit"]:
            return result
        time.sleep(0.05)
    raise AssertionError(f"never served from the cache: {sql!r} {params!r}: {seen}")


def _global_epoch() -> bytes | None:
    with redis.Redis(host="127.0.0.1", port=6379, db=CACHE_REDIS_DB) as client:
        value = client.get(global_epoch(proxy_namespace()))
        return value if isinstance(value, bytes) else None


def foreign_bump_retry(scenario: Callable[[], None], tries: int = 3) -> None:
    """Run `scenario`; if an assertion failed while the global epoch moved (another caching
    proxy started on this Redis, which makes every entry unreachable), run it again."""
    for attempt in range(tries):
        epoch = _global_epoch()
        try:
            scenario()
            return
        except AssertionError:
            if attempt == tries - 1 or _global_epoch() == epoch:
                raise


def admin(sql: str, dbname: str = "test") -> None:
    with psycopg.connect(dsn(PG_HOST, PG_PORT, dbname=dbname), autocommit=True) as conn:
        conn.execute(sql)


def forget(db: str) -> None:
    """Delete the database's generation counters and entries from the proxy's Redis db (a
    unique database per run would otherwise leave its counters, which have no TTL)."""
    prefix = key_namespace(db).prefix
    with redis.Redis(host="127.0.0.1", port=6379, db=CACHE_REDIS_DB) as client:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)


# --- a module's database and proxy ----------------------------------------------------------


@dataclass(frozen=True)
class Env:
    proxy: ProxyProcess
    db: str

    def direct(self, **extra: str) -> Conn:
        return connect(dsn(PG_HOST, PG_PORT, dbname=self.db, **extra))

    def proxied(self) -> Conn:
        return connect(self.proxy.dsn(dbname=self.db))


def module_env(prefix: str, schema: str, *proxy_args: str) -> Iterator[Env]:
    """For a module-scoped fixture (`yield from`): a new database `<prefix>_<random>` holding
    `schema` and a caching proxy started with `proxy_args`; afterwards the proxy is stopped,
    the database dropped and its keys deleted from Redis."""
    db = f"{prefix}_{uuid.uuid4().hex[:10]}"
    proxy: ProxyProcess | None = None
    admin(f"create database {db}")
    try:
        admin(schema, db)
        proxy = start_caching_proxy(*proxy_args)
        yield Env(proxy, db)
    finally:
        if proxy is not None:
            proxy.stop()
        admin(f"drop database if exists {db} with (force)")
        forget(db)
