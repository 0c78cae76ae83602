"""Non-deterministic reads are never served from the cache (issue 4, point 5; DESIGN.md
invariant 4; PITFALLS D5, D6, D11, D12, E14).

Each read runs twice through a caching proxy and the test checks that Postgres executed it
twice where that can be observed -- `nextval` advances, `random()` differs, `now()` differs
across transactions, a row lock held elsewhere makes `FOR UPDATE NOWAIT` fail, an advisory
lock held by one session is refused to another, a catalog query sees a table created
directly, a volatile user function leaves one log row per call -- and that
`pgreactive_cache_queries_total{outcome="bypass",reason=...}` counted each read under the
reason the analyzer gives.  A user function declared IMMUTABLE is cacheable (the catalog
connection knows `provolatile`): that one is proven to be served from the cache.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import ProxyProcess, scrape
from tests.integration.cache_env import (
    Conn,
    Env,
    Result,
    cached,
    fetch,
    foreign_bump_retry,
    module_env,
    read,
)

# --- helpers (the shared kit is in cache_env.py) -------------------------------------------


def value(result: Result) -> bytes | None:
    """The single value of a one-row, one-column result."""
    assert result[0] == "ok", result
    rows = result[2]
    assert isinstance(rows, tuple) and len(rows) == 1 and len(rows[0]) == 1, result
    cell = rows[0][0]
    assert cell is None or isinstance(cell, bytes)
    return cell


def settle(proxy: ProxyProcess, conn: Conn) -> None:
    """Wait until the proxy has this database's catalog (after a whole-database invalidation
    it reloads it; reads meanwhile bypass as catalog_unknown/unknown_function)."""
    cached(proxy, conn, "select 'catalog loaded?' as probe")


# --- the module's database and proxy --------------------------------------------------------

SCHEMA = """
create table t_lock (id int primary key, x int not null);
insert into t_lock values (1, 10), (2, 20);
create table t_imm (id int primary key, x int not null);
insert into t_imm values (1, 1), (2, 2);
create table log_t (note text);
create sequence seq;
create function logit() returns int language plpgsql volatile
  as $$ begin insert into log_t values ('called'); return 1; end $$;
create function twice(int) returns int language sql immutable as 'select $1 * 2';
create function plus_one(int) returns int language sql stable as 'select $1 + 1';
create function coin() returns float8 language sql volatile as 'select random()';
"""


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    yield from module_env("pgr_bypass", SCHEMA)


@pytest.fixture
def conn(env: Env) -> Iterator[Conn]:
    with env.proxied() as c:
        settle(env.proxy, c)
        yield c


def read_twice(
    env: Env,
    conn: Conn,
    sql: str,
    params: tuple[object, ...] | None = None,
    between: Callable[[], object] | None = None,
) -> tuple[list[Result], list[str]]:
    results: list[Result] = []
    decided: list[str] = []
    for index in range(2):
        if index and between is not None:
            between()
        result, d = read(env.proxy, conn, sql, params)
        results.append(result)
        decided += d
    return results, decided


# --- now(), random(), nextval() ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("select now()", None),
        ("select current_timestamp", None),
        ("select now() where %t = 'x'", ("x",)),
        ("select x, now() from t_lock where id = 1", None),
    ],
)
def test_now_differs_across_transactions(
    env: Env, conn: Conn, sql: str, params: tuple[object, ...] | None
) -> None:
    results, decided = read_twice(
        env, conn, sql, params, between=lambda: conn.execute("select pg_sleep(0.01)")
    )
    assert results[0][0] == "ok" and results[0] != results[1], results
    assert decided == ["bypass:stable_function"] * 2


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("select random()", None),
        ("select random() * %t::int", ("1",)),
        ("select id from t_lock order by random() limit 1", None),
    ],
)
def test_random_is_evaluated_each_time(
    env: Env, conn: Conn, sql: str, params: tuple[object, ...] | None
) -> None:
    if "limit 1" in sql:  # one of two rows: observable only over several tries
        seen = set()
        for _ in range(40):
            result, decided = read(env.proxy, conn, sql, params)
            assert decided == ["bypass:volatile_function"]
            seen.add(value(result))
            if len(seen) == 2:
                break
        assert seen == {b"1", b"2"}
        return
    for _ in range(3):  # two equal doubles from random() are possible, just very unlikely
        results, decided = read_twice(env, conn, sql, params)
        assert decided == ["bypass:volatile_function"] * 2
        if results[0] != results[1]:
            return
    raise AssertionError(f"random() returned the same value three times in a row: {results}")


@pytest.mark.parametrize(
    ("sql", "params", "reason"),
    [
        # The analyzer sees which sequence a literal names: a read that writes it.
        ("select nextval('seq')", None, "writes"),
        # A bound name is not known: a volatile function.
        ("select nextval(%t)", ("seq",), "volatile_function"),
    ],
)
def test_nextval_advances(
    env: Env, conn: Conn, sql: str, params: tuple[object, ...] | None, reason: str
) -> None:
    results, decided = read_twice(env, conn, sql, params)
    first, second = (int(value(r) or b"") for r in results)
    assert second == first + 1
    assert decided == [f"bypass:{reason}"] * 2


def test_sequence_relation_is_read_again(env: Env, conn: Conn) -> None:
    """SELECT ... FROM <sequence> (relkind S): its value changes without DML (PITFALLS D12)."""
    with env.direct() as direct:
        results, decided = read_twice(
            env,
            conn,
            "select last_value, is_called from seq",
            between=lambda: direct.execute("select nextval('seq')"),
        )
    assert results[0] != results[1], results
    assert decided == ["bypass:relation_kind"] * 2


# --- locking clauses and advisory locks ------------------------------------------------------


@pytest.mark.parametrize(
    "clause", ["for update", "for no key update", "for share", "for key share"]
)
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_locking_read_sees_a_direct_change(
    env: Env, conn: Conn, clause: str, protocol: str
) -> None:
    if protocol == "simple":
        sql, params = f"select x from t_lock where id = 1 {clause}", None
    else:
        sql, params = f"select x from t_lock where id = %t::int {clause}", ("1",)
    with env.direct() as direct:
        results, decided = read_twice(
            env,
            conn,
            sql,
            params,
            between=lambda: direct.execute("update t_lock set x = x + 1 where id = 1"),
        )
    assert int(value(results[1]) or b"") == int(value(results[0]) or b"") + 1
    assert decided == ["bypass:locking_clause"] * 2


def test_for_update_nowait_runs_in_postgres(env: Env, conn: Conn) -> None:
    """The second FOR UPDATE NOWAIT meets a row lock held by a direct transaction: only
    Postgres can answer 55P03 (lock_not_available); a cached row would hide it."""
    sql = "select id, x from t_lock where id = 2 for update nowait"
    first, decided = read(env.proxy, conn, sql)
    assert first[0] == "ok"
    with env.direct() as direct, direct.transaction():
        direct.execute("select 1 from t_lock where id = 2 for update")
        second, more = read(env.proxy, conn, sql)
        nested, even_more = read(
            env.proxy, conn, "select x from (select id, x from t_lock for update nowait) s"
        )
    assert second == ("error", "55P03")
    assert nested == ("error", "55P03")
    assert decided + more + even_more == ["bypass:locking_clause"] * 3


def test_advisory_locks_are_taken_by_postgres(env: Env) -> None:
    key = int(uuid.uuid4().int % 2_000_000_000)
    lock, unlock = f"select pg_try_advisory_lock({key})", f"select pg_advisory_unlock({key})"
    with env.proxied() as one, env.proxied() as two, env.direct() as direct:
        settle(env.proxy, one)
        got: list[Result] = []
        decided: list[str] = []
        for conn, sql in ((one, lock), (two, lock), (one, unlock), (one, unlock), (two, lock)):
            result, d = read(env.proxy, conn, sql)
            got.append(result)
            decided += d
        held = direct.execute(
            "select count(*) from pg_locks where locktype = 'advisory' and objid = %s",
            (key,),
        ).fetchone()
        two.execute(unlock)
    assert [value(r) for r in got] == [b"t", b"f", b"t", b"f", b"t"]
    assert held == (1,)  # taken by `two` in the end, as Postgres says
    assert decided == ["bypass:volatile_function"] * 5


# --- catalogs --------------------------------------------------------------------------------


CATALOG_READS = [
    "select count(*) from pg_class where relname = {name}",
    "select count(*) from pg_catalog.pg_tables where tablename = {name}",
    "select count(*) from information_schema.tables where table_name = {name}",
]


@pytest.mark.parametrize("template", CATALOG_READS)
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_catalog_query_sees_a_table_created_directly(
    env: Env, conn: Conn, template: str, protocol: str
) -> None:
    name = f"pgr_t_{uuid.uuid4().hex[:12]}"
    if protocol == "simple":
        sql, params = template.format(name=f"'{name}'"), None
    else:
        sql, params = template.format(name="%t"), (name,)
    with env.direct() as direct:
        results, decided = read_twice(
            env, conn, sql, params, between=lambda: direct.execute(f"create table {name} ()")
        )
    assert [value(r) for r in results] == [b"0", b"1"]
    assert decided == ["bypass:system_catalog"] * 2


def test_statistics_view_is_read_again(env: Env, conn: Conn) -> None:
    name = f"pgr_app_{uuid.uuid4().hex[:12]}"
    sql = f"select count(*) from pg_stat_activity where application_name = '{name}'"
    first, decided = read(env.proxy, conn, sql)
    with env.direct(application_name=name):
        second, more = read(env.proxy, conn, sql)
    assert [value(first), value(second)] == [b"0", b"1"]
    assert decided + more == ["bypass:system_catalog"] * 2


# --- user functions ----------------------------------------------------------------------------


def test_volatile_user_function_runs_each_time_and_its_write_invalidates(
    env: Env, conn: Conn
) -> None:
    """`select logit()` inserts a log row: two calls, two rows.  The proxy cannot know what a
    volatile function writes, so the call invalidates the database: a cached read of the
    log table is fresh afterwards."""
    proxy = env.proxy
    count = "select count(*) from log_t"
    with env.direct() as direct:
        direct.execute("truncate log_t")
    conn.execute("delete from log_t")  # through the proxy: invalidates what it cached
    assert value(cached(proxy, conn, count)) == b"0"
    before = scrape(proxy)
    results, decided = read_twice(env, conn, "select logit()")
    after = scrape(proxy)
    assert [value(r) for r in results] == [b"1", b"1"]
    with env.direct() as direct:
        assert direct.execute("select count(*) from log_t").fetchone() == (2,)
    # After the first call the proxy reloads the catalog, so the second may find the
    # function's volatility unknown for a moment: either reason is right, never a hit.
    assert len(decided) == 2, decided
    assert set(decided) <= {"bypass:volatile_function", "bypass:unknown_function"}, decided
    key = f'pgreactive_invalidations_total{{database="{env.db}",reach="database"}}'
    assert after[key] - before.get(key, 0) == 2
    # The cached count must not come back: read until the proxy looks it up again (the
    # first reads bypass while the catalog reloads), the answer is the new count.
    for _ in range(60):
        result, d = read(proxy, conn, count)
        assert value(result) == b"2", (result, d)
        if d in (["hit"], ["miss"]):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the count was never looked up in the cache again")


def test_volatile_sql_function_is_not_cached(env: Env, conn: Conn) -> None:
    for _ in range(3):
        results, decided = read_twice(env, conn, "select coin()")
        assert len(decided) == 2
        assert set(decided) <= {"bypass:volatile_function", "bypass:unknown_function"}
        if results[0] != results[1]:
            return
        settle(env.proxy, conn)
    raise AssertionError("coin() returned the same value three times in a row")


def test_stable_user_function_is_not_cached(env: Env, conn: Conn) -> None:
    with env.direct() as direct:
        results, decided = read_twice(
            env,
            conn,
            "select plus_one(x) from t_lock where id = 1",
            between=lambda: direct.execute("update t_lock set x = x + 1 where id = 1"),
        )
    assert int(value(results[1]) or b"") == int(value(results[0]) or b"") + 1
    assert decided == ["bypass:stable_function"] * 2


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("select id, twice(x) from t_imm order by id", None),
        ("select id, twice(x) from t_imm where id >= %t::int order by id", ("0",)),
        ("select twice(21)", None),
    ],
)
def test_immutable_user_function_is_cacheable(
    env: Env, conn: Conn, sql: str, params: tuple[object, ...] | None
) -> None:
    """An IMMUTABLE user function is served from the cache: after a direct change the proxy
    still answers the old rows (only a cache can), until a write through the proxy."""
    proxy = env.proxy

    def scenario() -> None:
        conn.execute("update t_imm set x = id")  # through the proxy: a known start
        old = cached(proxy, conn, sql, params)
        with env.direct() as direct:
            direct.execute("update t_imm set x = x + 100")
            fresh = fetch(direct, sql, params)
        again, decided = read(proxy, conn, sql, params)
        assert decided == ["hit"] and again == old
        if "t_imm" in sql:
            assert fresh != old  # premise: Postgres has new rows now
            conn.execute("update t_imm set x = x where id = 1")  # a write through the proxy
            result, decided = read(proxy, conn, sql, params)
            assert result == fresh and decided == ["miss"], (result, decided)

    foreign_bump_retry(scenario)
