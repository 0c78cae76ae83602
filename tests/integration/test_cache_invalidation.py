"""Every write form invalidates (issue 4, acceptance point 2).

For each case: the tables are set up directly at :5432 in a database of the test's own; a
read through the caching proxy fills the cache and a second read is a hit (the hit counter
moves); then the write goes *through the proxy*; the next read through the proxy (on the same
and on a new session) must equal what a direct read returns.  Every case also checks that
the write really changed what the read returns -- otherwise it would prove nothing.

See ``test_cache_hits.py`` for why each test has its own database and the module its own
Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tests.conftest import ProxyProcess
from tests.integration.test_cache_hits import (
    HIT,
    Meter,
    caching_proxy,
    direct,
    fresh_database,
    proxied,
    throwaway_redis,
)

Outcome = tuple[Any, ...]


def outcome(conn: psycopg.Connection[Any], sql: str) -> Outcome:
    """What a read returns: column names and types, and rows -- or its SQLSTATE."""
    try:
        cur = conn.execute(sql)
    except psycopg.Error as exc:
        return ("error", exc.sqlstate)
    assert cur.description is not None
    return (
        [(d.name, d.type_code) for d in cur.description],
        cur.fetchall(),
        cur.statusmessage,
    )


Write = str | Callable[[psycopg.Connection[Any]], None]


@dataclass(frozen=True)
class Case:
    id: str
    setup: str  # run directly at :5432
    read: str  # read through the proxy (simple protocol) and directly
    write: Write  # through the proxy
    session: str = ""  # run on both connections first (e.g. a search_path)
    expect: Callable[[Outcome], bool] | None = None  # what the fresh read must look like


T = """
create table t (id int primary key, v text);
insert into t values (1, 'a'), (2, 'b'), (3, 'c');
"""
READ_T = "select id, v from t order by id"

PARENT_CHILD = """
create table parent (id int primary key, name text);
insert into parent values (1, 'p1'), (2, 'p2');
create table child (id int primary key, parent_id int
    references parent (id) on delete {action} on update {action}, note text);
insert into child values (10, 1, 'c10'), (11, 1, 'c11'), (20, 2, 'c20');
"""
READ_CHILD = "select id, parent_id, note from child order by id"

PARTITIONS = """
create table p (id int, v text) partition by range (id);
create table p1 partition of p for values from (0) to (100);
create table p2 partition of p for values from (100) to (200);
insert into p values (1, 'a'), (2, 'b'), (150, 'x');
"""

SCOPED = """
create table s (id int primary key, organization_id text, v text);
insert into s values (1, 'o1', 'a'), (2, 'o2', 'b'), (3, 'o1', 'c');
"""


def _copy_from(conn: psycopg.Connection[Any]) -> None:
    with conn.cursor().copy("copy t (id, v) from stdin") as copy:
        copy.write_row((4, "copied"))
        copy.write_row((5, "copied too"))


def _extended(conn: psycopg.Connection[Any]) -> None:
    conn.execute("update t set v = %s where id = %s", ("extended", 2))


def _prepared(conn: psycopg.Connection[Any]) -> None:
    conn.execute("update t set v = %s where id = %s", ("prepared", 2), prepare=True)


def _pipeline(conn: psycopg.Connection[Any]) -> None:
    with conn.pipeline():
        conn.execute("insert into t values (%s, %s)", (7, "piped"))
        conn.execute("delete from t where id = %s", (1,))


def _non_autocommit(conn: psycopg.Connection[Any]) -> None:
    conn.autocommit = False  # psycopg sends BEGIN; the commit() sends COMMIT
    conn.execute("update t set v = 'txn' where id = 3")
    conn.commit()
    conn.autocommit = True


def _has_column(name: str) -> Callable[[Outcome], bool]:
    return lambda out: out[0] != "error" and name in [c for c, _ in out[0]]


def _error(sqlstate: str) -> Callable[[Outcome], bool]:
    return lambda out: out == ("error", sqlstate)


CASES = [
    # --- DML ----------------------------------------------------------------------------
    Case("insert", T, READ_T, "insert into t values (4, 'd')"),
    Case("insert-select", T, READ_T, "insert into t select id + 10, v || '!' from t"),
    Case("update", T, READ_T, "update t set v = 'z' where id = 2"),
    Case("update-returning", T, READ_T, "update t set v = 'r' where id = 1 returning *"),
    Case("delete", T, READ_T, "delete from t where id = 1"),
    Case(
        "update-from-other-table",
        T + "create table src (id int, v text); insert into src values (3, 'from src');",
        READ_T,
        "update t set v = src.v from src where src.id = t.id",
    ),
    Case(
        "merge",
        T,
        READ_T,
        "merge into t using (values (1, 'merged'), (9, 'new')) as s(id, v) on t.id = s.id "
        "when matched then update set v = s.v when not matched then insert values (s.id, s.v)",
    ),
    Case(
        "upsert",
        T,
        READ_T,
        "insert into t values (2, 'upserted'), (8, 'h') "
        "on conflict (id) do update set v = excluded.v",
    ),
    Case("truncate", T, READ_T, "truncate t"),
    Case(
        "truncate-cascade",
        PARENT_CHILD.format(action="no action"),
        READ_CHILD,
        "truncate parent cascade",
    ),
    Case("copy-from-stdin", T, READ_T, _copy_from),
    Case(
        "writable-cte-select",
        T,
        READ_T,
        "with d as (delete from t where id = 2 returning id) select count(*) from d",
    ),
    Case(
        "writable-cte-insert-other",
        T + "create table log (id int, v text);",
        "select id, v from log order by id",
        "with u as (update t set v = 'u' where id = 1 returning id, v) "
        "insert into log select id, v from u",
    ),
    Case("explain-analyze-update", T, READ_T, "explain analyze update t set v = 'e' where id = 3"),
    Case("multi-statement-query", T, READ_T, "update t set v = 'm' where id = 1; select 1"),
    Case("extended-protocol", T, READ_T, _extended),
    Case("prepared-statement", T, READ_T, _prepared),
    Case("pipeline", T, READ_T, _pipeline),
    Case("begin-commit-by-driver", T, READ_T, _non_autocommit),
    Case("schema-qualified-write", T, READ_T, "update public.t set v = 'q' where id = 1"),
    Case(
        "quoted-mixed-case-name",
        'create table "Mixed" (id int, v text); insert into "Mixed" values (1, \'a\');',
        'select * from "Mixed" order by id',
        "update \"Mixed\" set v = 'M'",
    ),
    Case(
        "same-name-other-schema",
        T
        + "create schema s1; create table s1.t (id int, v text); insert into s1.t values (1, 'x');",
        "select id, v from s1.t order by id",
        "insert into s1.t values (2, 'y')",
    ),
    Case(
        "search-path-resolved-write",
        T
        + "create schema s2; create table s2.t (id int, v text); insert into s2.t values (1, 'x');",
        READ_T,
        "update t set v = 'via search_path'",
        session="set search_path = s2, public",
    ),
    # --- DDL ----------------------------------------------------------------------------
    Case(
        "select-into-shadows",  # s3.t is created ahead of public.t on the search_path
        T + "create schema s3;",
        READ_T,
        "select 1 as id, 'shadow' as v into s3.t",
        session="set search_path = s3, public",
    ),
    Case(
        "create-table-as-shadows",
        T + "create schema s4;",
        READ_T,
        "create table s4.t as select 42 as id, 'shadow' as v",
        session="set search_path = s4, public",
    ),
    Case(
        "alter-add-column",
        T,
        "select * from t order by id",
        "alter table t add column w int default 7",
        expect=_has_column("w"),
    ),
    Case(
        "alter-rename-column",
        T,
        "select * from t order by id",
        "alter table t rename column v to label",
        expect=_has_column("label"),
    ),
    Case("alter-drop-column", T, "select * from t order by id", "alter table t drop column v"),
    Case("alter-column-type", T, READ_T, "alter table t alter column id type bigint"),
    Case("drop-table", T, READ_T, "drop table t", expect=_error("42P01")),
    Case("rename-table", T, READ_T, "alter table t rename to t_old", expect=_error("42P01")),
    Case(
        "create-or-replace-view",
        T + "create view vw as select id, v from t;",
        "select * from vw order by id",
        "create or replace view vw as select id, upper(v) as v from t",
    ),
    Case(
        "refresh-materialized-view",
        T + "create materialized view mv as select id, v from t; update t set v = 'later';",
        "select * from mv order by id",
        "refresh materialized view mv",
    ),
    # --- what the SQL text does not show ------------------------------------------------
    Case(
        "partition-write-seen-by-parent",
        PARTITIONS,
        "select id, v from p order by id",
        "update p1 set v = 'z' where id = 1",
    ),
    Case(
        "partition-insert-seen-by-parent",
        PARTITIONS,
        "select id, v from p order by id",
        "insert into p2 values (160, 'y')",
    ),
    Case(
        "parent-write-seen-by-partition",
        PARTITIONS,
        "select id, v from p1 order by id",
        "update p set v = v || '!'",
    ),
    Case(
        "parent-insert-routed-to-partition",
        PARTITIONS,
        "select id, v from p2 order by id",
        "insert into p values (170, 'routed')",
    ),
    Case(
        "detach-partition",
        PARTITIONS,
        "select id, v from p order by id",
        "alter table p detach partition p2",
    ),
    Case(
        "inheritance-child-write-seen-by-parent",
        "create table base (id int, v text); create table kid () inherits (base);"
        "insert into base values (1, 'b'); insert into kid values (2, 'k');",
        "select id, v from base order by id",
        "insert into kid values (3, 'k2')",
    ),
    Case(
        "fk-cascade-delete-seen-by-child",
        PARENT_CHILD.format(action="cascade"),
        READ_CHILD,
        "delete from parent where id = 1",
    ),
    Case(
        "fk-cascade-update-seen-by-child",
        PARENT_CHILD.format(action="cascade"),
        READ_CHILD,
        "update parent set id = 3 where id = 2",
    ),
    Case(
        "fk-set-null-seen-by-child",
        PARENT_CHILD.format(action="set null"),
        READ_CHILD,
        "delete from parent where id = 2",
    ),
    Case(
        "fk-cascade-two-levels",
        PARENT_CHILD.format(action="cascade")
        + "create table grandchild (id int primary key, child_id int "
        "references child (id) on delete cascade);"
        "insert into grandchild values (100, 10), (101, 20);",
        "select id, child_id from grandchild order by id",
        "delete from parent where id = 1",
    ),
    Case(
        "trigger-written-table",
        T + "create table audit (id serial primary key, t_id int, op text);"
        "create function audit_t() returns trigger language plpgsql as $$ begin "
        "insert into audit (t_id, op) values (new.id, tg_op); return new; end $$;"
        "create trigger t_audit after insert or update on t "
        "for each row execute function audit_t();",
        "select t_id, op from audit order by id",
        "update t set v = 'audited' where id = 2",
    ),
    Case(
        "rule-written-table",
        T + "create table shadow (id int, v text);"
        "create rule t_shadow as on insert to t do also insert into shadow values (new.id, new.v);",
        "select id, v from shadow order by id",
        "insert into t values (5, 'ruled')",
    ),
    Case(
        "view-over-written-table",
        T + "create view vw as select id, upper(v) as v from t where id < 3;",
        "select * from vw order by id",
        "update t set v = 'viewed' where id = 1",
    ),
    Case(
        "view-over-view",
        T + "create view vw1 as select id, v from t; create view vw2 as select * from vw1 "
        "where id > 1;",
        "select * from vw2 order by id",
        "insert into t values (4, 'd')",
    ),
    Case(
        "view-joining-two-tables",
        T + "create table tag (t_id int, tag text); insert into tag values (1, 'x');"
        "create view tagged as select t.id, t.v, tag.tag from t join tag on tag.t_id = t.id;",
        "select * from tagged order by id",
        "insert into tag values (2, 'y')",
    ),
    Case(
        "write-through-updatable-view",
        T + "create view vw as select id, v from t;",
        READ_T,
        "update vw set v = 'through view' where id = 3",
    ),
    Case(
        "instead-of-trigger-view",
        T + "create view vw as select id, v from t;"
        "create function vw_ins() returns trigger language plpgsql as $$ begin "
        "insert into t values (new.id, new.v); return new; end $$;"
        "create trigger vw_ins instead of insert on vw for each row execute function vw_ins();",
        READ_T,
        "insert into vw values (6, 'instead')",
    ),
    Case(
        "do-block",
        T,
        READ_T,
        "do $$ begin update t set v = 'done' where id = 2; end $$",
    ),
    Case(
        "call-procedure",
        T + "create procedure bump() language sql as $$ update t set v = 'called' $$;",
        READ_T,
        "call bump()",
    ),
    Case(
        "volatile-function-in-select",
        T + "create function bump() returns int language sql volatile as "
        "$$ update t set v = 'fn' where id = 1 returning 1 $$;",
        READ_T,
        "select bump()",
    ),
    # --- scoped invalidation (organization_id) --------------------------------------------
    Case(
        "scoped-write-seen-by-same-scope",
        SCOPED,
        "select id, v from s where organization_id = 'o1' order by id",
        "update s set v = 'z' where organization_id = 'o1' and id = 1",
    ),
    Case(
        "scoped-write-seen-by-unscoped-read",
        SCOPED,
        "select id, organization_id, v from s order by id",
        "update s set v = 'z' where organization_id = 'o2'",
    ),
    Case(
        "unscoped-write-seen-by-scoped-read",
        SCOPED,
        "select id, v from s where organization_id = 'o1' order by id",
        "update s set v = 'z' where id = 3",
    ),
    Case(
        "row-moved-into-scope",
        SCOPED,
        "select id, v from s where organization_id = 'o1' order by id",
        "update s set organization_id = 'o1' where organization_id = 'o2'",
    ),
    Case(
        "scoped-insert",
        SCOPED,
        "select id, v from s where organization_id = 'o2' order by id",
        "insert into s values (4, 'o2', 'new')",
    ),
]


@pytest.fixture(scope="module")
def proxy() -> Iterator[ProxyProcess]:
    with throwaway_redis() as url:
        p = caching_proxy(url)
        try:
            yield p
        finally:
            p.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_write_through_proxy_invalidates(proxy: ProxyProcess, case: Case) -> None:
    with fresh_database(case.setup) as db, proxied(proxy, db) as pc, direct(db) as dc:
        for conn in (pc, dc):
            if case.session:
                conn.execute(case.session)
        before = outcome(dc, case.read)
        assert before[0] != "error", before
        assert outcome(pc, case.read) == before  # the miss fills the cache
        meter = Meter(proxy)
        assert outcome(pc, case.read) == before
        assert meter.delta(HIT) == 1, f"the warm-up read was not a hit: {meter.cache()}"

        meter.reset()
        if isinstance(case.write, str):
            pc.execute(case.write)
        else:
            case.write(pc)
        assert meter.invalidations() >= 1, meter.cache()

        expected = outcome(dc, case.read)
        assert expected != before, "the write did not change the read: the case proves nothing"
        if case.expect is not None:
            assert case.expect(expected), expected
        assert outcome(pc, case.read) == expected, "stale result after a write through the proxy"
        with proxied(proxy, db) as other:
            if case.session:
                other.execute(case.session)
            assert outcome(other, case.read) == expected
