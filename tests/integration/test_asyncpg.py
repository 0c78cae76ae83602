"""asyncpg through the proxy: every test runs against Postgres directly and proxied.

asyncpg speaks only the extended protocol with binary formats: named prepared statements
from its statement cache, pipelined Bind/Execute batches for `executemany`, portals read with
row limits (PortalSuspended) for cursors, COPY, and LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import ipaddress
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest
from asyncpg.types import Point, Range

from tests.integration.conftest import DIRECT, Target

TIMEOUT = 20.0  # hang guard only


@pytest.fixture
async def conn(target: Target) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(target.url(), timeout=TIMEOUT)
    try:
        yield c
    finally:
        await c.close(timeout=TIMEOUT)


# --- prepared statements and the statement cache ---------------------------------------


async def test_prepare_and_fetch_repeatedly(conn: asyncpg.Connection) -> None:
    stmt = await conn.prepare("select $1::int8 * 2 as doubled, $2::text as label")
    assert [a.name for a in stmt.get_attributes()] == ["doubled", "label"]
    assert [t.name for t in stmt.get_parameters()] == ["int8", "text"]
    for i in range(50):
        assert await stmt.fetchrow(i, f"n{i}") == (i * 2, f"n{i}")
    assert await stmt.fetchval(2**40, "big") == 2**41
    rows = await stmt.fetch(7, "x")
    assert [tuple(r) for r in rows] == [(14, "x")]
    many = await conn.prepare("select g, g::text from generate_series(1, $1::int) g")
    assert len(await many.fetch(10000)) == 10000
    assert await many.fetchrow(0) is None


async def test_statement_cache_uses_named_statements(conn: asyncpg.Connection) -> None:
    for i in range(20):
        assert await conn.fetchval("select $1::int + 100", i) == i + 100
    names = await conn.fetch(
        "select name from pg_prepared_statements where statement = $1", "select $1::int + 100"
    )
    assert len(names) == 1
    assert names[0]["name"].startswith("__asyncpg_stmt_")
    # An error in a cached statement leaves it usable.
    with pytest.raises(asyncpg.DivisionByZeroError) as exc:
        await conn.fetchval("select 1 / $1::int", 0)
    assert exc.value.sqlstate == "22012"
    assert await conn.fetchval("select 1 / $1::int", 1) == 1


async def test_statement_cache_after_deallocate_and_schema_change(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute("create temp table pgr_sc (a int)")
    await conn.execute("insert into pgr_sc values (1)")
    assert await conn.fetch("select * from pgr_sc") == [(1,)]
    await conn.execute("alter table pgr_sc add column b text default 'x'")
    # asyncpg re-prepares when the cached plan's result type changed (0A000 internally).
    rows = await conn.fetch("select * from pgr_sc")
    assert [tuple(r) for r in rows] == [(1, "x")]
    await conn.execute("deallocate all")
    await conn.reload_schema_state()
    assert await conn.fetchval("select count(*) from pgr_sc") == 1


# --- binary codecs ------------------------------------------------------------------------

ROUND_TRIP: list[tuple[str, object]] = [
    ("int2", -32768),
    ("int4", 2147483647),
    ("int8", -(2**63)),
    ("float4", 1.5),
    ("float8", -1.0e-300),
    ("numeric", Decimal("123456789012345678901234567890.123456789")),
    ("numeric", Decimal("-0.000000000001")),
    ("bool", False),
    ("text", "unicode ✓ ü 😀 and 'quotes'"),
    ("varchar", ""),
    ("bytea", bytes(range(256)) * 40),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("date", dt.date(2000, 2, 29)),
    ("timestamp", dt.datetime(1970, 1, 1, 0, 0, 0, 1)),
    ("timestamptz", dt.datetime(2024, 6, 30, 23, 59, 59, 999999, tzinfo=dt.UTC)),
    ("time", dt.time(12, 34, 56, 789)),
    ("interval", dt.timedelta(days=-3, seconds=7, microseconds=8)),
    ("jsonb", json.dumps({"a": [1, 2.5, None, {"b": "c"}]})),
    ("json", '{"raw": "kept as is"}'),
    ("int4[]", [1, None, 3]),
    ("text[]", ["a", "b,c", '"q"', None]),
    ("int8[]", [[1, 2], [3, 4]]),
    ("numeric[]", [Decimal("1.1"), Decimal("-2.2")]),
    ("uuid[]", [uuid.UUID(int=1), uuid.UUID(int=2)]),
    ("inet", ipaddress.ip_interface("192.168.0.1/24")),
    ("cidr", ipaddress.ip_network("10.0.0.0/8")),
    ("point", Point(1.5, -2.5)),
    ("int4range", Range(1, 10)),
    ("tstzrange", Range(dt.datetime(2020, 1, 1, tzinfo=dt.UTC), None)),
    ("bit varying", asyncpg.BitString("10101")),
    ("oid", 4294967295),
]


@pytest.mark.parametrize(
    ("type_name", "value"), ROUND_TRIP, ids=[f"{t}-{i}" for i, (t, _) in enumerate(ROUND_TRIP)]
)
async def test_binary_codec_round_trip(
    conn: asyncpg.Connection, type_name: str, value: object
) -> None:
    got = await conn.fetchval(f"select $1::{type_name}", value)
    if type_name == "jsonb":
        assert json.loads(got) == json.loads(str(value))
    else:
        assert got == value


async def test_many_types_in_one_row(conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow(
        """select 1::int8 as i, 'NaN'::float8 as nan, 'infinity'::numeric as inf,
                  '2024-02-29 12:00:00+02'::timestamptz as ts, '1 mon 2 days'::interval as iv,
                  '\\xdeadbeef'::bytea as b, array[true, false, null] as bools,
                  row(1, 'two') as rec, null::int as nothing"""
    )
    assert row["i"] == 1
    assert row["nan"] != row["nan"]  # NaN
    assert row["inf"] == Decimal("Infinity")
    assert row["ts"] == dt.datetime(2024, 2, 29, 10, tzinfo=dt.UTC)
    assert row["iv"] == dt.timedelta(days=32)  # asyncpg: 1 month = 30 days
    assert row["b"] == b"\xde\xad\xbe\xef"
    assert row["bools"] == [True, False, None]
    assert tuple(row["rec"]) == (1, "two")
    assert row["nothing"] is None


async def test_custom_type_introspection_and_codec(
    conn: asyncpg.Connection, unique_name: str
) -> None:
    enum = f"{unique_name}_mood"
    await conn.execute(f"create type {enum} as enum ('sad', 'ok', 'happy')")
    try:
        # An enum asyncpg has never seen: it runs its type-introspection query first.
        assert await conn.fetchval(f"select 'happy'::{enum}") == "happy"
        assert await conn.fetchval(f"select $1::{enum}[]", ["ok", "sad"]) == ["ok", "sad"]
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        assert await conn.fetchval("select $1::jsonb", {"k": [1, 2]}) == {"k": [1, 2]}
    finally:
        await conn.execute(f"drop type {enum}")


# --- executemany ------------------------------------------------------------------------


async def test_executemany(conn: asyncpg.Connection) -> None:
    await conn.execute("create temp table pgr_many (id int primary key, name text, n numeric)")
    rows = [(i, f"name {i}", Decimal(i) / 8) for i in range(2000)]
    await conn.executemany("insert into pgr_many values ($1, $2, $3)", rows)
    assert await conn.fetchrow("select count(*), sum(n) from pgr_many") == (
        2000,
        Decimal(sum(range(2000))) / 8,
    )
    # A failing row in the middle of the batch: the whole batch is one implicit transaction.
    bad = [(i, f"again {i}", None) for i in range(5000, 5100)] + [(7, "duplicate", None)]
    bad += [(i, "after", None) for i in range(6000, 6050)]
    with pytest.raises(asyncpg.UniqueViolationError) as exc:
        await conn.executemany("insert into pgr_many values ($1, $2, $3)", bad)
    assert exc.value.sqlstate == "23505"
    assert await conn.fetchval("select count(*) from pgr_many") == 2000
    assert not conn.is_in_transaction()


async def test_executemany_inside_transaction_with_error(conn: asyncpg.Connection) -> None:
    await conn.execute("create temp table pgr_many_tx (id int primary key)")
    tx = conn.transaction()
    await tx.start()
    await conn.executemany("insert into pgr_many_tx values ($1)", [(i,) for i in range(100)])
    with pytest.raises(asyncpg.NotNullViolationError) as exc:
        await conn.executemany("insert into pgr_many_tx values ($1)", [(1000,), (None,)])
    assert exc.value.sqlstate == "23502"
    with pytest.raises(asyncpg.InFailedSQLTransactionError) as exc2:
        await conn.fetchval("select 1")
    assert exc2.value.sqlstate == "25P02"
    await tx.rollback()
    assert not conn.is_in_transaction()
    assert await conn.fetchval("select count(*) from pgr_many_tx") == 0


# --- cursors (Execute with a row limit → PortalSuspended) -------------------------------


async def test_cursor_iteration_with_prefetch(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        seen = []
        async for row in conn.cursor(
            "select g, repeat('z', g % 10) from generate_series(1, 3000) g", prefetch=77
        ):
            seen.append(row[0])
            assert len(row[1]) == row[0] % 10
        assert seen == list(range(1, 3001))


async def test_cursor_fetch_forward(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        cur = await conn.cursor("select g from generate_series(1, $1::int) g", 100)
        assert [r[0] for r in await cur.fetch(5)] == [1, 2, 3, 4, 5]
        assert await cur.forward(10) == 10
        assert (await cur.fetchrow())[0] == 16
        rest = await cur.fetch(1000)
        assert [r[0] for r in rest] == list(range(17, 101))
        assert await cur.fetch(10) == []
        assert await cur.fetchrow() is None


async def test_cursor_error_mid_portal(conn: asyncpg.Connection) -> None:
    tx = conn.transaction()
    await tx.start()
    cur = await conn.cursor("select 10 / (g - 50) from generate_series(1, 100) g")
    assert len(await cur.fetch(20)) == 20
    with pytest.raises(asyncpg.DivisionByZeroError) as exc:
        await cur.fetch(100)
    assert exc.value.sqlstate == "22012"
    await tx.rollback()
    assert await conn.fetchval("select 'usable'") == "usable"


# --- COPY -----------------------------------------------------------------------------


async def test_copy_records_to_table_and_from_query(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "create temp table pgr_acopy (id int, name text, ts timestamptz, tags text[])"
    )
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    records = [
        (i, f"name {i}" * (i % 5), base + dt.timedelta(seconds=i), [str(i), "t"])
        for i in range(30000)
    ]
    status = await conn.copy_records_to_table("pgr_acopy", records=records)
    assert status == "COPY 30000"
    assert await conn.fetchval("select count(*) from pgr_acopy") == 30000
    back = await conn.fetch("select * from pgr_acopy order by id")
    assert [tuple(r) for r in back] == records

    out = io.BytesIO()
    status = await conn.copy_from_query(
        "select id, name from pgr_acopy where id < $1 order by id", 1000, output=out, format="csv"
    )
    assert status == "COPY 1000"
    lines = out.getvalue().decode().splitlines()
    assert lines[0] == '0,""'
    assert lines[999] == "999," + "name 999" * 4

    out = io.BytesIO()
    status = await conn.copy_from_table("pgr_acopy", output=out, columns=["id"])
    assert status == "COPY 30000"
    assert len(out.getvalue().splitlines()) == 30000


async def test_copy_to_table_from_file_like_and_error(conn: asyncpg.Connection) -> None:
    await conn.execute("create temp table pgr_acopy2 (id int, v text)")
    data = "".join(f"{i}\tvalue {i}\n" for i in range(20000)).encode()
    assert await conn.copy_to_table("pgr_acopy2", source=io.BytesIO(data)) == "COPY 20000"
    with pytest.raises(asyncpg.InvalidTextRepresentationError) as exc:
        await conn.copy_to_table("pgr_acopy2", source=io.BytesIO(b"1\tok\nx\tbad\n"))
    assert exc.value.sqlstate == "22P02"
    assert await conn.fetchval("select count(*) from pgr_acopy2") == 20000


# --- LISTEN/NOTIFY --------------------------------------------------------------------


async def test_add_listener_receives_notify_while_idle(
    target: Target, conn: asyncpg.Connection, unique_name: str
) -> None:
    received: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()

    def on_notify(_c: object, pid: int, channel: str, payload: str) -> None:
        received.put_nowait((pid, channel, payload))

    await conn.add_listener(unique_name, on_notify)
    sender = await asyncpg.connect(target.url(), timeout=TIMEOUT)
    try:
        await sender.execute("select pg_notify($1, $2)", unique_name, "hello")
        async with sender.transaction():
            await sender.execute(f"notify {unique_name}, 'in transaction'")
        expected_pid = sender.get_server_pid()
        got = [await asyncio.wait_for(received.get(), TIMEOUT) for _ in range(2)]
        assert got == [
            (expected_pid, unique_name, "hello"),
            (expected_pid, unique_name, "in transaction"),
        ]
    finally:
        await sender.close()
    await conn.remove_listener(unique_name, on_notify)
    assert await conn.fetchval("select pg_backend_pid()") == conn.get_server_pid()


# --- transactions and errors ----------------------------------------------------------


async def test_error_inside_transaction_then_rollback(
    conn: asyncpg.Connection, unique_name: str
) -> None:
    await conn.execute("create temp table pgr_atx (id int primary key)")
    tx = conn.transaction()
    await tx.start()
    await conn.execute("insert into pgr_atx values (1)")
    assert conn.is_in_transaction()
    with pytest.raises(asyncpg.UndefinedTableError) as exc:
        await conn.fetch("select * from pgr_no_such_table")
    assert exc.value.sqlstate == "42P01"
    with pytest.raises(asyncpg.InFailedSQLTransactionError):
        await conn.fetchval("select 1")
    await tx.rollback()
    assert not conn.is_in_transaction()
    assert await conn.fetchval("select count(*) from pgr_atx") == 0

    with pytest.raises(asyncpg.DivisionByZeroError):
        async with conn.transaction():
            await conn.execute("insert into pgr_atx values (2)")
            async with conn.transaction():  # a savepoint
                await conn.execute("insert into pgr_atx values (3)")
            await conn.fetchval("select 1/0")
    assert await conn.fetchval("select count(*) from pgr_atx") == 0

    try:
        async with conn.transaction(isolation="serializable", readonly=True):
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError) as exc2:
                async with conn.transaction():
                    await conn.execute(f"create table {unique_name} (x int)")
            assert exc2.value.sqlstate == "25006"
            assert await conn.fetchval("show transaction_isolation") == "serializable"
    finally:
        await conn.execute(f"drop table if exists {unique_name}")


async def test_cancel_via_task_cancellation(target: Target, conn: asyncpg.Connection) -> None:
    await conn.execute("create temp table pgr_cancel (x int)")
    pid = conn.get_server_pid()
    task = asyncio.create_task(conn.execute("insert into pgr_cancel select 1 from pg_sleep(10)"))
    watcher = await asyncpg.connect(DIRECT.url(), timeout=TIMEOUT)
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                state = await watcher.fetchval(
                    "select state from pg_stat_activity where pid = $1 and query like '%pg_sleep%'",
                    pid,
                )
                if state == "active":
                    break
                await asyncio.sleep(0.01)
    finally:
        await watcher.close()
    task.cancel()  # asyncpg sends a CancelRequest, then waits for the connection to settle
    with pytest.raises(asyncio.CancelledError):
        await task
    # Had the cancel not reached Postgres, the insert would have completed.
    assert await conn.fetchval("select count(*) from pgr_cancel") == 0
    assert not conn.is_in_transaction()


async def test_server_pid_and_parameter_status(conn: asyncpg.Connection) -> None:
    assert await conn.fetchval("select pg_backend_pid()") == conn.get_server_pid()
    settings = conn.get_settings()
    assert settings.client_encoding == "UTF8"
    await conn.execute("set application_name = 'pgr asyncpg'")
    assert conn.get_settings().application_name == "pgr asyncpg"
    await conn.execute("set timezone = 'America/New_York'")
    assert conn.get_settings().TimeZone == "America/New_York"
    ts = await conn.fetchval("select '2024-01-01 00:00:00'::timestamptz")
    assert ts == dt.datetime(2024, 1, 1, 5, tzinfo=dt.UTC)


async def test_pool_concurrent_queries(target: Target) -> None:
    async with asyncpg.create_pool(target.url(), min_size=2, max_size=4, timeout=TIMEOUT) as pool:

        async def work(i: int) -> int:
            async with pool.acquire() as c, c.transaction():
                await c.execute("set local application_name = 'pgr pool'")
                return await c.fetchval("select sum(g) from generate_series(1, $1::int) g", i)

        results = await asyncio.wait_for(asyncio.gather(*(work(i) for i in range(1, 41))), TIMEOUT)
    assert results == [i * (i + 1) // 2 for i in range(1, 41)]
