"""In-flight marks are written before a commit reaches Postgres (invariant 9, issue 9 point 3).

The commit is held inside Postgres, deterministically, by a deferred constraint trigger that
waits for an advisory lock the test holds: while it waits, the commit is not visible yet and
the writer has no answer, and the write's counters must already be marked in flight in
Redis.  Once the lock is released and the writer has its answer, the marks are gone (ended
by the confirming invalidation).  Shapes: COMMIT of an explicit transaction, an autocommit
simple Query, an autocommit extended-protocol write (psycopg), asyncpg's row-limited Execute.
The stress test (`test_cache_stress.py`) checks the outcome: no read goes backwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
import redis.asyncio as aioredis

from tests.conftest import (
    CACHE_REDIS_DB,
    PG_DB,
    PG_HOST,
    PG_PORT,
    ProxyProcess,
    dsn,
    key_namespace,
    start_caching_proxy,
)

LOCK = 4242_0009
GUARD = 10.0  # seconds: only a hang guard


@pytest.fixture(scope="module")
def table() -> Iterator[str]:
    name = f"pgr_inflight_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 0)")
        conn.execute(
            f"CREATE FUNCTION {name}_wait() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$ BEGIN PERFORM pg_advisory_xact_lock({LOCK}); RETURN NULL; END $$"
        )
        conn.execute(
            f"CREATE CONSTRAINT TRIGGER {name}_at_commit AFTER UPDATE ON {name}"
            f" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}_wait()"
        )
    try:
        yield name
    finally:
        with psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            conn.execute(f"DROP FUNCTION IF EXISTS {name}_wait()")


@pytest.fixture(scope="module")
def proxy(table: str) -> Iterator[ProxyProcess]:
    p = start_caching_proxy()
    try:
        yield p
    finally:
        p.stop()


async def _marks(client: aioredis.Redis) -> int:
    """In-flight marks in the sets of this test's database."""
    ns = key_namespace(PG_DB)
    pattern = "inflight:" + ns.prefix.replace("[", "\\[") + "*"
    count = 0
    async for key in client.scan_iter(match=pattern):
        count += int(await client.zcard(key))
    return count


async def _write(proxy: ProxyProcess, table: str, shape: str) -> None:
    sql = f"UPDATE {table} SET v = v + 1 WHERE id = "
    if shape == "asyncpg":
        conn = await asyncpg.connect(proxy.url())
        try:
            await conn.fetchval(sql + "$1 RETURNING v", 1)  # Execute with max_rows = 1
        finally:
            await conn.close()
        return
    aconn: Any = await psycopg.AsyncConnection.connect(proxy.dsn(), autocommit=True)
    try:
        if shape == "explicit":
            await aconn.execute("BEGIN")
            await aconn.execute(sql + "%s", (1,))
            await aconn.execute("COMMIT")
        elif shape == "simple":
            await aconn.execute(sql + "1")
        else:
            await aconn.execute(sql + "%s", (1,), prepare=False)
    finally:
        await aconn.close()


@pytest.mark.parametrize("shape", ["explicit", "simple", "extended", "asyncpg"])
async def test_commit_is_marked_before_postgres_makes_it_visible(
    proxy: ProxyProcess, table: str, shape: str
) -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:6379/{CACHE_REDIS_DB}")
    locker = await psycopg.AsyncConnection.connect(dsn(PG_HOST, PG_PORT), autocommit=True)
    try:
        before = await _marks(client)
        await locker.execute(f"SELECT pg_advisory_lock({LOCK})")
        writer = asyncio.create_task(_write(proxy, table, shape))
        deadline = time.monotonic() + GUARD
        while await _marks(client) <= before:  # the commit waits for the lock meanwhile
            assert not writer.done(), "the write finished while the test held the lock"
            assert time.monotonic() < deadline, "no in-flight mark while the commit waited"
            await asyncio.sleep(0.01)
        assert not writer.done()
        cur = await locker.execute(f"SELECT v FROM {table} WHERE id = 1")
        value = (await cur.fetchone())[0]
        await locker.execute(f"SELECT pg_advisory_unlock({LOCK})")
        async with asyncio.timeout(GUARD):
            await writer
        cur = await locker.execute(f"SELECT v FROM {table} WHERE id = 1")
        assert (await cur.fetchone())[0] == value + 1  # it committed after the mark
        assert await _marks(client) == before  # and the confirmation ended the marks
    finally:
        await locker.close()
        await client.aclose()
