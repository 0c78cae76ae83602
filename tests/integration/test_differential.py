"""Differential checks: the same statements, direct and through the proxy, must look the same.

Each case is a short list of steps run on one fresh autocommit connection, first directly
against Postgres, then through the pass-through proxy.  Three clients run every case:
psycopg with text results (a parameterless `execute` is a simple Query, so several
statements in one string work), psycopg with binary results (extended protocol throughout)
and asyncpg (named prepared statements and binary formats; a string of several statements
goes through its simple-protocol `execute`).  For every step the record holds the result
sets (column names and type OIDs, rows, command status, row count) or the error (SQLSTATE,
severity, message, detail, hint, position, context), the notices and warnings raised, the
transaction status and the reported session parameters.  The two records must be equal
(invariant 1, "Transparent"); each case also names the SQLSTATEs its direct run must show,
so a case that stopped testing what it says fails too.

Cases leave no trace: writes are rolled back, fail, or are undone by a later step.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.conftest import ProxyProcess
from tests.integration.conftest import DIRECT, Target, proxied

Step = str | tuple[str, tuple[Any, ...]]
REPORTED = ("TimeZone", "DateStyle", "IntervalStyle", "application_name", "is_superuser")


@dataclass(frozen=True)
class Case:
    id: str
    steps: tuple[Step, ...]
    expect: tuple[str, ...] = ()  # SQLSTATEs the direct psycopg text run must show


CASES = [
    Case("select-literal", ("select 1 as one",)),
    Case(
        "select-types",
        (
            "select 1::int2 a, 2::int8 b, 1.5::float8 c, 'x'::varchar(3) d, null::text e,"
            " true f, '2024-01-01'::date g, 12.50::numeric(6,2) h",
        ),
    ),
    Case("select-table", ("select * from {t} order by id",)),
    Case("select-param", (("select name, n from {t} where id = %s", (2,)),)),
    Case("zero-rows", ("select * from {t} where false",)),
    Case("many-rows", ("select g, md5(g::text) from generate_series(1, 5000) g",)),
    Case("one-big-value", ("select repeat('x', 1000000) as big, 1 as small",)),
    Case(
        "special-values",
        (
            "select 'NaN'::numeric, 'Infinity'::float8, '-0'::float8, 1e-300::float8,"
            " 0.1::numeric(20, 10), '\\x0001ff'::bytea, 'ü€😀' as u, octet_length('ü€😀')",
        ),
    ),
    Case(
        "json-and-arrays",
        (
            "select '{\"a\": {\"b\": [1, 2]}}'::jsonb -> 'a' -> 'b' ->> 1 as j,"
            " jsonb_build_object('k', 1, 'l', array[1, 2]) as o,"
            " array[1, 2, null] as a, '{{1,2},{3,4}}'::int[] as m, array['x', null] as t",
        ),
    ),
    Case("multi-statement", ("select 1 as a; select 2 as b, 3 as c",)),
    Case(
        "multi-statement-ddl-dml",
        (
            "create temp table pgr_d (x int); insert into pgr_d values (1), (2);"
            " select sum(x) from pgr_d; drop table pgr_d",
        ),
    ),
    Case(
        "implicit-transaction-fails-midway",
        (
            "insert into {t} values (10, 'ten', 0); select 1/0;"
            " insert into {t} values (11, 'eleven', 0)",
            "select count(*) from {t} where id >= 10",
        ),
        expect=("22012",),
    ),
    Case(
        "commit-inside-multi-statement",
        (
            "insert into {t} values (20, 'twenty', 0); commit; select 1/0",
            "select id, name from {t} where id = 20",
            "delete from {t} where id = 20",
        ),
        expect=("22012",),
    ),
    Case("syntax-error", ("selec 1",), expect=("42601",)),
    Case(
        "syntax-error-in-multi-statement",
        ("insert into {t} values (21, 'x', 0); selec 2", "select count(*) from {t}"),
        expect=("42601",),
    ),
    Case("undefined-table", ("select * from pgr_no_such_table",), expect=("42P01",)),
    Case("undefined-column", ("select nope from {t}",), expect=("42703",)),
    Case("undefined-function", ("select pgr_no_such_fn(1)",), expect=("42883",)),
    Case("division-by-zero", ("select 1/0",), expect=("22012",)),
    Case(
        "error-after-rows",
        ("select 10 / (3 - g) from generate_series(1, 5) g",),
        expect=("22012",),
    ),
    Case("unique-violation", ("insert into {t} values (1, 'dup', 0)",), expect=("23505",)),
    Case("not-null-violation", ("insert into {t} (id) values (50)",), expect=("23502",)),
    Case("invalid-text-representation", ("select 'abc'::int",), expect=("22P02",)),
    Case("invalid-text-parameter", (("select %s::int", ("abc",)),)),
    Case("numeric-out-of-range", ("select 2147483647::int + 1",), expect=("22003",)),
    Case(
        "raise-custom-sqlstate",
        (
            "do $$ begin raise exception 'boom %', 42 using detail = 'the detail',"
            " hint = 'the hint', errcode = '23514'; end $$",
        ),
        expect=("23514",),
    ),
    Case(
        "notices-and-warnings",
        (
            "do $$ begin raise notice 'n1'; raise warning 'w1'; raise info 'i1';"
            " raise debug 'not sent'; end $$",
            "drop table if exists pgr_never_there",
        ),
    ),
    Case(
        "permission-denied",
        (
            "set role {role}",
            "select current_user = session_user as same",
            "select * from {t}",
            "insert into {t} values (99, 'x', 0)",
            "reset role",
            "select current_user = session_user as same",
        ),
        expect=("42501",),
    ),
    Case(
        "permission-denied-in-transaction",
        (
            "begin",
            "set local role {role}",
            "insert into {t} values (99, 'x', 0)",
            "select 1",
            "rollback",
            "select current_user = session_user as same",
        ),
        expect=("42501", "25P02"),
    ),
    Case(
        "explicit-transaction-rolled-back",
        (
            "begin",
            "insert into {t} values (30, 'thirty', 3) returning *",
            "update {t} set n = n + 1 where id <= 2 returning id, n",
            "delete from {t} where id = 3 returning *",
            "select count(*), sum(n) from {t}",
            "rollback",
            "select count(*), sum(n) from {t}",
        ),
    ),
    Case(
        "failed-transaction-commit-is-rollback",
        ("begin", "select 1/0", "select 1", "commit", "select 'after'"),
        expect=("22012", "25P02"),
    ),
    Case(
        "savepoints",
        (
            "begin",
            "insert into {t} values (40, 'forty', 4)",
            "savepoint s1",
            "insert into {t} values (1, 'dup', 0)",
            "rollback to savepoint s1",
            "select id from {t} where id = 40",
            "release savepoint s1",
            "rollback",
        ),
        expect=("23505",),
    ),
    Case(
        "transaction-warnings",
        ("begin", "begin", "commit", "commit", "rollback"),
    ),
    Case(
        "deferred-constraint-fails-at-commit",
        (
            "create temp table pgr_def (id int unique deferrable initially deferred)",
            "begin",
            "insert into pgr_def values (1), (1)",
            "commit",
            "select count(*) from pgr_def",
            "drop table pgr_def",
        ),
        expect=("23505",),
    ),
    Case(
        "sql-prepare-execute",
        (
            "prepare pgr_p(int) as select $1 * 2 as twice",
            "execute pgr_p(21)",
            "deallocate pgr_p",
            "execute pgr_p(1)",
        ),
        expect=("26000",),
    ),
    Case(
        "sql-cursor",
        (
            "begin",
            "declare pgr_c cursor for select g from generate_series(1, 10) g",
            "fetch 3 from pgr_c",
            "move 2 in pgr_c",
            "fetch all from pgr_c",
            "close pgr_c",
            "fetch 1 from pgr_c",
            "rollback",
        ),
        expect=("34000",),
    ),
    Case(
        "set-timezone",
        (
            "set timezone = 'Pacific/Auckland'",
            "show timezone",
            "select '2024-01-01 00:00:00+00'::timestamptz",
            "reset timezone",
            "show timezone",
        ),
    ),
    Case(
        "set-datestyle-intervalstyle",
        (
            "set datestyle = 'SQL, DMY'",
            "select '2024-03-04'::date::text as d, '1 day 2 hours'::interval::text as i",
            "set intervalstyle = 'sql_standard'",
            "select '1 day 2 hours'::interval::text as i",
            "begin",
            "set application_name = 'pgr diff'",
            "rollback",
            "reset all",
        ),
    ),
    Case("empty-query", ("", "  ", "-- only a comment")),
    Case("update-no-rows", ("update {t} set name = 'x' where id = -1",)),
    Case(
        "insert-returning-then-delete",
        (
            "insert into {t} values (60, 'sixty', 6) returning id, name",
            "delete from {t} where id = 60 returning id",
        ),
    ),
    Case(
        "statement-timeout",
        ("set statement_timeout = '50ms'", "select pg_sleep(5)", "reset statement_timeout"),
        expect=("57014",),
    ),
    Case(
        "lock-table",
        (
            "begin",
            "lock table {t} in access exclusive mode nowait",
            "select count(*) from {t}",
            "rollback",
        ),
    ),
]


# --- recording what a client sees ---------------------------------------------------------


def _sql(step: Step, names: dict[str, str]) -> tuple[str, tuple[Any, ...] | None]:
    sql, params = step if isinstance(step, tuple) else (step, None)
    for key, value in names.items():
        sql = sql.replace("{" + key + "}", value)
    return sql, params


def _psycopg_error(exc: psycopg.Error) -> tuple[Any, ...]:
    d = exc.diag
    return (
        "error",
        type(exc).__name__,
        exc.sqlstate,
        d.severity_nonlocalized,
        d.message_primary,
        d.message_detail,
        d.message_hint,
        d.statement_position,
        d.context,
    )


def run_psycopg(target: Target, case: Case, names: dict[str, str], binary: bool) -> list[Any]:
    record: list[Any] = []
    notices: list[tuple[Any, ...]] = []
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        conn.add_notice_handler(
            lambda d: notices.append((d.severity_nonlocalized, d.sqlstate, d.message_primary))
        )
        for step in case.steps:
            sql, params = _sql(step, names)
            outcome: list[Any] = []
            try:
                with conn.cursor(binary=binary) as cur:
                    cur.execute(sql, params)
                    while True:
                        columns = (
                            None
                            if cur.description is None
                            else [(c.name, c.type_code) for c in cur.description]
                        )
                        rows = None if cur.description is None else repr(cur.fetchall())
                        outcome.append((columns, rows, cur.statusmessage, cur.rowcount))
                        if not cur.nextset():
                            break
            except psycopg.Error as exc:
                outcome.append(_psycopg_error(exc))
            record.append(
                (
                    sql,
                    outcome,
                    list(notices),
                    conn.info.transaction_status.name,
                    {p: conn.info.parameter_status(p) for p in REPORTED},
                )
            )
            notices.clear()
    return record


def _asyncpg_sql(sql: str) -> str:
    counter = iter(range(1, 100))
    return re.sub("%s", lambda _m: f"${next(counter)}", sql)


async def _run_asyncpg(target: Target, case: Case, names: dict[str, str]) -> list[Any]:
    record: list[Any] = []
    notices: list[tuple[Any, ...]] = []
    conn = await asyncpg.connect(target.url(), timeout=20)
    try:
        conn.add_log_listener(lambda _c, m: notices.append((m.severity_en, m.sqlstate, m.message)))
        for step in case.steps:
            sql, params = _sql(step, names)
            outcome: list[Any] = []
            several = ";" in sql.strip().rstrip(";")
            try:
                if several and not params:
                    outcome.append(("status", await conn.execute(sql)))
                else:
                    stmt = await conn.prepare(_asyncpg_sql(sql))
                    columns = [(a.name, a.type.oid) for a in stmt.get_attributes()]
                    rows = await stmt.fetch(*(params or ()))
                    outcome.append((columns, repr([tuple(r) for r in rows]), stmt.get_statusmsg()))
            except asyncpg.PostgresError as exc:
                outcome.append(("error", type(exc).__name__, exc.sqlstate, exc.as_dict()))
            except Exception as exc:  # client-side errors must match too
                outcome.append(("client error", type(exc).__name__, str(exc)))
            for _ in range(3):
                await asyncio.sleep(0)  # log listeners are called soon, not at once
            settings = conn.get_settings()
            record.append(
                (
                    sql,
                    outcome,
                    list(notices),
                    conn.is_in_transaction(),
                    {p: getattr(settings, p, None) for p in REPORTED},
                )
            )
            notices.clear()
    finally:
        await conn.close(timeout=20)
    return record


def run_asyncpg(target: Target, case: Case, names: dict[str, str]) -> list[Any]:
    return asyncio.run(_run_asyncpg(target, case, names))


RUNNERS: dict[str, Callable[[Target, Case, dict[str, str]], list[Any]]] = {
    "psycopg-text": lambda t, c, n: run_psycopg(t, c, n, binary=False),
    "psycopg-binary": lambda t, c, n: run_psycopg(t, c, n, binary=True),
    "asyncpg": run_asyncpg,
}


def _normal(step_record: Any) -> str:
    # A temporary schema is numbered by the backend's slot, which differs between sessions.
    return re.sub(r"pg_temp_\d+", "pg_temp_N", repr(step_record))


def _sqlstates(record: list[Any]) -> set[str]:
    states = set()
    for _sql_text, outcome, notices, *_ in record:
        for item in outcome:
            if item and item[0] == "error" and item[2]:
                states.add(item[2])
        for notice in notices:
            if notice[1]:
                states.add(notice[1])
    return states


# --- fixtures and the test -------------------------------------------------------------


@pytest.fixture(scope="module")
def names() -> Iterator[dict[str, str]]:
    """A seeded table and a role without privileges, shared by the cases."""
    suffix = uuid.uuid4().hex[:10]
    table, role = f"pgr_diff_{suffix}", f"pgr_diff_role_{suffix}"
    with psycopg.connect(DIRECT.dsn(), autocommit=True) as conn:
        conn.execute(f"create table {table} (id int primary key, name text not null, n numeric)")
        conn.execute(
            f"insert into {table} values (1, 'one', 1.0), (2, 'two', 2.5), (3, 'three', null)"
        )
        conn.execute(f"create role {role} nologin")
    try:
        yield {"t": table, "role": role}
    finally:
        with psycopg.connect(DIRECT.dsn(), autocommit=True) as conn:
            conn.execute(f"drop table if exists {table}")
            conn.execute(f"drop role if exists {role}")


@pytest.mark.parametrize("runner", list(RUNNERS))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_through_proxy(
    proxy: ProxyProcess, names: dict[str, str], case: Case, runner: str
) -> None:
    run = RUNNERS[runner]
    direct = run(DIRECT, case, names)
    through = run(proxied(proxy), case, names)
    if runner == "psycopg-text":
        missing = set(case.expect) - _sqlstates(direct)
        assert not missing, f"the case no longer produces {missing}: {direct}"
    for step, (want, got) in enumerate(zip(direct, through, strict=True)):
        assert _normal(got) == _normal(want), f"step {step} ({want[0]!r}) differs through the proxy"
    # Nothing the case did may outlive it.
    with psycopg.connect(DIRECT.dsn(), autocommit=True) as conn:
        rows = conn.execute(f"select id, name, n from {names['t']} order by id").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]
