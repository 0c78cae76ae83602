"""cache.catalog against the real Postgres at :5432.

One module-scoped fixture builds, in two schemas unique to this run, everything the SQL text
does not show: views over views, a materialized view, a partitioned table with a
sub-partition, an inheritance child, FK chains with CASCADE / SET NULL / RESTRICT (and ON
UPDATE CASCADE), an FK to a partitioned table, triggers (user, disabled, internal FK ones,
on a partitioned parent, INSTEAD OF on a view), a rule, a sequence, an unlogged table, a
foreign table, RLS, a name in both schemas, a quoted mixed-case name and user functions of
each volatility.  It loads the catalog once through `PgClient`, and drops the schemas and
the foreign server at the end.  Every relation name starts with a per-run tag, so bare-name
unions never pick up another test's tables.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from analyzer import AnalyzerOptions, analyze
from cache.catalog import Catalog, CatalogCache, load_catalog
from proxy.pgclient import PgClient, PgError
from tests.conftest import PG_DB, PG_HOST, PG_PORT, PG_USER, dsn

TAG = f"c{os.getpid()}x{time.monotonic_ns() % 1_000_000}"
S1 = f"pgr_cat_{TAG}_a"
S2 = f"pgr_cat_{TAG}_b"


def n(name: str) -> str:
    """A relation or function name unique to this run."""
    return f"{TAG}_{name}"


SETUP = f"""
create schema {S1};
create schema {S2};
set search_path = {S1};

create table {n("base")} (id int primary key, v int);
create table {n("other")} (id int);
create view {n("v1")} as select id, v from {n("base")};
create view {n("v2")} as
  select v1.id from {n("v1")} v1 join {n("other")} o on o.id = v1.id;
create materialized view {n("mv")} as select id from {n("v1")};
create view {n("vmv")} as select id from {n("mv")};

create table {n("meas")} (id int, region text, ts int) partition by list (region);
create table {n("meas_eu")} partition of {n("meas")} for values in ('eu') partition by range (ts);
create table {n("meas_eu_2024")} partition of {n("meas_eu")} for values from (0) to (100);
create table {n("meas_us")} partition of {n("meas")} for values in ('us');
create view {n("v_meas")} as select id from {n("meas")};

create table {n("animal")} (id int, name text);
create table {n("dog")} (breed text) inherits ({n("animal")});

create table {n("org")} (id int primary key);
create table {n("team")} (id int primary key,
  org_id int references {n("org")} on delete cascade);
create table {n("member")} (id int primary key,
  team_id int references {n("team")} on delete set null);
create table {n("audit")} (id int primary key,
  member_id int references {n("member")} on delete restrict);
create table {n("badge")} (id int,
  member_id int references {n("member")} on update cascade);
create table {n("note")} (id int, audit_id int references {n("audit")} on delete cascade);

create table {n("ptab")} (id int primary key) partition by range (id);
create table {n("ptab_1")} partition of {n("ptab")} for values from (0) to (10);
create table {n("pref")} (pid int references {n("ptab")} on delete cascade);

create function {n("trg")}() returns trigger language plpgsql as
  $$ begin return new; end $$;
create table {n("trig")} (id int);
create trigger t1 after insert on {n("trig")} for each row execute function {n("trg")}();
create table {n("trig_off")} (id int);
create trigger t2 after insert on {n("trig_off")} for each row execute function {n("trg")}();
alter table {n("trig_off")} disable trigger t2;
create table {n("trig_parent")} (id int) partition by range (id);
create table {n("trig_part")} partition of {n("trig_parent")} for values from (0) to (10);
create trigger t3 after insert on {n("trig_parent")} for each row execute function {n("trg")}();
create table {n("trig_child_ref")} (id int, trig_id int);
create table {n("cascade_to_trig")} (id int primary key);
alter table {n("trig")} add primary key (id);
create table {n("trig_fk")} (id int references {n("cascade_to_trig")} on delete cascade);
create trigger t4 after delete on {n("trig_fk")} for each row execute function {n("trg")}();
create function {n("io")}() returns trigger language plpgsql as
  $$ begin return new; end $$;
create view {n("v_io")} as select id from {n("base")};
create trigger t5 instead of insert on {n("v_io")} for each row execute function {n("io")}();

create table {n("ruled")} (id int);
create table {n("log")} (id int);
create rule r1 as on insert to {n("ruled")} do also insert into {n("log")} values (new.id);

create sequence {n("seq")};
create view {n("v_seq")} as select last_value from {n("seq")};
create unlogged table {n("unlogged")} (id int);
create table {n("secure")} (id int);
alter table {n("secure")} enable row level security;
create view {n("v_secure")} as select id from {n("secure")};
create foreign data wrapper {n("fdw")};
create server {n("srv")} foreign data wrapper {n("fdw")};
create foreign table {n("ft")} (id int) server {n("srv")};
create table {n("pmix")} (id int, k int) partition by list (k);
create foreign table {n("pmix_remote")} partition of {n("pmix")} for values in (1)
  server {n("srv")};

create table {S1}.{n("dup")} (id int);
create table {S2}.{n("dup")} (id int);
create table {S2}.{n("only_b")} (id int);
create view {S2}.{n("v_cross")} as select id from {S1}.{n("base")};
create table "{TAG}_Mixed" (id int);

create function {n("fi")}(int) returns int language sql immutable as 'select $1';
create function {n("fs")}(int) returns int language sql stable as 'select $1';
create function {n("fv")}(int) returns int language sql volatile as 'select $1';
create function {n("fo")}(int) returns int language sql immutable as 'select $1';
create function {n("fo")}(text) returns int language sql volatile as 'select 1';
create function {S2}.{n("fi")}(int) returns int language sql stable as 'select $1';
create view {n("v_fs")} as select {n("fs")}(id) from {n("base")};
create view {n("v_fi")} as select {n("fi")}(id) from {n("base")};
create view {n("v_now")} as select id from {n("base")} where v < extract(epoch from now());
create view {n("v_catalog")} as select relname from pg_class;
create view {n("v_infoschema")} as select table_name from information_schema.tables;
"""

TEARDOWN = f"""
drop schema if exists {S1} cascade;
drop schema if exists {S2} cascade;
drop server if exists {n("srv")} cascade;
drop foreign data wrapper if exists {n("fdw")} cascade;
"""


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True)


def _view_check(definition: str, volatility: Callable[[str], str | None]) -> str | None:
    analysis = analyze(definition, options=AnalyzerOptions(function_volatility=volatility))
    return None if analysis.cacheable else str(analysis.reason)


async def _connect(database: str = PG_DB) -> PgClient:
    return await PgClient.connect(PG_HOST, PG_PORT, PG_USER, database)


@pytest.fixture(scope="module")
def schema() -> Iterator[None]:
    try:
        with _admin() as conn:
            conn.execute(SETUP)
        yield
    finally:
        with _admin() as conn:
            conn.execute(TEARDOWN)


@pytest.fixture(scope="module")
def cat(schema: None) -> Catalog:
    async def load() -> Catalog:
        client = await _connect()
        try:
            return await load_catalog(client, _view_check)
        finally:
            await client.close()

    return asyncio.run(load())


def ns(*names: str) -> frozenset[str]:
    return frozenset(n(x) for x in names)


# --- relations and names -----------------------------------------------------------------


def test_relations_and_name_resolution(cat: Catalog) -> None:
    (base,) = cat.lookup(n("base"))
    assert (base.schema, base.name, base.kind, base.persistence) == (S1, n("base"), "r", "p")
    assert cat.resolve(f"{S1}.{n('base')}") == cat.resolve(n("base")) == {base.oid}
    assert cat.resolve(f"{PG_DB}.{S1}.{n('base')}") == {base.oid}  # catalog.schema.table
    assert [r.schema for r in cat.lookup(n("dup"))] == [S1, S2]  # bare: both schemas
    assert [r.schema for r in cat.lookup(f"{S2}.{n('dup')}")] == [S2]
    assert cat.lookup(f"{S1}.{n('only_b')}") == ()
    assert len(cat.lookup(f"{TAG}_Mixed")) == 1  # quoted: case kept
    assert cat.lookup(f"{TAG}_mixed") == ()
    assert {r.kind for r in cat.lookup(n("meas"))} == {"p"}
    assert {r.kind for r in cat.lookup(n("mv"))} == {"m"}
    # system schemas, indexes and toast are not in the catalog
    assert cat.resolve("pg_class") == frozenset()
    assert cat.resolve(f"{n('base')}_pkey") == frozenset()


def test_relation_properties(cat: Catalog) -> None:
    assert cat.is_sequence(n("seq")) and not cat.is_sequence(n("base"))
    assert cat.is_foreign(n("ft")) and not cat.is_foreign(n("base"))
    assert cat.is_unlogged(n("unlogged")) and not cat.is_unlogged(n("base"))
    assert cat.has_rls(n("secure")) and not cat.has_rls(n("v_secure"))
    assert cat.is_view(n("v1")) and cat.is_view(n("mv")) and not cat.is_view(n("base"))
    assert not cat.is_sequence("nope") and not cat.is_view("nope")


def test_triggers_and_rules(cat: Catalog) -> None:
    assert cat.has_user_triggers(n("trig"))
    assert not cat.has_user_triggers(n("trig_off"))  # disabled
    assert not cat.has_user_triggers(n("team"))  # only internal FK triggers
    assert not cat.has_user_triggers(n("org"))
    assert cat.has_user_triggers(n("trig_parent")) and cat.has_user_triggers(n("trig_part"))
    assert cat.has_user_triggers(n("v_io"))  # INSTEAD OF
    assert cat.has_rules(n("ruled")) and not cat.has_rules(n("v1"))  # _RETURN is no rule
    assert not cat.has_user_triggers(n("ruled"))


def test_function_volatility(cat: Catalog) -> None:
    assert cat.function_volatility(n("fs")) == "s"
    assert cat.function_volatility(n("fv")) == "v"
    assert cat.function_volatility(f"{S1}.{n('fi')}") == "i"
    assert cat.function_volatility(f"{S2}.{n('fi')}") == "s"
    assert cat.function_volatility(n("fi")) == "s"  # bare: least safe over schemas
    assert cat.function_volatility(n("fo")) == "v"  # overloads: least safe wins
    assert cat.function_volatility(n("trg")) == "v"
    assert cat.function_volatility("now") is None  # built-ins are the analyzer's business
    assert cat.function_volatility(n("nope")) is None


# --- graph -------------------------------------------------------------------------------


def test_base_tables(cat: Catalog) -> None:
    assert cat.base_tables(n("v1")) == ns("base")
    assert cat.base_tables(n("v2")) == ns("base", "other")  # through v1
    assert cat.base_tables(n("mv")) == ns("mv", "base")  # stored, and what it reads
    assert cat.base_tables(n("vmv")) == ns("mv", "base")
    assert cat.base_tables(n("base")) == ns("base")
    assert cat.base_tables(f"{S2}.{n('v_cross')}") == ns("base")
    assert cat.base_tables("nope") == frozenset()


def test_inheritance(cat: Catalog) -> None:
    assert cat.descendants(n("meas")) == ns("meas_eu", "meas_eu_2024", "meas_us")
    assert cat.descendants(n("meas_eu")) == ns("meas_eu_2024")
    assert cat.ancestors(n("meas_eu_2024")) == ns("meas_eu", "meas")
    assert cat.ancestors(n("meas")) == frozenset()
    assert cat.descendants(n("animal")) == ns("dog")
    assert cat.ancestors(n("dog")) == ns("animal")


def test_cascade_targets(cat: Catalog) -> None:
    # org -> team (cascade) -> member (set null: an UPDATE of member) -> badge (on update
    # cascade; columns are not tracked, so any update of member counts)
    assert cat.cascade_targets(n("org")) == ns("team", "member", "badge")
    assert cat.cascade_targets(n("team")) == ns("member", "badge")
    # member: RESTRICT (audit) does not count; ON UPDATE CASCADE (badge) does
    assert cat.cascade_targets(n("member")) == ns("badge")
    assert cat.cascade_targets(n("audit")) == ns("note")
    assert cat.cascade_targets(n("base")) == frozenset()
    # the FK to a partitioned table is cloned onto its partitions
    assert cat.cascade_targets(n("ptab")) == ns("pref")
    assert cat.cascade_targets(n("ptab_1")) == ns("pref")


# --- what the proxy asks -----------------------------------------------------------------


def test_read_dependencies(cat: Catalog) -> None:
    assert cat.read_dependencies([n("base")]) == ns("base")
    assert cat.read_dependencies([n("v2")]) == ns("v2", "v1", "base", "other")
    assert cat.read_dependencies([n("vmv")]) == ns("vmv", "mv", "v1", "base")
    assert cat.read_dependencies([f"{S1}.{n('base')}", n("other")]) == ns("base", "other")
    # partitions: reads stay put (writes fan out)
    assert cat.read_dependencies([n("meas")]) == ns("meas")
    assert cat.read_dependencies([n("v_meas")]) == ns("v_meas", "meas")
    # unknown names keep their bare name
    assert cat.read_dependencies(["someschema.nope"]) == {"nope"}


def _read_invalidated_by(cat: Catalog, read: str, write: str) -> bool:
    bumped, _ = cat.write_targets([write])
    return bool(cat.read_dependencies([read]) & bumped)


@pytest.mark.parametrize(
    ("read", "write", "invalidated"),
    [
        ("meas", "meas_eu_2024", True),  # child write -> ancestor read
        ("meas_eu", "meas_eu_2024", True),
        ("meas_eu_2024", "meas", True),  # parent write -> descendant read
        ("meas_us", "meas_eu", False),  # siblings stay
        ("meas_eu_2024", "meas_us", False),
        ("animal", "dog", True),
        ("dog", "animal", True),
        ("v_meas", "meas_us", True),
        ("v2", "other", True),
        ("v2", "base", True),
        ("vmv", "mv", True),  # REFRESH
        ("base", "v1", True),  # written through the view
        ("team", "org", True),  # FK cascade
        ("member", "org", True),
        ("audit", "member", False),  # RESTRICT
        ("note", "audit", True),
        ("pref", "ptab_1", True),  # FK clone on the partition
        ("other", "base", False),
    ],
)
def test_reads_and_writes_agree(cat: Catalog, read: str, write: str, invalidated: bool) -> None:
    assert _read_invalidated_by(cat, n(read), n(write)) is invalidated


def test_write_targets(cat: Catalog) -> None:
    assert cat.write_targets([n("base")]) == (ns("base"), False)
    assert cat.write_targets([n("meas_eu_2024")]) == (ns("meas_eu_2024", "meas_eu", "meas"), False)
    assert cat.write_targets([n("meas")]) == (
        ns("meas", "meas_eu", "meas_eu_2024", "meas_us"),
        False,
    )
    assert cat.write_targets([n("meas_eu")]) == (ns("meas", "meas_eu", "meas_eu_2024"), False)
    assert cat.write_targets([n("dog")]) == (ns("dog", "animal"), False)
    assert cat.write_targets([n("org")]) == (ns("org", "team", "member", "badge"), False)
    assert cat.write_targets([n("member")]) == (ns("member", "badge"), False)
    assert cat.write_targets([n("v2")]) == (ns("v2", "v1", "base", "other"), False)
    assert cat.write_targets([n("mv")]) == (ns("mv"), False)  # REFRESH writes the mv only
    assert cat.write_targets([n("ptab")]) == (ns("ptab", "ptab_1", "pref"), False)
    # TRUNCATE ... CASCADE reaches every referencing table, RESTRICT ones included
    assert cat.write_targets([n("member")], truncate_cascade=True) == (
        ns("member", "audit", "badge", "note"),
        False,
    )
    assert cat.write_targets([f"{S2}.{n('dup')}"]) == (ns("dup"), False)


def test_unknown_reach(cat: Catalog) -> None:
    assert cat.write_targets([n("trig")]) == (ns("trig"), True)
    assert cat.write_targets([n("trig_off")])[1] is False  # disabled trigger
    assert cat.write_targets([n("team")])[1] is False  # internal FK triggers only
    assert cat.write_targets([n("trig_part")]) == (ns("trig_part", "trig_parent"), True)
    assert cat.write_targets([n("cascade_to_trig")])[1] is True  # cascades into a trigger
    assert cat.write_targets([n("v_io")])[1] is True  # INSTEAD OF trigger
    assert cat.write_targets([n("ruled")])[1] is True  # rule
    assert cat.write_targets([n("log")])[1] is False
    assert cat.write_targets(["nope"]) == (frozenset({"nope"}), True)  # unknown name
    assert cat.write_targets([n("base"), "nope"]) == (frozenset({n("base"), "nope"}), True)


def test_cacheable_relations(cat: Catalog) -> None:
    assert cat.cacheable_relations([n("base"), n("v2"), n("vmv"), n("meas")]) is None
    assert cat.cacheable_relations([f"{S2}.{n('v_cross')}", n("dup"), n("v_fi")]) is None

    def reason(*names: str, allow_rls: bool = False) -> str:
        answer = cat.cacheable_relations(names, allow_rls=allow_rls)
        assert answer is not None, names
        return answer

    assert "sequence" in reason(n("seq"))
    assert "sequence" in reason(n("v_seq"))  # through a view
    assert "foreign" in reason(n("ft"))
    assert "foreign" in reason(n("pmix"))  # a partition is foreign
    assert "unlogged" in reason(n("unlogged"))
    assert "row-level security" in reason(n("secure"))
    assert "row-level security" in reason(n("v_secure"))
    assert cat.cacheable_relations([n("v_secure")], allow_rls=True) is None
    assert "not in the catalog" in reason("pg_class")
    assert "not in the catalog" in reason(n("base"), "some_temp_table")
    assert "non-immutable user function" in reason(n("v_fs"))
    assert "stable_function" in reason(n("v_now"))  # from the view check (analyzer)
    assert "system_catalog" in reason(n("v_catalog"))  # pinned: only the view check sees it
    # information_schema views are not pinned: pg_depend names them, outside the catalog
    assert cat.base_tables(n("v_infoschema")) == frozenset()
    assert "outside the catalog" in reason(n("v_infoschema"))
    assert cat.view_definition(n("v_now")) is not None
    assert cat.view_definition(n("base")) is None


def test_memoised_answers_are_stable(cat: Catalog) -> None:
    first = cat.write_targets(iter([n("org")]))
    assert cat.write_targets([n("org")]) is first
    assert cat.read_dependencies((n("v2"),)) is cat.read_dependencies([n("v2")])
    assert cat.cacheable_relations([n("seq")]) == cat.cacheable_relations([n("seq")])


# --- loading -----------------------------------------------------------------------------


async def test_load_failure_leaves_client_usable(schema: None) -> None:
    client = await _connect()
    try:

        def boom(definition: str, volatility: Callable[[str], str | None]) -> str | None:
            raise ValueError("view check failed")

        with pytest.raises(ValueError):
            await load_catalog(client, boom)
        assert not client.closed
        assert await client.query("select 1") == [("1",)]
        catalog = await load_catalog(client)
        assert catalog.resolve(n("base"))
    finally:
        await client.close()


# --- CatalogCache ------------------------------------------------------------------------


class Connects:
    """A connect function that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def __call__(self, database: str) -> PgClient:
        self.calls += 1
        if self.fail:
            raise PgError("08001", "refused for the test")
        return await _connect(database)


async def test_cache_get_never_blocks_and_single_flight(schema: None) -> None:
    connects = Connects()
    cache = CatalogCache(connects)
    try:
        assert cache.get(PG_DB) is None  # starts a load
        assert cache.get(PG_DB) is None  # same load
        results = await asyncio.gather(*(cache.load(PG_DB) for _ in range(5)))
        assert all(r is results[0] for r in results) and results[0] is not None
        assert connects.calls == 1 and cache.loads == 1
        assert cache.get(PG_DB) is results[0]
        assert results[0].resolve(n("base"))
    finally:
        await cache.aclose()


async def test_cache_invalidate_after_ddl(schema: None) -> None:
    connects = Connects()
    cache = CatalogCache(connects)
    try:
        before = await cache.load(PG_DB)
        assert before is not None and not before.resolve(n("late"))
        with _admin() as conn:
            conn.execute(f"create table {S1}.{n('late')} (id int)")  # dropped with the schema
        assert cache.get(PG_DB) is before  # no reload until told
        cache.invalidate(PG_DB)
        assert cache.get(PG_DB) is None
        after = await cache.load(PG_DB)
        assert after is not None and after.resolve(n("late"))
        assert connects.calls == 1  # the connection is kept between loads
    finally:
        await cache.aclose()


async def test_cache_discards_a_load_that_raced_with_invalidate(schema: None) -> None:
    gate = asyncio.Event()
    started: list[int] = []

    async def loader(client: PgClient) -> Catalog:
        started.append(1)
        if len(started) == 1:
            await gate.wait()
        return await load_catalog(client)

    cache = CatalogCache(Connects(), loader=loader)
    try:
        waiter = asyncio.create_task(cache.load(PG_DB))
        while not started:
            await asyncio.sleep(0.01)
        cache.invalidate(PG_DB)  # DDL committed while the first load was reading
        gate.set()
        catalog = await waiter
        assert catalog is not None
        assert len(started) == 2  # the first snapshot was thrown away
        assert cache.loads == 1 and cache.get(PG_DB) is catalog
    finally:
        await cache.aclose()


async def test_cache_load_failure_and_retry(schema: None) -> None:
    connects = Connects()
    connects.fail = True
    cache = CatalogCache(connects, retry_after=3600)
    try:
        assert await cache.load(PG_DB) is None
        assert cache.get(PG_DB) is None  # within retry_after: no new attempt
        await asyncio.sleep(0)
        assert connects.calls == 1
        connects.fail = False
        cache.invalidate(PG_DB)  # invalidation clears the back-off
        assert await cache.load(PG_DB) is not None
        assert connects.calls == 2
    finally:
        await cache.aclose()


async def test_cache_reconnects_when_the_kept_connection_died(schema: None) -> None:
    clients: list[PgClient] = []

    async def connect(database: str) -> PgClient:
        clients.append(await _connect(database))
        return clients[-1]

    cache = CatalogCache(connect)
    try:
        assert await cache.load(PG_DB) is not None
        with _admin() as conn:
            conn.execute("select pg_terminate_backend(%s)", (clients[0].backend_pid,))
        cache.invalidate(PG_DB)
        assert await cache.load(PG_DB) is not None
        assert len(clients) == 2 and clients[0].closed
    finally:
        await cache.aclose()
    assert all(c.closed for c in clients)


async def test_cache_max_age_serves_old_while_reloading(schema: None) -> None:
    cache = CatalogCache(Connects(), max_age=0.0)
    try:
        first = await cache.load(PG_DB)
        assert first is not None
        assert cache.get(PG_DB) is first  # too old: returned, and a reload starts
        while cache.loads < 2:
            await asyncio.sleep(0.01)
        assert cache.get(PG_DB) is not first
    finally:
        await cache.aclose()
