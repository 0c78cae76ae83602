"""The session's view of its settings follows SET/RESET/DISCARD, transactions and savepoints.

These run the proxy in-process (real sockets, real Postgres) so the test can look at the
session's `Settings` directly; the value the proxy believes is compared with what Postgres
itself says (`current_setting`) after every step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from proxy.config import Address, Config, UpstreamConfig
from proxy.server import Server
from proxy.session import ClientSession
from tests.conftest import PG_DB, PG_HOST, PG_PORT, PG_USER, dsn


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    config = Config(listen=Address("127.0.0.1", 0), upstream=UpstreamConfig(PG_HOST, PG_PORT))
    srv = Server(config)
    await srv.start()
    yield srv
    await srv.shutdown()


def _only_session(server: Server) -> ClientSession:
    (session,) = server.sessions
    return session


async def _connect(server: Server, **extra: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    host, port = server.bound_address().rsplit(":", 1)
    return await psycopg.AsyncConnection.connect(
        dsn(host, int(port), dbname=PG_DB, user=PG_USER, **extra), autocommit=True
    )


async def _agrees(
    conn: psycopg.AsyncConnection[tuple[object, ...]], server: Server, name: str
) -> str | None:
    cur = await conn.execute("select current_setting(%s, true)", (name,))
    row = await cur.fetchone()
    assert row is not None
    believed = _only_session(server).settings.get(name)
    actual = row[0]
    assert believed == actual, f"{name}: proxy believes {believed!r}, Postgres says {actual!r}"
    return believed


async def test_set_and_rollback_in_simple_queries(server: Server) -> None:
    conn = await _connect(server)
    async with conn:
        await conn.execute("set search_path = app, public")
        assert await _agrees(conn, server, "search_path") == "app, public"
        await conn.execute("begin; set search_path = other; rollback")
        assert await _agrees(conn, server, "search_path") == "app, public"
        await conn.execute("begin; set search_path = third; commit")
        assert await _agrees(conn, server, "search_path") == "third"
        await conn.execute("set app.tenant = '42'")
        assert await _agrees(conn, server, "app.tenant") == "42"


async def test_failed_implicit_transaction_undoes_set(server: Server) -> None:
    conn = await _connect(server)
    async with conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await conn.execute("set app.x = 'changed'; select 1/0")
        cur = await conn.execute("select current_setting('app.x', true)")
        assert (await cur.fetchone()) in [(None,), ("",)]
        assert _only_session(server).settings.get("app.x") is None


async def test_savepoints_and_set_local(server: Server) -> None:
    conn = await _connect(server)
    async with conn:
        async with conn.transaction():
            await conn.execute("set app.a = '1'")
            await conn.execute("savepoint s1")
            await conn.execute("set app.a = '2'")
            await conn.execute("set local app.b = 'local'")
            assert await _agrees(conn, server, "app.b") == "local"
            await conn.execute("rollback to savepoint s1")
            assert await _agrees(conn, server, "app.a") == "1"
        assert await _agrees(conn, server, "app.a") == "1"
        # SET LOCAL ended with the transaction: Postgres now says '' for the placeholder.
        cur = await conn.execute("select current_setting('app.b', true)")
        assert (await cur.fetchone()) == ("",)
        assert _only_session(server).settings.get("app.b") is None


async def test_extended_protocol_set_and_role(server: Server) -> None:
    conn = await _connect(server)
    async with conn:
        await conn.execute("set role pg_read_all_data", prepare=True)
        assert _only_session(server).settings.get("role") == "pg_read_all_data"
        await conn.execute("reset role", prepare=True)
        cur = await conn.execute("select current_user")
        assert (await cur.fetchone()) == (PG_USER,)
        await conn.execute("set timezone = 'Asia/Tokyo'", prepare=False)
        assert await _agrees(conn, server, "TimeZone") == "Asia/Tokyo"


async def test_startup_options_are_settings(server: Server) -> None:
    conn = await _connect(server, options="-c search_path=pg_temp,public")
    async with conn:
        assert await _agrees(conn, server, "search_path") == "pg_temp,public"
        await conn.execute("set search_path = x")
        await conn.execute("reset search_path")
        assert await _agrees(conn, server, "search_path") == "pg_temp,public"
