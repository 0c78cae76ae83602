"""The upstream never sees a state the client could not have caused (issue 9 §1, invariant 8).

After anything the proxy answers from the cache, the upstream session is as Postgres would be
had it received the client's own messages: no implicit transaction left open (so no lock that
makes DDL wait), and the statements and portals the client believes exist are the ones that
exist upstream.  Each case is checked against Postgres directly where the client can see the
difference, and against `pg_stat_activity`/`pg_locks` (upstream_state.py) where it cannot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT, ProxyProcess, dsn, scrape
from tests.integration import wire
from tests.integration.cache_env import Env, decisions, module_env
from tests.integration.upstream_state import assert_upstream_idle

SCHEMA = """
create table tab1 (a int primary key, b int);
insert into tab1 values (1, 10), (2, 20);
create table gone (a int primary key);
insert into gone values (1);
"""


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    yield from module_env("pgr_upstate", SCHEMA)


def _url(host: str, port: int, db: str) -> str:
    return f"postgresql://postgres@{host}:{port}/{db}"


async def _alter_after_hits(proxy: ProxyProcess, db: str, column: str) -> None:
    """asyncpg's pool: two connections read the same row (the second is a hit: asyncpg
    prepares with Parse/Describe/Flush, then Bind/Execute/Sync), then DDL on the table must
    not wait for either (lock_timeout makes a wait an error instead of a hang)."""
    pool = await asyncpg.create_pool(_url(proxy.host, proxy.port, db), min_size=2, max_size=2)
    try:
        async with pool.acquire() as c1, pool.acquire() as c2:
            for _ in range(3):
                assert await c1.fetchrow("SELECT * FROM tab1 WHERE a = 1") is not None
                assert await c2.fetchrow("SELECT * FROM tab1 WHERE a = 1") is not None
            admin = await asyncpg.connect(_url(PG_HOST, PG_PORT, db))
            try:
                await admin.execute("SET lock_timeout = '1s'")
                await admin.execute(f"ALTER TABLE tab1 ALTER COLUMN {column} SET DATA TYPE bigint")
            finally:
                await admin.close()
    finally:
        await pool.close()


def test_ddl_does_not_wait_for_a_hit_connection(env: Env) -> None:
    before = scrape(env.proxy)
    asyncio.run(_alter_after_hits(env.proxy, env.db, "b"))
    assert "hit" in decisions(before, scrape(env.proxy))  # the case was really a hit


def _raw(env: Env) -> wire.RawClient:
    client = wire.RawClient(env.proxy.host, env.proxy.port)
    assert client.login(database=env.db).ok
    return client


def _direct_raw(env: Env) -> wire.RawClient:
    client = wire.RawClient(PG_HOST, PG_PORT)
    assert client.login(database=env.db).ok
    return client


def _tags(messages: list[tuple[bytes, bytes]]) -> list[str]:
    out = []
    for tag, payload in messages:
        if tag == b"E":
            out.append("E:" + wire.error_fields(payload)["C"])
        elif tag == b"D":
            out.append("D:" + "|".join(str(v) for v in wire.rows([(tag, payload)])[0]))
        elif tag == b"C":
            out.append("C:" + payload.rstrip(b"\x00").decode())
        else:
            out.append(tag.decode())
    return out


def _both(env: Env, script: list[tuple[bytes, bytes]]) -> tuple[list[str], list[str]]:
    """Run `script` ((bytes to send, tag to read up to)...) through the proxy and directly,
    each on a new connection; the replies, as tags with rows, error codes and commands."""
    results = []
    for connect in (_raw, _direct_raw):
        with connect(env) as client:
            seen: list[str] = []
            for data, until in script:
                client.send(data)
                seen += _tags(client.read_until(until))
            results.append(seen)
    return results[0], results[1]


def test_extended_hit_after_a_flushed_parse_leaves_no_open_transaction(env: Env) -> None:
    sql = "SELECT b FROM tab1 WHERE a = 2"
    warm = wire.parse("", sql) + wire.bind() + wire.execute() + wire.sync()
    with _raw(env) as client:
        for _ in range(3):  # until it is a hit
            client.send(warm)
            client.read_until(b"Z")
    before = scrape(env.proxy)
    script = [
        (wire.parse("s1", sql) + wire.describe("S", "s1") + wire.flush(), b"T"),
        (wire.bind("", "s1") + wire.execute() + wire.sync(), b"Z"),
    ]
    with _raw(env) as client:
        seen = []
        for data, until in script:
            client.send(data)
            seen += _tags(client.read_until(until))
        assert "hit" in decisions(before, scrape(env.proxy))
        assert_upstream_idle([env.proxy], settle=0)  # while the client stays connected
    with _direct_raw(env) as client:
        direct = []
        for data, until in script:
            client.send(data)
            direct += _tags(client.read_until(until))
    assert seen == direct


def test_simple_query_hit_destroys_the_unnamed_statement_upstream_too(env: Env) -> None:
    sql = "SELECT b FROM tab1 WHERE a = 1"
    with _raw(env) as client:
        for _ in range(3):
            client.simple_query(sql)
    before = scrape(env.proxy)
    script = [
        (wire.parse("", "SELECT 1") + wire.sync(), b"Z"),
        (wire.query(sql), b"Z"),  # a hit through the proxy
        (wire.bind() + wire.execute() + wire.sync(), b"Z"),  # Postgres: 26000
    ]
    proxied, direct = _both(env, script)
    assert "hit" in decisions(before, scrape(env.proxy))
    assert proxied == direct
    assert "E:26000" in direct


def test_portal_of_a_flush_answered_hit_exists_when_used(env: Env) -> None:
    sql = "SELECT a, b FROM tab1 ORDER BY a"
    with _raw(env) as client:
        for _ in range(3):
            client.send(wire.parse("", sql) + wire.bind() + wire.describe() + wire.execute()
                        + wire.sync())
            client.read_until(b"Z")
    before = scrape(env.proxy)
    script = [
        (wire.parse("", sql) + wire.bind() + wire.describe() + wire.execute() + wire.flush(),
         b"C"),
        # The portal ran to its end: Describe describes it, Execute returns no more rows.
        (wire.describe() + wire.execute() + wire.close("P") + wire.sync(), b"Z"),
    ]
    proxied, direct = _both(env, script)
    assert "hit" in decisions(before, scrape(env.proxy))
    assert proxied == direct


def test_the_fixture_sees_an_unsynced_parse() -> None:
    """The upstream-state check fails on a deliberately unsynced Parse: a client's own Parse
    and Flush without a Sync leave the backend in an implicit transaction holding a lock."""
    from tests.conftest import start_proxy

    proxy = start_proxy("--no-cache")
    try:
        with wire.RawClient(proxy.host, proxy.port) as client:
            assert client.login().ok
            client.send(wire.parse("", "SELECT * FROM pg_class") + wire.flush())
            assert client.recv_message()[0] == b"1"
            with pytest.raises(AssertionError, match="AccessShareLock"):
                assert_upstream_idle([proxy], settle=0.5)
            client.send(wire.sync())
            client.read_until(b"Z")
            assert_upstream_idle([proxy])
    finally:
        proxy.stop()


def test_psycopg_default_reads_leave_nothing_held(env: Env) -> None:
    with psycopg.connect(env.proxy.dsn(dbname=env.db), autocommit=True) as conn:
        for _ in range(5):
            conn.execute("SELECT b FROM tab1 WHERE a = %s", (1,)).fetchall()
            conn.execute("SELECT b FROM tab1 WHERE a = 1").fetchall()
        assert_upstream_idle([env.proxy], settle=0)
    with psycopg.connect(dsn(PG_HOST, PG_PORT, dbname=env.db), autocommit=True) as admin:
        admin.execute("SET lock_timeout = '1s'")
        admin.execute("ALTER TABLE tab1 ADD COLUMN IF NOT EXISTS c int")


def test_discard_plans_keeps_a_deferred_statement(env: Env) -> None:
    """DISCARD PLANS drops cached plans, not prepared statements: a statement whose Parse a
    hit deferred must still reach Postgres before its next Bind."""
    sql = "SELECT b FROM tab1 WHERE a = 2"
    unit = wire.parse("s9", sql) + wire.bind("", "s9") + wire.execute() + wire.sync()
    with _raw(env) as client:  # fill
        for _ in range(2):
            client.send(unit.replace(b"s9", b"s8"))
            client.read_until(b"Z")
            client.send(wire.close("S", "s8") + wire.sync())
            client.read_until(b"Z")
    script = [
        (unit, b"Z"),  # through the proxy: a hit, the Parse deferred
        (wire.query("DISCARD PLANS"), b"Z"),
        (wire.bind("", "s9") + wire.execute() + wire.sync(), b"Z"),
    ]
    before = scrape(env.proxy)
    proxied, direct = _both(env, script)
    assert "hit" in decisions(before, scrape(env.proxy))
    assert proxied == direct
    assert not any(tag.startswith("E:") for tag in direct)


def test_deallocate_of_a_deferred_statement_whose_parse_now_fails_does_not_hang(
    env: Env,
) -> None:
    """`DEALLOCATE s` of a statement whose Parse a hit deferred sends that Parse first; if it
    now fails (the table is gone), Postgres must not be left skipping the DEALLOCATE until a
    Sync that never comes: the client gets an answer and its session goes on."""
    from tests.integration.cache_env import admin

    sql = "SELECT a FROM gone WHERE a = 1"
    unit = wire.parse("s6", sql) + wire.bind("", "s6") + wire.execute() + wire.sync()
    with _raw(env) as filler:
        for _ in range(2):
            filler.send(unit.replace(b"s6", b"s5"))
            filler.read_until(b"Z")
            filler.send(wire.close("S", "s5") + wire.sync())
            filler.read_until(b"Z")
    before = scrape(env.proxy)
    with _raw(env) as client:
        client.send(unit)  # a hit: s6's Parse is deferred
        client.read_until(b"Z")
        assert "hit" in decisions(before, scrape(env.proxy))
        admin("drop table gone", env.db)
        reply = _tags(client.simple_query("DEALLOCATE s6"))  # answered, not hung
        assert reply[-1] == "Z"
        assert _tags(client.simple_query("SELECT 1"))[-2:] == ["C:SELECT 1", "Z"]
    assert_upstream_idle([env.proxy])
