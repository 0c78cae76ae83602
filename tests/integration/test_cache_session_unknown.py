"""Session state changed where the proxy cannot see it (issue 9 §2, invariant 3).

Settings and objects also change inside server-side code (`DO`, `CALL`, functions calling
`set_config`), and per-role / per-database defaults (`ALTER ROLE ... SET`) differ between
sessions without a word on the wire.  Each reproduction runs the same SQL in two sessions, X
(changed out of sight) and Y (plain), in both orders (Y fills the cache first; X reads first),
and compares every answer through the proxy with what the same session gets from Postgres
directly.  Then a whole-system property test: random sequences of SET/RESET/DO/CALL/temporary
objects in several sessions, each read compared byte for byte with its direct twin.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT, dsn, scrape
from tests.integration.cache_env import (
    Conn,
    Env,
    Result,
    admin,
    cached,
    connect,
    decisions,
    fetch,
    module_env,
)

SCHEMA = r"""
create schema s1;
create schema s2;
create table s1.sp (v text);
create table s2.sp (v text);
insert into s1.sp values ('in s1');
insert into s2.sp values ('in s2');
create table public.sp (v text);
insert into public.sp values ('in public');
create table bt (id int primary key, b bytea, f float8, n int);
insert into bt values (1, '\x00ff41', 0.1::float8 + 0.2, null);
create function set_path(p text) returns void language plpgsql
  as $$ begin perform set_config('search_path', p, false); end $$;
create procedure set_path_proc(p text) language plpgsql
  as $$ begin perform set_config('search_path', p, false); end $$;
create function make_temp_view() returns void language plpgsql
  as $$ begin execute 'create temp view sp as select ''temp view''::text as v'; end $$;
"""


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    yield from module_env("pgr_unknown", SCHEMA)


Steps = list[str]


def _run(conn: Conn, steps: Steps) -> None:
    for sql in steps:
        conn.execute(sql)


def _twin(env: Env, steps: Steps, sql: str) -> Result:
    """What a session gets directly after `steps`."""
    with env.direct() as conn:
        _run(conn, steps)
        return fetch(conn, sql)


def _check_both_orders(env: Env, x_steps: Steps, sql: str, y_steps: Steps) -> None:
    expect_x = _twin(env, x_steps, sql)
    expect_y = _twin(env, y_steps, sql)
    assert expect_x != expect_y, "the case must make X and Y differ directly"
    # Order 1: Y fills (a proven hit), then X reads.
    text1 = f"{sql} /* {uuid.uuid4().hex} */"
    with env.proxied() as y, env.proxied() as x:
        _run(y, y_steps)
        assert cached(env.proxy, y, text1)[2] == expect_y[2]
        _run(x, x_steps)
        for _ in range(3):
            assert fetch(x, text1) == expect_x
    # Order 2: X reads (and would fill), then Y reads.
    text2 = f"{sql} /* {uuid.uuid4().hex} */"
    with env.proxied() as x, env.proxied() as y:
        _run(x, x_steps)
        for _ in range(3):
            assert fetch(x, text2) == expect_x
            time.sleep(0.05)  # fills are stored in the background
        _run(y, y_steps)
        for _ in range(3):
            assert fetch(y, text2) == expect_y
        # And X itself still gets its own answer after Y filled.
        assert fetch(x, text2) == expect_x


CASES: dict[str, tuple[Steps, str, Steps]] = {
    "do-execute-set-search-path": (
        ["SET search_path = s1", "DO $$ BEGIN EXECUTE 'SET search_path = s2'; END $$"],
        "SELECT v FROM sp",
        ["SET search_path = s1"],
    ),
    "function-set-config": (
        ["SET search_path = s1", "SELECT public.set_path('s2')"], "SELECT v FROM sp",
        ["SET search_path = s1"],
    ),
    "procedure-set-config": (["SET search_path = s1", "CALL public.set_path_proc('s2')"],
                             "SELECT v FROM sp",
                             ["SET search_path = s1"]),
    "do-temp-table": (
        ["DO $$ BEGIN CREATE TEMP TABLE sp (v text); INSERT INTO sp VALUES ('temp row'); END $$"],
        "SELECT v FROM sp", [],
    ),
    "function-temp-view": (["SELECT make_temp_view()"], "SELECT v FROM sp", []),
    "do-bytea-output": (["DO $$ BEGIN SET bytea_output = 'escape'; END $$"],
                        "SELECT b FROM bt WHERE id = 1", []),
    "do-extra-float-digits": (["DO $$ BEGIN SET extra_float_digits = -2; END $$"],
                              "SELECT f FROM bt WHERE id = 1", []),
    "do-transform-null-equals": (["DO $$ BEGIN SET transform_null_equals = on; END $$"],
                                 "SELECT count(*) FROM bt WHERE n = NULL", []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_state_changed_out_of_sight_never_leaks(env: Env, case: str) -> None:
    x_steps, sql, y_steps = CASES[case]
    _check_both_orders(env, x_steps, sql, y_steps)


def test_alter_role_set_defaults_are_part_of_the_key(env: Env) -> None:
    role = f"pgr_unknown_r_{uuid.uuid4().hex[:8]}"
    admin(f"create role {role} login")
    try:
        admin(f"grant select on bt to {role}", env.db)
        sql = f"SELECT b FROM bt WHERE id = 1 /* {uuid.uuid4().hex} */"

        def session(conninfo: str) -> Conn:
            return connect(conninfo)

        with session(env.proxy.dsn(dbname=env.db, user=role)) as before_alter:
            hex_answer = cached(env.proxy, before_alter, sql)
            admin(f"alter role {role} set bytea_output = 'escape'")
            with session(env.proxy.dsn(dbname=env.db, user=role)) as after_alter, session(
                dsn(PG_HOST, PG_PORT, dbname=env.db, user=role)
            ) as direct_after:
                expect = fetch(direct_after, sql)
                assert expect != hex_answer
                for _ in range(3):
                    assert fetch(after_alter, sql) == expect
                # ...and the session opened before keeps its own default.
                assert fetch(before_alter, sql) == hex_answer
    finally:
        admin(f"drop owned by {role}", env.db)
        admin(f"drop role {role}")


def test_state_is_read_back_and_caching_resumes(env: Env) -> None:
    """After DO, the session's reads bypass only until its state is read back: the next
    read is cached again, under the settings DO left (not those the SQL text showed)."""
    with env.proxied() as x:
        x.execute("SET search_path = s1")
        x.execute("DO $$ BEGIN EXECUTE 'SET search_path = s2'; END $$")
        sql = f"SELECT v FROM sp /* {uuid.uuid4().hex} */"
        assert cached(env.proxy, x, sql)[2] == ((b"in s2",),)
        x.execute("RESET ALL")
        before = scrape(env.proxy)
        assert fetch(x, sql)[2] == ((b"in public",),)
        assert decisions(before, scrape(env.proxy)) == ["miss"]


# --- the property test ---------------------------------------------------------------------

SEQUENCES = int(os.environ.get("PGREACTIVE_TEST_STATE_SEQUENCES", "2000"))
SESSIONS = 3
STEPS_PER_SEQUENCE = 6

CHANGES = [
    "SET search_path = s1",
    "SET search_path = s2",
    "RESET search_path",
    "RESET ALL",
    "DISCARD ALL",
    "DO $$ BEGIN EXECUTE 'SET search_path = s2'; END $$",
    "DO $$ BEGIN EXECUTE 'SET search_path = s1, public'; END $$",
    "SELECT public.set_path('s1')",
    "CALL public.set_path_proc('s2')",
    "SET bytea_output = 'escape'",
    "DO $$ BEGIN SET bytea_output = 'escape'; END $$",
    "DO $$ BEGIN SET bytea_output = 'hex'; END $$",
    "RESET bytea_output",
    "DO $$ BEGIN SET extra_float_digits = 0; END $$",
    "SET extra_float_digits = 1",
    "DO $$ BEGIN SET transform_null_equals = on; END $$",
    "SET transform_null_equals = off",
    "DO $$ BEGIN CREATE TEMP TABLE IF NOT EXISTS sp (v text); DELETE FROM sp;"
    " INSERT INTO sp VALUES ('temp'); END $$",
    "DISCARD TEMP",
    "BEGIN; SET LOCAL search_path = s2; COMMIT",
    "BEGIN; DO $$ BEGIN EXECUTE 'SET search_path = s1'; END $$; ROLLBACK",
]
READS = [
    "SELECT v FROM sp",
    "SELECT b FROM bt WHERE id = 1",
    "SELECT f FROM bt WHERE id = 1",
    "SELECT count(*) FROM bt WHERE n = NULL",
]


def _apply(conn: Conn, sql: str) -> object:
    try:
        conn.execute(sql)
        return None
    except psycopg.Error as exc:
        return exc.sqlstate


def test_random_session_state_sequences_match_direct(env: Env) -> None:
    seed = int(os.environ.get("PGREACTIVE_TEST_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    pairs: list[tuple[Conn, Conn]] = []
    decided: dict[str, float] = scrape(env.proxy)
    try:
        for _ in range(SESSIONS):
            pairs.append((env.proxied(), env.direct()))
        reads = 0
        for sequence in range(SEQUENCES):
            for _ in range(STEPS_PER_SEQUENCE):
                proxied, direct = rng.choice(pairs)
                if rng.random() < 0.35:
                    sql = rng.choice(CHANGES)
                    assert _apply(proxied, sql) == _apply(direct, sql), (seed, sequence, sql)
                else:
                    sql = rng.choice(READS)
                    got, want = fetch(proxied, sql), fetch(direct, sql)
                    assert got == want, f"seed={seed} sequence={sequence} {sql}: {got} != {want}"
                    reads += 1
        outcomes = decisions(decided, scrape(env.proxy))
        assert outcomes.count("hit") > reads // 50, "the test must exercise hits"
    finally:
        for proxied, direct in pairs:
            proxied.close()
            direct.close()
