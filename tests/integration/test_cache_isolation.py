"""Isolation (issue 4, point 4): a cached result reaches only sessions that would get the same
bytes from Postgres directly (DESIGN.md invariant 3, PITFALLS C1-C8).

Each case names two contexts, A and B, that run the *same SQL text* but get different bytes
from Postgres: two TimeZones (and the other result-affecting settings), two search_paths, two
roles (`SET ROLE`, `SET SESSION AUTHORIZATION`, two login users, incl. one refused with
42501), two databases, two `app.tenant` values under an RLS policy.  The cache is warmed as
A until the proxy answers A from it (a proven hit), then the SQL is read as B through the
proxy and compared with what B gets directly at :5432: the raw result bytes (psycopg text
format: field names, type OIDs, every DataRow value as bytes, the command tag) or the
SQLSTATE.  Then A again, which must still get A's bytes.  Each case runs over the simple and
the extended protocol, with A and B on one connection (switching by SET) and on two.

Everything lives in databases and roles of this module's own (unique names), so nothing
another test writes through another proxy can bump this module's generations.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER, ProxyProcess, dsn, start_caching_proxy
from tests.integration import cache_env
from tests.integration.cache_env import Result, admin, connect, forget

# --- helpers (the shared kit is in cache_env.py) -------------------------------------------

# This module compares each column's typmod and format code too, not only name and type OID.
fetch = partial(cache_env.fetch, typmod_and_format=True)
read = partial(cache_env.read, typmod_and_format=True)
cached = partial(cache_env.cached, typmod_and_format=True)


# --- the module's databases, roles and proxy -----------------------------------------------


@dataclass(frozen=True)
class Env:
    proxy: ProxyProcess
    names: dict[str, str]  # placeholders: main, other (databases), r_a, r_b, r_limited, r_tenant


MAIN_SCHEMA = r"""
create table typed (id int primary key, at timestamptz, d date, iv interval, f float8, b bytea);
insert into typed values
  (1, '2024-03-01 12:34:56.789+00', '2024-03-01', '1 day 02:03:04.5', 0.1::float8 + 0.2,
   '\x00ff41'),
  (2, '2023-12-31 23:59:59+00', '2023-12-31', '-3 mons 4 days', 1e-7, 'abc\\def'::bytea);
create schema s1;
create schema s2;
create table s1.items (id int primary key, label text);
create table s2.items (id int primary key, label text);
insert into s1.items values (1, 'in s1');
insert into s2.items values (1, 'in s2'), (2, 'only in s2');
create table rt (id int primary key, pub text, secret text);
insert into rt values (1, 'public', 'secret');
grant select on rt to {r_a};
grant select (id, pub) on rt to {r_limited};
create table public.mine (id int primary key, who text);
insert into public.mine values (1, 'public.mine');
grant select on public.mine to {r_a}, {r_b};
create schema {r_a} authorization {r_a};
create table {r_a}.mine (id int primary key, who text);
insert into {r_a}.mine values (1, '{r_a}.mine'), (2, 'second');
grant select on {r_a}.mine to {r_a};
create table rls_t (id int primary key, tenant text not null, v text);
insert into rls_t values (1, 'a', 'alpha'), (2, 'b', 'beta'), (3, 'a', 'gamma');
alter table rls_t enable row level security;
create policy by_tenant on rls_t using (tenant = current_setting('app.tenant'));
grant select on rls_t to {r_tenant};
create view rls_v with (security_invoker = true) as select id, v from rls_t;
grant select on rls_v to {r_tenant};
create table shared_t (id int primary key, origin text);
insert into shared_t values (1, 'main database');
"""

OTHER_SCHEMA = """
create table shared_t (id int primary key, origin text);
insert into shared_t values (1, 'other database'), (2, 'only in the other one');
"""


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    tag = uuid.uuid4().hex[:10]
    names = {
        "main": f"pgr_iso_{tag}_main",
        "other": f"pgr_iso_{tag}_other",
        "r_a": f"pgr_iso_{tag}_a",
        "r_b": f"pgr_iso_{tag}_b",
        "r_limited": f"pgr_iso_{tag}_limited",
        "r_tenant": f"pgr_iso_{tag}_tenant",
    }
    roles = [names[k] for k in ("r_a", "r_b", "r_limited", "r_tenant")]
    proxy: ProxyProcess | None = None
    try:
        for role in roles:
            admin(f"create role {role} login")  # nosuperuser, nobypassrls by default
        admin(f"create database {names['main']}")
        admin(f"create database {names['other']}")
        admin(MAIN_SCHEMA.format(**names), names["main"])
        admin(OTHER_SCHEMA, names["other"])
        proxy = start_caching_proxy()
        yield Env(proxy, names)
    finally:
        if proxy is not None:
            proxy.stop()
        admin(f"drop database if exists {names['main']} with (force)")
        admin(f"drop database if exists {names['other']} with (force)")
        forget(names["main"])
        forget(names["other"])
        for role in roles:
            admin(f"drop role if exists {role}")


# --- the cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """A session context: how to connect and what to run before reading."""

    setup: tuple[str, ...] = ()
    user: str = PG_USER  # or a placeholder such as "{r_a}"
    db: str = "{main}"
    options: str | None = None

    def conninfo(self, host: str, port: int, names: dict[str, str]) -> str:
        extra = {"options": self.options.format(**names)} if self.options else {}
        return dsn(
            host, port, dbname=self.db.format(**names), user=self.user.format(**names), **extra
        )

    def apply(self, conn: psycopg.Connection[tuple[object, ...]], names: dict[str, str]) -> None:
        for statement in self.setup:
            conn.execute(statement.format(**names))

    @property
    def connect_key(self) -> tuple[str, str, str | None]:
        return (self.user, self.db, self.options)


@dataclass(frozen=True)
class Case:
    a: Ctx
    b: Ctx
    sql: str  # with "{p}" where the simple protocol puts 0 and the extended one a parameter
    cacheable: bool = True  # False: not required to be cached (RLS tables are bypassed)


TYPED = "select id, at, d, iv, f, b from typed where id > {p} order by id"

CASES = {
    "timezone": Case(
        Ctx(("set time zone 'UTC'",)), Ctx(("set time zone 'Asia/Kathmandu'",)), TYPED
    ),
    "timezone_guc": Case(
        Ctx(("set timezone = 'America/St_Johns'",)), Ctx(("set timezone = 'UTC'",)), TYPED
    ),
    "timezone_startup": Case(
        Ctx(options="-c TimeZone=UTC"), Ctx(options="-c TimeZone=Asia/Kathmandu"), TYPED
    ),
    "datestyle": Case(
        Ctx(("set datestyle = 'ISO, MDY'",)), Ctx(("set datestyle = 'SQL, DMY'",)), TYPED
    ),
    "intervalstyle": Case(
        Ctx(("set intervalstyle = 'postgres'",)), Ctx(("set intervalstyle = 'iso_8601'",)), TYPED
    ),
    "extra_float_digits": Case(
        Ctx(("set extra_float_digits = 3",)), Ctx(("set extra_float_digits = 0",)), TYPED
    ),
    "bytea_output": Case(
        Ctx(("set bytea_output = 'hex'",)), Ctx(("set bytea_output = 'escape'",)), TYPED
    ),
    "search_path": Case(
        Ctx(("set search_path = s1",)),
        Ctx(("set search_path = s2",)),
        "select id, label from items where id > {p} order by id",
    ),
    "search_path_set_config": Case(
        Ctx(("select set_config('search_path', 's1', false)",)),
        Ctx(("select set_config('search_path', 's2', false)",)),
        "select id, label from items where id > {p} order by id",
    ),
    "search_path_startup": Case(
        Ctx(options="-c search_path=s1"),
        Ctx(options="-c search_path=s2"),
        "select id, label from items where id > {p} order by id",
    ),
    "set_role_refused": Case(
        Ctx(("reset role",)),
        Ctx(("set role {r_limited}",)),
        "select * from rt where id > {p} order by id",
    ),
    "set_config_role_refused": Case(
        Ctx(("select set_config('role', 'none', false)",)),
        Ctx(("select set_config('role', '{r_limited}', false)",)),
        "select * from rt where id > {p} order by id",
    ),
    "startup_role_refused": Case(
        Ctx(options="-c role={r_a}"),
        Ctx(options="-c role={r_limited}"),
        "select * from rt where id > {p} order by id",
    ),
    "set_role_user_schema": Case(
        Ctx(("set role {r_a}",)),
        Ctx(("set role {r_b}",)),
        "select id, who from mine where id > {p} order by id",
    ),
    "session_authorization": Case(
        Ctx(("reset session authorization",)),
        Ctx(("set session authorization {r_limited}",)),
        "select * from rt where id > {p} order by id",
    ),
    "session_authorization_user_schema": Case(
        Ctx(("set session authorization {r_a}",)),
        Ctx(("set session authorization {r_b}",)),
        "select id, who from mine where id > {p} order by id",
    ),
    "login_user_refused": Case(
        Ctx(user="{r_a}"), Ctx(user="{r_limited}"), "select * from rt where id > {p} order by id"
    ),
    "login_user_schema": Case(
        Ctx(user="{r_a}"), Ctx(user="{r_b}"), "select id, who from mine where id > {p} order by id"
    ),
    "database": Case(
        Ctx(db="{main}"),
        Ctx(db="{other}"),
        "select id, origin from shared_t where id > {p} order by id",
    ),
    "rls_tenant": Case(
        Ctx(("set app.tenant = 'a'",), user="{r_tenant}"),
        Ctx(("set app.tenant = 'b'",), user="{r_tenant}"),
        "select id, tenant, v from rls_t where id > {p} order by id",
        cacheable=False,
    ),
    "rls_security_invoker_view": Case(
        Ctx(("set app.tenant = 'a'",), user="{r_tenant}"),
        Ctx(("set app.tenant = 'b'",), user="{r_tenant}"),
        "select id, v from rls_v where id > {p} order by id",
        cacheable=False,
    ),
}


def _params() -> list[object]:
    out: list[object] = []
    for name, case in CASES.items():
        modes = ["two_connections"]
        if case.a.connect_key == case.b.connect_key:
            modes.append("one_connection")
        for mode in modes:
            for protocol in ("simple", "extended"):
                out.append(pytest.param(name, mode, protocol, id=f"{name}-{mode}-{protocol}"))
    return out


@pytest.mark.parametrize(("case_name", "mode", "protocol"), _params())
def test_context_b_never_gets_context_a_bytes(
    env: Env, case_name: str, mode: str, protocol: str
) -> None:
    case = CASES[case_name]
    names = env.names
    if protocol == "simple":
        sql, params = case.sql.format(p="0"), None
    else:
        sql, params = case.sql.format(p="%s"), (0,)

    # What Postgres gives each context directly: the reference.
    direct: dict[str, Result] = {}
    for label, ctx in (("a", case.a), ("b", case.b)):
        with connect(ctx.conninfo(PG_HOST, PG_PORT, names)) as conn:
            ctx.apply(conn, names)
            direct[label] = fetch(conn, sql, params)
    assert direct["a"][0] == "ok", f"context A must be able to read: {direct['a']}"
    assert direct["a"] != direct["b"], "the two contexts must differ directly (test premise)"

    proxy = env.proxy
    host, port = proxy.host, proxy.port
    conn_a = connect(case.a.conninfo(host, port, names))
    conn_b = conn_a if mode == "one_connection" else connect(case.b.conninfo(host, port, names))
    try:
        case.a.apply(conn_a, names)
        if case.cacheable:
            warmed = cached(proxy, conn_a, sql, params)  # A's result is now in the cache
        else:
            fetch(conn_a, sql, params)
            warmed = fetch(conn_a, sql, params)
        assert warmed == direct["a"]

        case.b.apply(conn_b, names)
        for _ in range(2):  # B's first read, then B's own (possibly cached) answer
            got_b, decided = read(proxy, conn_b, sql, params)
            assert got_b == direct["b"], f"B got {got_b!r} via the proxy ({decided})"

        case.a.apply(conn_a, names)  # back to A (on one connection: SET again)
        got_a, _ = read(proxy, conn_a, sql, params)
        assert got_a == direct["a"]
    finally:
        conn_a.close()
        conn_b.close()


def test_refused_role_gets_42501_even_right_after_a_superuser_hit(env: Env) -> None:
    """The explicit form of the role cases: the superuser's rows are a proven cache hit, the
    column-restricted role asks for the same text on the same connection and gets 42501."""
    proxy, names = env.proxy, env.names
    sql = "select id, pub, secret from rt order by id"
    with connect(proxy.dsn(dbname=names["main"])) as conn:
        rows = cached(proxy, conn, sql)
        assert rows[0] == "ok" and rows[2] == ((b"1", b"public", b"secret"),)
        conn.execute(f"set role {names['r_limited']}")
        result, decided = read(proxy, conn, sql)
        assert result == ("error", "42501"), (result, decided)
        assert "hit" not in decided
        # The columns it may read are fine, and after RESET ROLE the superuser's rows again.
        allowed = fetch(conn, "select id, pub from rt order by id")
        assert allowed[0] == "ok" and allowed[2] == ((b"1", b"public"),)
        conn.execute("reset role")
        assert fetch(conn, sql) == rows


def test_rls_tenant_switches_on_one_connection_and_across_connections(env: Env) -> None:
    """`SET app.tenant` back and forth on one connection and on two connections, each read
    compared with Postgres; the tenants' rows never cross."""
    proxy, names = env.proxy, env.names
    tenant = names["r_tenant"]
    sql = "select id, tenant, v from rls_t order by id"
    expected = {
        "a": ((b"1", b"a", b"alpha"), (b"3", b"a", b"gamma")),
        "b": ((b"2", b"b", b"beta"),),
    }
    with (
        connect(proxy.dsn(dbname=names["main"], user=tenant)) as one,
        connect(proxy.dsn(dbname=names["main"], user=tenant)) as two,
    ):
        one.execute("set app.tenant = 'a'")
        two.execute("set app.tenant = 'b'")
        for value in ("a", "b", "a", "b"):
            one.execute(f"set app.tenant = '{value}'")
            for conn, want in ((one, value), (two, "b")):
                result = fetch(conn, sql)
                assert result[0] == "ok" and result[2] == expected[want], (value, result)
        # A tenant that matches nothing sees nothing, not the last tenant's rows.
        one.execute("set app.tenant = 'nobody'")
        result = fetch(one, sql)
        assert result[0] == "ok" and result[2] == ()


def test_named_statement_follows_search_path_like_postgres(env: Env) -> None:
    """A statement prepared under search_path s1 and executed again after SET search_path =
    s2 (PITFALLS C10: statement names are not identity): the proxy answers what Postgres
    answers for the same sequence."""
    proxy, names = env.proxy, env.names
    sql = "select id, label from items where id > %s order by id"

    def sequence(conn: psycopg.Connection[tuple[object, ...]], warm: bool) -> list[Result]:
        conn.execute("set search_path = s1")
        first = (
            cached(proxy, conn, sql, (0,), prepare=True)
            if warm
            else fetch(conn, sql, (0,), prepare=True)
        )
        conn.execute("set search_path = s2")
        second = fetch(conn, sql, (0,), prepare=True)
        conn.execute("set search_path = s1")
        third = fetch(conn, sql, (0,), prepare=True)
        return [first, second, third]

    with connect(dsn(PG_HOST, PG_PORT, dbname=names["main"])) as conn:
        expected = sequence(conn, warm=False)
    assert expected[0] != expected[1]
    with connect(proxy.dsn(dbname=names["main"])) as conn:
        assert sequence(conn, warm=True) == expected
