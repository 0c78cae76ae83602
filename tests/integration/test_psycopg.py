"""psycopg 3 through the proxy: every test runs against Postgres directly and proxied.

The `target` fixture makes each test a differential pair: the direct run shows the test's
expectations are right, the proxied run that the proxy is transparent (invariant 1).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from decimal import Decimal

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from tests.integration.conftest import DIRECT, Target

TIMEOUT = 20.0  # hang guard only


def connect(target: Target, **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(target.dsn(), connect_timeout=10, **kwargs)  # type: ignore[arg-type]


# --- transactions -------------------------------------------------------------------


def test_autocommit_statements_commit_at_once(target: Target, scratch_table: str) -> None:
    with connect(target, autocommit=True) as conn, connect(DIRECT, autocommit=True) as other:
        assert conn.info.transaction_status is TransactionStatus.IDLE
        cur = conn.execute(f"insert into {scratch_table} values (1, 'one', 1.5)")
        assert cur.statusmessage == "INSERT 0 1"
        assert conn.info.transaction_status is TransactionStatus.IDLE
        assert other.execute(f"select name from {scratch_table}").fetchall() == [("one",)]
        with pytest.raises(errors.UniqueViolation) as exc:
            conn.execute(f"insert into {scratch_table} values (1, 'again', 0)")
        assert exc.value.sqlstate == "23505"
        assert conn.info.transaction_status is TransactionStatus.IDLE


def test_explicit_transactions_commit_and_rollback(target: Target, scratch_table: str) -> None:
    t = scratch_table
    with connect(target) as conn, connect(DIRECT, autocommit=True) as other:
        assert conn.info.transaction_status is TransactionStatus.IDLE
        conn.execute(f"insert into {t} values (1, 'kept', 1)")
        assert conn.info.transaction_status is TransactionStatus.INTRANS
        assert other.execute(f"select count(*) from {t}").fetchone() == (0,)
        conn.commit()
        assert conn.info.transaction_status is TransactionStatus.IDLE
        assert other.execute(f"select count(*) from {t}").fetchone() == (1,)

        conn.execute(f"insert into {t} values (2, 'dropped', 2)")
        conn.rollback()
        assert conn.info.transaction_status is TransactionStatus.IDLE
        assert other.execute(f"select array_agg(id) from {t}").fetchone() == ([1],)

        conn.execute(f"insert into {t} values (3, 'lost', 3)")
        with pytest.raises(errors.NotNullViolation) as exc:
            conn.execute(f"insert into {t} values (4, null, 4)")
        assert exc.value.sqlstate == "23502"
        assert conn.info.transaction_status is TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction) as exc2:
            conn.execute("select 1")
        assert exc2.value.sqlstate == "25P02"
        conn.rollback()
        assert conn.info.transaction_status is TransactionStatus.IDLE
        assert conn.execute(f"select array_agg(id) from {t}").fetchone() == ([1],)
        conn.rollback()


def test_transaction_blocks_and_savepoints(target: Target, scratch_table: str) -> None:
    t = scratch_table
    with connect(target, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(f"insert into {t} values (1, 'outer', 0)")
            assert conn.info.transaction_status is TransactionStatus.INTRANS
            with pytest.raises(errors.DivisionByZero), conn.transaction():
                conn.execute(f"insert into {t} values (2, 'inner', 0)")
                conn.execute("select 1/0")
            assert conn.info.transaction_status is TransactionStatus.INTRANS
            with conn.transaction():
                conn.execute(f"insert into {t} values (3, 'inner ok', 0)")
        assert conn.info.transaction_status is TransactionStatus.IDLE
        rows = conn.execute(f"select id from {t} order by id").fetchall()
        assert rows == [(1,), (3,)]


# --- server-side cursors --------------------------------------------------------------


def test_server_side_cursor_with_itersize(target: Target) -> None:
    with connect(target) as conn:
        with conn.cursor(name="pgr_big") as cur:
            cur.itersize = 97
            cur.execute(
                "select g, repeat('x', g % 100) from generate_series(1, 20000) g order by g"
            )
            assert [d.name for d in cur.description] == ["g", "repeat"]
            total = 0
            count = 0
            for g, text in cur:
                count += 1
                total += g
                assert len(text) == g % 100
        assert (count, total) == (20000, 20000 * 20001 // 2)

        with conn.cursor(name="pgr_scroll", scrollable=True) as cur:
            cur.execute("select g from generate_series(1, 100) g")
            assert cur.fetchmany(3) == [(1,), (2,), (3,)]
            cur.scroll(10)
            assert cur.fetchone() == (14,)
            cur.scroll(0, mode="absolute")
            assert cur.fetchone() == (1,)
            assert len(cur.fetchall()) == 99
        conn.commit()


def test_server_side_cursor_with_hold_and_error(target: Target) -> None:
    with connect(target, autocommit=True) as conn:
        with conn.cursor(name="pgr_held", withhold=True) as cur:
            cur.execute("select g from generate_series(1, 1000) g")
            assert cur.fetchmany(500)[-1] == (500,)
            assert cur.fetchall()[-1] == (1000,)
        with (
            pytest.raises(errors.DivisionByZero),
            conn.cursor(name="pgr_bad", withhold=True) as cur,
        ):
            cur.execute("select 1/(g - 5) from generate_series(1, 10) g")
            cur.fetchall()
        assert conn.info.transaction_status is TransactionStatus.IDLE
        assert conn.execute("select 'usable'").fetchone() == ("usable",)


# --- pipeline mode --------------------------------------------------------------------


def test_pipeline_many_statements(target: Target, scratch_table: str) -> None:
    t = scratch_table
    with connect(target, autocommit=True) as conn:
        with conn.pipeline():
            cursors = [
                conn.execute("select %s::int * 2, %s::text", (i, f"v{i}")) for i in range(300)
            ]
            with conn.cursor() as cur:
                cur.executemany(
                    f"insert into {t} (id, name, n) values (%s, %s, %s)",
                    [(i, f"row {i}", Decimal(i) / 4) for i in range(500)],
                )
            total = conn.execute(f"select count(*), sum(n) from {t}")
        assert [c.fetchone() for c in cursors] == [(i * 2, f"v{i}") for i in range(300)]
        assert total.fetchone() == (500, Decimal(sum(range(500))) / 4)
        assert conn.info.transaction_status is TransactionStatus.IDLE


def test_pipeline_error_aborts_the_rest_until_sync(target: Target, scratch_table: str) -> None:
    t = scratch_table
    with connect(target, autocommit=True) as conn:
        with conn.pipeline() as pipeline:
            before = [conn.execute("select %s::int", (i,)) for i in range(20)]
            conn.execute(f"insert into {t} values (1, 'in aborted segment', 0)")
            bad = conn.cursor()
            bad.execute("select 1/0")
            with pytest.raises(errors.DivisionByZero) as exc:
                bad.fetchone()  # a Flush request, then the error; the segment stays aborted
            assert exc.value.sqlstate == "22012"
            after = conn.cursor()
            after.execute("select 'never runs'")
            with pytest.raises(errors.PipelineAborted):
                pipeline.sync()
            later = conn.execute("select 'after sync'")
        assert [c.fetchone() for c in before] == [(i,) for i in range(20)]
        assert later.fetchone() == ("after sync",)
        assert conn.info.transaction_status is TransactionStatus.IDLE
        # The segment was one implicit transaction: the insert before the error is gone.
        assert conn.execute(f"select count(*) from {t}").fetchone() == (0,)
        assert conn.execute("select 'usable'").fetchone() == ("usable",)


def test_pipeline_in_transaction_with_error_then_rollback(target: Target) -> None:
    with connect(target) as conn:
        with pytest.raises(errors.UndefinedTable) as exc, conn.pipeline():
            conn.execute("create temp table pgr_pipe (x int)")
            conn.execute("insert into pgr_pipe values (1)")
            conn.execute("select * from pgr_no_such_table")
            conn.execute("insert into pgr_pipe values (2)")
        assert exc.value.sqlstate == "42P01"
        assert conn.info.transaction_status is TransactionStatus.INERROR
        conn.rollback()
        assert conn.info.transaction_status is TransactionStatus.IDLE
        with pytest.raises(errors.UndefinedTable):
            conn.execute("select * from pgr_pipe")
        conn.rollback()


# --- COPY -----------------------------------------------------------------------------


def test_copy_text_both_directions(target: Target) -> None:
    lines = [f"{i}\tname number {i} {'y' * (i % 37)}\t{i}.25\n" for i in range(60000)]
    payload = "".join(lines)
    assert len(payload) > 3_000_000
    with connect(target, autocommit=True) as conn:
        conn.execute("create temp table pgr_copy (id int primary key, name text, n numeric)")
        with conn.cursor() as cur:
            with cur.copy("copy pgr_copy from stdin") as copy:
                for start in range(0, len(payload), 65536):
                    copy.write(payload[start : start + 65536])
            assert cur.rowcount == 60000
            assert cur.statusmessage == "COPY 60000"
            out = bytearray()
            with cur.copy("copy (select * from pgr_copy order by id) to stdout") as copy:
                for chunk in copy:
                    out += chunk
        assert out.decode() == payload
        assert conn.info.transaction_status is TransactionStatus.IDLE


def test_copy_binary_rows_both_directions(target: Target) -> None:
    rows = [(i, f"t{i}", [i, -i], {"k": i}) for i in range(5000)]
    with connect(target, autocommit=True) as conn:
        conn.execute("create temp table pgr_bcopy (id int, t text, a int[], j jsonb)")
        with conn.cursor() as cur:
            with cur.copy("copy pgr_bcopy from stdin (format binary)") as copy:
                copy.set_types(["int4", "text", "int4[]", "jsonb"])
                for i, t, a, j in rows:
                    copy.write_row((i, t, a, Jsonb(j)))
            with cur.copy(
                "copy (select * from pgr_bcopy order by id) to stdout (format binary)"
            ) as copy:
                copy.set_types(["int4", "text", "int4[]", "jsonb"])
                back = list(copy.rows())
        assert back == rows


def test_copy_errors_leave_the_connection_usable(target: Target) -> None:
    with connect(target, autocommit=True) as conn:
        conn.execute("create temp table pgr_copy_err (id int, v text)")
        with conn.cursor() as cur:
            with pytest.raises(errors.InvalidTextRepresentation) as exc:  # noqa: SIM117
                with cur.copy("copy pgr_copy_err from stdin") as copy:
                    copy.write("1\tfine\n" * 1000)
                    copy.write("not-an-int\tbad\n")
            assert exc.value.sqlstate == "22P02"

            class Stop(Exception):
                pass

            with pytest.raises(Stop):  # noqa: SIM117 - the client aborts: CopyFail
                with cur.copy("copy pgr_copy_err from stdin") as copy:
                    copy.write("2\tabandoned\n")
                    raise Stop
            with pytest.raises(errors.UndefinedTable):
                cur.copy("copy pgr_no_such_table to stdout").__enter__()
        assert conn.info.transaction_status is TransactionStatus.IDLE
        assert conn.execute("select count(*) from pgr_copy_err").fetchone() == (0,)


# --- prepared statements --------------------------------------------------------------


def _prepared_names(conn: psycopg.Connection) -> set[str]:
    cur = conn.execute("select name from pg_prepared_statements", prepare=False)
    return {row[0] for row in cur.fetchall()}


def test_prepare_true_uses_named_statements(target: Target) -> None:
    with connect(target, autocommit=True) as conn:
        query = "select %s::int + 1, %s::text || '!'"
        for i in range(10):
            assert conn.execute(query, (i, str(i)), prepare=True).fetchone() == (i + 1, f"{i}!")
        names = _prepared_names(conn)
        assert len(names) == 1
        assert next(iter(names)).startswith("_pg3_")
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 10 / %s::int", (0,), prepare=True)
        assert conn.execute("select 10 / %s::int", (5,), prepare=True).fetchone() == (2,)


def test_prepare_threshold_zero_prepares_everything(target: Target) -> None:
    with connect(target, autocommit=True, prepare_threshold=0) as conn:
        for i in range(30):
            row = conn.execute("select %s::int8, %s::numeric", (i, Decimal(i) / 3)).fetchone()
            assert row == (i, Decimal(i) / 3)
            assert conn.execute("select %s::text", (f"s{i}",)).fetchone() == (f"s{i}",)
        assert len(_prepared_names(conn)) >= 2
        # DEALLOCATE ALL: psycopg notices the command tag and re-prepares afterwards.
        conn.execute("deallocate all")
        assert _prepared_names(conn) == set()
        for i in range(5):
            assert conn.execute("select %s::text", (f"again{i}",)).fetchone() == (f"again{i}",)
        with conn.transaction():
            conn.execute("select %s::int8, %s::numeric", (1, Decimal(1)))
        conn.execute("discard all")
        assert conn.execute("select %s::int8, %s::numeric", (7, Decimal(7))).fetchone() == (
            7,
            Decimal(7),
        )


# --- binary results -------------------------------------------------------------------

BINARY_VALUES: list[tuple[str, object]] = [
    ("42::int2", 42),
    ("'-2147483648'::int4", -2147483648),
    ("9223372036854775807::int8", 9223372036854775807),
    ("'héllo wörld'::text", "héllo wörld"),
    ("''::text", ""),
    ("null::text", None),
    ("true", True),
    ("1.5::float8", 1.5),
    ("'12345678901234567890.000000001'::numeric", Decimal("12345678901234567890.000000001")),
    ("'NaN'::numeric", None),  # compared specially
    ("'-0.00100'::numeric", Decimal("-0.00100")),
    (
        "'2024-02-29 12:34:56.789+05:30'::timestamptz",
        dt.datetime(2024, 2, 29, 7, 4, 56, 789000, tzinfo=dt.UTC),
    ),
    ("'2024-02-29 12:34:56'::timestamp", dt.datetime(2024, 2, 29, 12, 34, 56)),
    ("'1999-12-31'::date", dt.date(1999, 12, 31)),
    ("'1 day 02:03:04'::interval", dt.timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ("'\\x00ff10'::bytea", b"\x00\xff\x10"),
    ("'{1,2,NULL,4}'::int[]", [1, 2, None, 4]),
    ("'{{a,b},{c,d}}'::text[]", [["a", "b"], ["c", "d"]]),
    ('\'{"a": [1, 2, {"b": null}]}\'::jsonb', {"a": [1, 2, {"b": None}]}),
    ("'[1, \"x\"]'::json", [1, "x"]),
    (
        "'6f1c0f7e-3d2c-4b1a-9c55-2e4c7f3b9a10'::uuid",
        uuid.UUID("6f1c0f7e-3d2c-4b1a-9c55-2e4c7f3b9a10"),
    ),
]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_result_formats(target: Target, binary: bool) -> None:
    sql = "select " + ", ".join(expr for expr, _ in BINARY_VALUES)
    with connect(target, autocommit=True) as conn:
        conn.execute("set timezone = 'UTC'")
        with conn.cursor(binary=binary) as cur:
            cur.execute(sql)
            assert cur.pgresult is not None
            assert {cur.pgresult.fformat(i) for i in range(cur.pgresult.nfields)} == {
                1 if binary else 0
            }
            row = cur.fetchone()
    assert row is not None
    for (expr, expected), got in zip(BINARY_VALUES, row, strict=True):
        if expr == "'NaN'::numeric":
            assert isinstance(got, Decimal) and got.is_nan()
        else:
            assert got == expected, expr


def test_binary_parameters_round_trip(target: Target) -> None:
    values = [
        (1, "int8"),
        ("text with 'quotes' and \\ backslash", "text"),
        (Decimal("-1.000000000000000000001"), "numeric"),
        (dt.datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=dt.UTC), "timestamptz"),
        (b"\x00\x01\x02" * 1000, "bytea"),
        ([1.5, None, -2.25], "float8[]"),
        (Jsonb({"nested": {"list": [1, 2, 3]}}), "jsonb"),
    ]
    with connect(target, autocommit=True) as conn, conn.cursor(binary=True) as cur:
        conn.execute("set timezone = 'UTC'")
        for value, type_name in values:
            cur.execute(f"select %b::{type_name}", (value,))
            (got,) = cur.fetchone() or (None,)
            expected = value.obj if isinstance(value, Jsonb) else value
            assert got == expected, type_name
        many = cur.execute("select g, g::text, g * 1.5 from generate_series(1, 5000) g").fetchall()
        assert many[-1] == (5000, "5000", Decimal("7500.0"))


# --- cancel ---------------------------------------------------------------------------


def _cancel_when_running(conn: psycopg.Connection, pid: int, done: list[str]) -> None:
    """From another thread: wait until `pid` runs pg_sleep (seen directly), then cancel."""
    with connect(DIRECT, autocommit=True) as watcher:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            row = watcher.execute(
                "select state, query from pg_stat_activity where pid = %s", (pid,)
            ).fetchone()
            if row is not None and row[0] == "active" and "pg_sleep" in row[1]:
                conn.cancel_safe(timeout=TIMEOUT)
                done.append("cancelled")
                return
            time.sleep(0.01)
    done.append("never saw the query running")


def test_cancel_during_pg_sleep(target: Target) -> None:
    with connect(target, autocommit=True) as conn:
        done: list[str] = []
        thread = threading.Thread(
            target=_cancel_when_running, args=(conn, conn.info.backend_pid, done)
        )
        thread.start()
        try:
            with pytest.raises(errors.QueryCanceled) as exc:
                conn.execute("select pg_sleep(10)")
        finally:
            thread.join(TIMEOUT)
        assert done == ["cancelled"]
        assert exc.value.sqlstate == "57014"
        assert conn.info.transaction_status is TransactionStatus.IDLE
        assert conn.execute("select 'usable'").fetchone() == ("usable",)


def test_cancel_inside_transaction(target: Target) -> None:
    with connect(target) as conn:
        conn.execute("select 1")
        done: list[str] = []
        thread = threading.Thread(
            target=_cancel_when_running, args=(conn, conn.info.backend_pid, done)
        )
        thread.start()
        try:
            with pytest.raises(errors.QueryCanceled) as exc:
                conn.execute("select pg_sleep(10)")
        finally:
            thread.join(TIMEOUT)
        assert done == ["cancelled"]
        assert exc.value.sqlstate == "57014"
        assert conn.info.transaction_status is TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("select 'usable'").fetchone() == ("usable",)


# --- LISTEN/NOTIFY, BackendKeyData, ParameterStatus -----------------------------------


def test_listen_notify_while_idle(target: Target, unique_name: str) -> None:
    channel = unique_name
    with connect(target, autocommit=True) as listener, connect(target, autocommit=True) as sender:
        listener.execute(f"listen {channel}")
        sender.execute("select pg_notify(%s, %s)", (channel, "first"))
        with sender.transaction():
            sender.execute(f"notify {channel}, 'second'")
            sender.execute(f"notify {channel}")
        got = list(listener.notifies(timeout=TIMEOUT, stop_after=3))
        pid = sender.info.backend_pid
        assert [(n.channel, n.payload, n.pid) for n in got] == [
            (channel, "first", pid),
            (channel, "second", pid),
            (channel, "", pid),
        ]
        # A notification that arrives while the listener runs a query comes with its result.
        sender.execute("select pg_notify(%s, 'during')", (channel,))
        assert listener.execute("select 1").fetchone() == (1,)
        got = list(listener.notifies(timeout=TIMEOUT, stop_after=1))
        assert [(n.payload, n.pid) for n in got] == [("during", pid)]
        listener.execute(f"unlisten {channel}")


def test_backend_pid_matches_pg_stat_activity(target: Target, unique_name: str) -> None:
    with (
        connect(target, autocommit=True, application_name=unique_name) as conn,
        connect(DIRECT, autocommit=True) as direct,
    ):
        pid = conn.info.backend_pid
        assert conn.execute("select pg_backend_pid()").fetchone() == (pid,)
        rows = direct.execute(
            "select pid, application_name, datname, usename from pg_stat_activity"
            " where application_name = %s",
            (unique_name,),
        ).fetchall()
        assert rows == [(pid, unique_name, "test", "postgres")]


def test_parameter_status_follows_set(target: Target) -> None:
    with connect(target) as conn:
        info = conn.info
        assert info.parameter_status("server_version") is not None
        assert info.parameter_status("client_encoding") == "UTF8"
        conn.execute("set timezone = 'Asia/Tokyo'")
        conn.execute("set application_name = 'pgr param test'")
        conn.commit()
        assert info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert info.parameter_status("application_name") == "pgr param test"
        assert str(info.timezone) == "Asia/Tokyo"
        conn.execute("set datestyle = 'German'")
        assert info.parameter_status("DateStyle") == "German, DMY"
        conn.rollback()  # the rollback undoes the SET, and Postgres reports it
        assert info.parameter_status("DateStyle") == "ISO, MDY"
        conn.execute("set intervalstyle = 'iso_8601'")
        conn.commit()
        assert info.parameter_status("IntervalStyle") == "iso_8601"
        assert conn.execute("select '1 day'::interval::text").fetchone() == ("P1D",)
        conn.execute("reset all")
        conn.commit()
        assert info.parameter_status("IntervalStyle") == "postgres"
        assert info.parameter_status("application_name") == ""


# --- async ----------------------------------------------------------------------------


async def test_async_transactions_pipeline_and_notify(target: Target, unique_name: str) -> None:
    aconnect = psycopg.AsyncConnection.connect
    async with (
        await aconnect(target.dsn(), autocommit=True) as conn,
        await aconnect(target.dsn(), autocommit=True) as listener,
    ):
        await listener.execute(f"listen {unique_name}")
        async with conn.transaction():
            await conn.execute("create temp table pgr_async (x int)")
            await conn.execute("insert into pgr_async select generate_series(1, 100)")
            assert conn.info.transaction_status is TransactionStatus.INTRANS
            await conn.execute("select pg_notify(%s, 'from async')", (unique_name,))
        assert conn.info.transaction_status is TransactionStatus.IDLE
        async with conn.pipeline():
            curs = [await conn.execute("select %s::int", (i,)) for i in range(50)]
            total = await conn.execute("select sum(x) from pgr_async")
        assert [await c.fetchone() for c in curs] == [(i,) for i in range(50)]
        assert await total.fetchone() == (5050,)
        with pytest.raises(errors.DivisionByZero):
            await conn.execute("select 1/0")
        gen = listener.notifies(timeout=TIMEOUT, stop_after=1)
        got = [n async for n in gen]
        assert [(n.payload, n.pid) for n in got] == [("from async", conn.info.backend_pid)]


async def test_async_server_side_cursor(target: Target) -> None:
    async with await psycopg.AsyncConnection.connect(target.dsn()) as conn:
        async with conn.cursor(name="pgr_async_cur") as cur:
            cur.itersize = 50
            await cur.execute("select g, g::text from generate_series(1, 1234) g")
            rows = [row async for row in cur]
        assert len(rows) == 1234 and rows[-1] == (1234, "1234")
        await conn.rollback()


def test_json_text_and_jsonb_binary_agree(target: Target) -> None:
    doc = {"unicode": "ü€😀", "n": 1.25, "list": list(range(50))}
    with connect(target, autocommit=True) as conn:
        text = conn.execute("select %s::jsonb::text", (json.dumps(doc),)).fetchone()
        with conn.cursor(binary=True) as cur:
            binary = cur.execute("select %s::jsonb", (Jsonb(doc),)).fetchone()
    assert text is not None and binary is not None
    assert json.loads(text[0]) == binary[0] == doc
