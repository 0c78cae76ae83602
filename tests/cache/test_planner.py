"""cache.planner: read plans (generation keys, TTL, bypass reasons) and write plans (the
counters a commit bumps), from real SQL through the analyzer and a fake catalog.

`FakeCatalog` implements the `CatalogView` protocol over a small fixed schema:

    agent_view     view over agents
    busy_agents    view over agent_view and messages
    organizations  ON DELETE CASCADE to agents (a write reaches agents)
    meas           partitioned: meas_eu, meas_us (a write to a child reaches the parent)
    audited        has a user trigger (unknown reach)
    agents_id_seq, remote_rates, secrets: relations the catalog refuses for reads

Expected keys are spelled as strings (`k("g:agents#organization_id:-")`), not rebuilt with
`cache.keys`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pytest

from analyzer import AnalyzerOptions, Reason, StatementAnalysis, analyze
from cache.keys import GLOBAL_EPOCH, Namespace
from cache.planner import (
    Bypass,
    CachePolicy,
    CatalogView,
    ReadPlan,
    WritePlan,
    plan_read,
    plan_write,
)

P = pytest.param

NS = Namespace.of("db.internal:5432", "app")
OPTIONS = AnalyzerOptions(function_volatility={"bump_counter": "v", "tenant_name": "s"})
TWO_SCOPES = ("organization_id", "tenant_id")
OPTIONS_TWO_SCOPES = AnalyzerOptions(scope_columns=frozenset(TWO_SCOPES))


def k(name: str) -> str:
    return NS.prefix + name


EPOCHS = (GLOBAL_EPOCH, k("ddl"), k("epoch"))


def read_keys(*gens: str) -> tuple[str, ...]:
    """The sorted keys of a read depending on the epochs and `gens` (as `k` names)."""
    return tuple(sorted({*EPOCHS, *(k(g) for g in gens)}))


def _bare(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class FakeCatalog:
    """A `CatalogView` over fixed relations (see the module docstring)."""

    def __init__(
        self,
        views: Mapping[str, Iterable[str]],
        write_reach: Mapping[str, Iterable[str]],
        refused: Mapping[str, str],
        triggers: Iterable[str],
    ) -> None:
        self.views = {v: frozenset(reads) for v, reads in views.items()}
        self.write_reach = {t: frozenset(reach) for t, reach in write_reach.items()}
        self.refused = dict(refused)
        self.triggers = frozenset(triggers)

    def read_dependencies(self, tables: Iterable[str]) -> frozenset[str]:
        """The names themselves and, recursively, what views among them read."""
        seen: set[str] = set()
        stack = [_bare(t) for t in tables]
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(self.views.get(name, ()))
        return frozenset(seen)

    def write_targets(self, tables: Iterable[str]) -> tuple[frozenset[str], bool]:
        names = {_bare(t) for t in tables}
        reached = set(names)
        for name in names:
            reached |= self.write_reach.get(name, frozenset())
        return frozenset(reached), bool(reached & self.triggers)

    def cacheable_relations(self, tables: Iterable[str]) -> str | None:
        for name in sorted(self.read_dependencies(tables)):
            if name in self.refused:
                return self.refused[name]
        return None


CATALOG = FakeCatalog(
    views={"agent_view": ["agents"], "busy_agents": ["agent_view", "messages"]},
    write_reach={
        "organizations": ["agents"],
        "meas": ["meas_eu", "meas_us"],
        "meas_eu": ["meas"],
        "meas_us": ["meas"],
        "agent_view": ["agents"],
    },
    refused={
        "agents_id_seq": "sequence",
        "remote_rates": "foreign table",
        "secrets": "row level security",
    },
    triggers=["audited"],
)


def an(sql: str, options: AnalyzerOptions = OPTIONS) -> StatementAnalysis:
    return analyze(sql, options=options)


POLICY = CachePolicy()


@dataclass(frozen=True)
class Context:
    """What the planner is given besides the analysis."""

    catalog: CatalogView | None = CATALOG
    policy: CachePolicy = POLICY
    params: Sequence[str | None] = ()
    options: AnalyzerOptions = OPTIONS

    def read(self, sql: str) -> ReadPlan | str:
        return plan_read(an(sql, self.options), NS, self.catalog, self.policy, self.params)

    def write(self, sql: str) -> WritePlan | None:
        return plan_write(an(sql, self.options), NS, self.catalog, self.policy, self.params)

    def read_plan(self, sql: str) -> ReadPlan:
        plan = self.read(sql)
        assert isinstance(plan, ReadPlan), plan
        return plan

    def write_plan(self, sql: str) -> WritePlan:
        plan = self.write(sql)
        assert isinstance(plan, WritePlan), plan
        return plan


DEFAULT = Context()


# --- plan_read: cacheable reads --------------------------------------------------------

READS = [
    P("SELECT * FROM agents", (), ["g:agents"], {"agents"}, id="unscoped"),
    P("SELECT * FROM public.agents", (), ["g:agents"], {"agents"}, id="qualified"),
    P("SELECT 1", (), [], set(), id="no-table"),
    P(
        "SELECT * FROM agents WHERE organization_id = 'A'",
        (),
        ["g:agents#organization_id:-", "g:agents#organization_id=A"],
        {"agents"},
        id="pinned-literal",
    ),
    P(
        "SELECT * FROM public.agents a WHERE a.organization_id = 'A' AND a.id > 3",
        (),
        ["g:agents#organization_id:-", "g:agents#organization_id=A"],
        {"agents"},
        id="pinned-qualified-aliased",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id = 'A' OR id = 1",
        (),
        ["g:agents"],
        {"agents"},
        id="or-is-not-a-pin",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id IN ('A', 'B')",
        (),
        ["g:agents"],
        {"agents"},
        id="in-list-is-not-a-pin",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id = $1 AND id = $2",
        ("A", "7"),
        ["g:agents#organization_id:-", "g:agents#organization_id=A"],
        {"agents"},
        id="pinned-text-param",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id = $1",
        (None,),
        ["g:agents"],
        {"agents"},
        id="binary-param-unpinned",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id = $1",
        (),
        ["g:agents"],
        {"agents"},
        id="missing-param-unpinned",
    ),
    P(
        "SELECT * FROM agents WHERE tenant_id = 'T'",
        (),
        ["g:agents"],
        {"agents"},
        id="not-a-scope-column",
    ),
    P(
        "SELECT a.name, m.body FROM agents a JOIN messages m ON m.from_agent_id = a.id"
        " WHERE a.organization_id = 'A'",
        (),
        ["g:agents#organization_id:-", "g:agents#organization_id=A", "g:messages"],
        {"agents", "messages"},
        id="join-pins-one-table",
    ),
    P(
        "SELECT * FROM agent_view",
        (),
        ["g:agent_view", "g:agents"],
        {"agent_view", "agents"},
        id="view",
    ),
    P(
        "SELECT * FROM meas WHERE organization_id = 'A'",
        (),
        ["g:meas#organization_id:-", "g:meas#organization_id=A"],
        {"meas"},
        id="partitioned-parent-pinned",
    ),
]


@pytest.mark.parametrize(("sql", "params", "gens", "tables"), READS)
def test_plan_read(
    sql: str, params: tuple[str | None, ...], gens: list[str], tables: set[str]
) -> None:
    plan = Context(params=params).read_plan(sql)
    assert plan.gen_keys == read_keys(*gens)
    assert plan.tables == frozenset(tables)
    assert plan.ttl_ms == 60_000


VIEW_PINS = [
    P(
        "SELECT * FROM agent_view WHERE organization_id = 'A'",
        (),
        {"agent_view", "agents"},
        {"agents"},
        id="view",
    ),
    P(
        "SELECT * FROM busy_agents WHERE organization_id = $1",
        ("A",),
        {"busy_agents", "agent_view", "agents", "messages"},
        {"agent_view", "agents", "messages"},
        id="nested-views",
    ),
]


@pytest.mark.parametrize(("sql", "params", "tables", "underlying"), VIEW_PINS)
def test_plan_read_view_pin_not_carried_to_base_tables(
    sql: str, params: tuple[str | None, ...], tables: set[str], underlying: set[str]
) -> None:
    """What a view reads is read unscoped (the view's scope column need not be theirs);
    whether the view's own name is pinned does not matter: only writes through it bump it."""
    plan = Context(params=params).read_plan(sql)
    assert plan.tables == frozenset(tables)
    keys = set(plan.gen_keys)
    for table in underlying:
        assert k(f"g:{table}") in keys
        assert not [key for key in keys if key.startswith(k(f"g:{table}#"))]


TTLS = {"agents": 30, "messages": 10, "agent_view": 120}

TTL_CASES = [
    P("SELECT * FROM agents", CachePolicy(ttl=TTLS), 30_000, id="per-table"),
    P(
        "SELECT * FROM agents a JOIN messages m ON m.from_agent_id = a.id",
        CachePolicy(ttl=TTLS),
        10_000,
        id="smallest-of-join",
    ),
    P("SELECT * FROM tags", CachePolicy(ttl=TTLS, default_ttl=45), 45_000, id="default"),
    P("SELECT * FROM tags", CachePolicy(), 60_000, id="default-default"),
    P("SELECT 1", CachePolicy(ttl=TTLS, default_ttl=5), 5_000, id="no-table-default"),
    P(
        "SELECT * FROM tags t JOIN agents a ON a.id = t.agent_id",
        CachePolicy(ttl=TTLS, default_ttl=5),
        30_000,
        id="table-ttl-wins-over-smaller-default",
    ),
    P("SELECT * FROM agent_view", CachePolicy(ttl=TTLS), 30_000, id="view-base-table-smaller"),
    P("SELECT * FROM public.messages", CachePolicy(ttl=TTLS), 10_000, id="qualified"),
]


@pytest.mark.parametrize(("sql", "policy", "ttl_ms"), TTL_CASES)
def test_plan_read_ttl(sql: str, policy: CachePolicy, ttl_ms: int) -> None:
    assert Context(policy=policy).read_plan(sql).ttl_ms == ttl_ms


EXCLUDED = [
    P("SELECT * FROM audit_log", id="direct"),
    P("SELECT * FROM public.audit_log", id="qualified"),
    P("SELECT * FROM agents a JOIN audit_log l ON l.agent_id = a.id", id="in-join"),
    P("SELECT * FROM agents WHERE id IN (SELECT agent_id FROM audit_log)", id="in-subquery"),
    P("SELECT * FROM agent_view", id="base-table-of-view"),
]


@pytest.mark.parametrize("sql", EXCLUDED)
def test_plan_read_excluded_table(sql: str) -> None:
    policy = CachePolicy(exclude=frozenset({"audit_log", "agents"}))
    assert Context(policy=policy).read(sql) == Bypass.EXCLUDED_TABLE


def test_plan_read_excluded_table_without_catalog() -> None:
    policy = CachePolicy(exclude=frozenset({"audit_log"}), use_catalog=False)
    assert (
        Context(policy=policy, catalog=None).read("SELECT * FROM public.audit_log")
        == "excluded_table"
    )
    assert isinstance(Context(policy=policy, catalog=None).read("SELECT * FROM agents"), ReadPlan)


NOT_CACHEABLE = [
    P("SELECT * FROM agents FOR UPDATE", Reason.LOCKING_CLAUSE, id="for-update"),
    P("SELECT now()", Reason.STABLE_FUNCTION, id="stable-function"),
    P("SELECT random()", Reason.VOLATILE_FUNCTION, id="volatile-builtin"),
    P("SELECT bump_counter()", Reason.VOLATILE_FUNCTION, id="volatile-user-function"),
    P("SELECT mystery(1)", Reason.UNKNOWN_FUNCTION, id="unknown-function"),
    P("SELECT * FROM pg_class", Reason.SYSTEM_CATALOG, id="system-catalog"),
    P("SELECT * FROM agents TABLESAMPLE SYSTEM (10)", Reason.TABLESAMPLE, id="tablesample"),
    P("/* NO CACHE */ SELECT * FROM agents", Reason.HINT_NO_CACHE, id="hint"),
    P("SELECT 1; SELECT 2", Reason.MULTI_STATEMENT, id="multi"),
    P("UPDATE agents SET name = 'x'", Reason.NOT_A_READ, id="update"),
    P("SHOW search_path", Reason.NOT_A_READ, id="show"),
    P(
        "WITH d AS (DELETE FROM agents WHERE id = 1 RETURNING *) SELECT * FROM d",
        Reason.WRITES,
        id="writable-cte",
    ),
    P("SELEC * FROM agents", Reason.UNPARSEABLE, id="unparseable"),
    P("", Reason.EMPTY, id="empty"),
]


@pytest.mark.parametrize(("sql", "reason"), NOT_CACHEABLE)
def test_plan_read_reports_the_analyzer_reason(sql: str, reason: Reason) -> None:
    assert DEFAULT.read(sql) == reason.value
    # Before the catalog and configuration are consulted.
    assert Context(catalog=None).read(sql) == reason.value
    policy = CachePolicy(exclude=frozenset({"agents"}))
    assert Context(policy=policy).read(sql) == reason.value


@pytest.mark.parametrize(
    "sql",
    [
        P("SELECT * FROM agents", id="table"),
        P("SELECT * FROM agent_view WHERE organization_id = 'A'", id="view"),
        P("SELECT 1", id="no-table"),
    ],
)
def test_plan_read_catalog_configured_but_unknown(sql: str) -> None:
    assert Context(catalog=None).read(sql) == Bypass.CATALOG_UNKNOWN
    assert Context(catalog=None).read(sql) == "catalog_unknown"


NO_CATALOG = [
    P("SELECT * FROM agents", ["g:agents"], {"agents"}, id="table"),
    P(
        "SELECT * FROM public.agents a JOIN s2.messages m ON m.from_agent_id = a.id",
        ["g:agents", "g:messages"],
        {"agents", "messages"},
        id="qualified-names-bare",
    ),
    P(
        "SELECT * FROM public.agents WHERE organization_id = 'A'",
        ["g:agents#organization_id:-", "g:agents#organization_id=A"],
        {"agents"},
        id="pinned",
    ),
    P("SELECT * FROM agent_view", ["g:agent_view"], {"agent_view"}, id="view-name-only"),
]


@pytest.mark.parametrize(("sql", "gens", "tables"), NO_CATALOG)
def test_plan_read_without_catalog_connection(sql: str, gens: list[str], tables: set[str]) -> None:
    plan = Context(catalog=None, policy=CachePolicy(use_catalog=False)).read_plan(sql)
    assert plan.gen_keys == read_keys(*gens)
    assert plan.tables == frozenset(tables)


REFUSED = [
    P("SELECT * FROM agents_id_seq", id="sequence"),
    P("SELECT * FROM remote_rates", id="foreign-table"),
    P("SELECT * FROM public.secrets WHERE organization_id = 'A'", id="rls"),
    P("SELECT * FROM agents a JOIN secrets s ON s.agent_id = a.id", id="one-of-join"),
]


@pytest.mark.parametrize("sql", REFUSED)
def test_plan_read_relation_kind(sql: str) -> None:
    assert DEFAULT.read(sql) == Bypass.RELATION_KIND
    assert DEFAULT.read(sql) == "relation_kind"


def test_plan_read_relation_kind_through_a_view() -> None:
    catalog = FakeCatalog(
        views={"secret_view": ["secrets"]}, write_reach={}, refused={"secrets": "rls"}, triggers=[]
    )
    assert Context(catalog=catalog).read("SELECT * FROM secret_view") == Bypass.RELATION_KIND


def test_plan_read_scope_columns_from_policy() -> None:
    sql = "SELECT * FROM agents WHERE organization_id = 'A' AND tenant_id = 'T'"
    plan = Context(
        options=OPTIONS_TWO_SCOPES, policy=CachePolicy(scope_columns=TWO_SCOPES)
    ).read_plan(sql)
    assert plan.gen_keys == read_keys(
        "g:agents#organization_id:-",
        "g:agents#organization_id=A",
        "g:agents#tenant_id:-",
        "g:agents#tenant_id=T",
    )
    only_org = Context(options=OPTIONS_TWO_SCOPES).read_plan(sql)  # policy: organization_id only
    assert only_org.gen_keys == read_keys(
        "g:agents#organization_id:-", "g:agents#organization_id=A"
    )


# --- plan_write ---------------------------------------------------------------------------

UNSCOPED_WRITES = [
    P("INSERT INTO agents (id, name) VALUES (1, 'x')", "INSERT", id="insert"),
    P(
        "INSERT INTO agents (id, organization_id) VALUES (1, 'A'), (2, 'B')",
        "INSERT",
        id="insert-two-scopes",
    ),
    P("INSERT INTO agents SELECT * FROM staged_agents", "INSERT", id="insert-select"),
    P("UPDATE agents SET name = 'x' WHERE id = 1", "UPDATE", id="update"),
    P("UPDATE public.agents SET name = 'x'", "UPDATE", id="update-all-qualified"),
    P("DELETE FROM agents WHERE id = 1", "DELETE", id="delete"),
    P(
        "DELETE FROM agents WHERE organization_id = 'A' OR id = 1",
        "DELETE",
        id="delete-or-not-confined",
    ),
    P(
        "MERGE INTO agents a USING staged_agents s ON a.id = s.id"
        " WHEN MATCHED THEN UPDATE SET name = s.name",
        "MERGE",
        id="merge",
    ),
    P("TRUNCATE agents", "TRUNCATE", id="truncate"),
    P("COPY agents FROM STDIN", "COPY_FROM", id="copy-from"),
    P(
        "UPDATE agents SET organization_id = 'B' WHERE organization_id = 'A'",
        "UPDATE",
        id="update-assigns-scope-column",
    ),
    P(
        "WITH d AS (DELETE FROM agents WHERE id = 1 RETURNING *) SELECT * FROM d",
        "SELECT",
        id="writable-cte",
    ),
]


@pytest.mark.parametrize(("sql", "operation"), UNSCOPED_WRITES)
def test_plan_write_unscoped(sql: str, operation: str) -> None:
    plan = DEFAULT.write_plan(sql)
    assert plan.bumps == {k("g:agents"), k("g:agents#organization_id:-")}
    assert plan.table == "agents"
    assert plan.tables == {"agents"}
    assert plan.operation == operation
    assert plan.scope is None
    assert not plan.whole_database
    assert not plan.catalog_changed
    assert plan.catalog_id == id(CATALOG)


CONFINED_WRITES = [
    P("UPDATE agents SET name = 'x' WHERE organization_id = 'A'", (), "A", id="update"),
    P(
        "UPDATE public.agents a SET name = 'x' WHERE a.organization_id = 'A' AND a.id = 1",
        (),
        "A",
        id="update-qualified-aliased",
    ),
    P("DELETE FROM agents WHERE organization_id = 'A'", (), "A", id="delete"),
    P("INSERT INTO agents (id, organization_id) VALUES (1, 'A')", (), "A", id="insert"),
    P(
        "INSERT INTO agents (id, organization_id) VALUES (1, $1), (2, $1)",
        ("A",),
        "A",
        id="insert-param-rows",
    ),
    P("UPDATE agents SET name = $2 WHERE organization_id = $1", ("A", "x"), "A", id="param"),
]


@pytest.mark.parametrize(("sql", "params", "scope"), CONFINED_WRITES)
def test_plan_write_confined(sql: str, params: tuple[str | None, ...], scope: str) -> None:
    plan = Context(params=params).write_plan(sql)
    assert plan.bumps == {k("g:agents"), k(f"g:agents#organization_id={scope}")}
    assert k("g:agents#organization_id:-") not in plan.bumps
    assert plan.scope == scope
    assert plan.table == "agents"
    assert not plan.whole_database


@pytest.mark.parametrize(
    "params",
    [P((None, "x"), id="binary-param"), P((), id="missing-param")],
)
def test_plan_write_unresolved_scope_value_is_unscoped(params: tuple[str | None, ...]) -> None:
    sql = "UPDATE agents SET name = $2 WHERE organization_id = $1"
    plan = Context(params=params).write_plan(sql)
    assert plan.bumps == {k("g:agents"), k("g:agents#organization_id:-")}
    assert plan.scope is None


TWO_SCOPE_WRITES = [
    P(
        "UPDATE agents SET name = 'x' WHERE tenant_id = 'T'",
        {"g:agents", "g:agents#organization_id:-", "g:agents#tenant_id=T"},
        id="confined-on-tenant",
    ),
    P(
        "DELETE FROM agents WHERE organization_id = 'A' AND tenant_id = 'T'",
        {"g:agents", "g:agents#organization_id=A", "g:agents#tenant_id=T"},
        id="confined-on-both",
    ),
    P(
        "UPDATE agents SET tenant_id = 'U' WHERE organization_id = 'A' AND tenant_id = 'T'",
        {"g:agents", "g:agents#organization_id=A", "g:agents#tenant_id:-"},
        id="assigns-one-scope-column",
    ),
    P(
        "UPDATE agents SET name = 'x' WHERE id = 1",
        {"g:agents", "g:agents#organization_id:-", "g:agents#tenant_id:-"},
        id="unconfined",
    ),
]


@pytest.mark.parametrize(("sql", "bumps"), TWO_SCOPE_WRITES)
def test_plan_write_two_scope_columns(sql: str, bumps: set[str]) -> None:
    ctx = Context(options=OPTIONS_TWO_SCOPES, policy=CachePolicy(scope_columns=TWO_SCOPES))
    assert ctx.write_plan(sql).bumps == {k(b) for b in bumps}


def test_plan_write_confined_on_a_column_outside_the_policy_is_unscoped() -> None:
    sql = "UPDATE agents SET name = 'x' WHERE tenant_id = 'T'"
    plan = Context(options=OPTIONS_TWO_SCOPES).write_plan(sql)  # policy: organization_id only
    assert plan.bumps == {k("g:agents"), k("g:agents#organization_id:-")}


WHOLE_DATABASE = [
    P("CREATE TABLE x (id int)", True, id="create-table"),
    P("ALTER TABLE agents ADD COLUMN x int", True, id="alter-table"),
    P("DROP VIEW agent_view", True, id="drop-view"),
    P("GRANT SELECT ON agents TO bob", True, id="grant"),
    P("REVOKE SELECT ON agents FROM bob", True, id="revoke"),
    P("CALL refresh_all()", True, id="call"),
    P("DO $$ BEGIN PERFORM 1; END $$", True, id="do"),
    P("EXECUTE stmt(1)", True, id="sql-execute"),
    P("SELECT bump_counter()", False, id="volatile-user-function"),
    P("SELECT mystery(1)", False, id="unknown-function"),
    P("UPDATE agents SET n = bump_counter() WHERE id = 1", False, id="update-volatile"),
    P("TRUNCATE organizations CASCADE", False, id="truncate-cascade"),
    P("UPDATE audited SET x = 1 WHERE id = 1", False, id="trigger"),
    P("INSERT INTO public.audited (x) VALUES (1)", False, id="trigger-qualified"),
    P("DELETE FROM meas_eu WHERE id = 1", False, id="reach-includes-trigger-table"),
]


@pytest.mark.parametrize(("sql", "catalog_changed"), WHOLE_DATABASE)
def test_plan_write_whole_database(sql: str, catalog_changed: bool) -> None:
    catalog = FakeCatalog(
        views={}, write_reach={"meas_eu": ["meas", "audited"]}, refused={}, triggers=["audited"]
    )
    plan = Context(catalog=catalog).write_plan(sql)
    assert plan.whole_database
    assert plan.table == "*"
    assert plan.catalog_changed is catalog_changed
    expected = {k("epoch"), k("ddl")} if catalog_changed else {k("epoch")}
    assert plan.bumps == expected
    assert GLOBAL_EPOCH not in plan.bumps
    assert plan.scope is None


@pytest.mark.parametrize(
    "sql",
    [
        P("UPDATE agents SET name = 'x' WHERE organization_id = 'A'", id="confined"),
        P("INSERT INTO agents (id) VALUES (1)", id="insert"),
        P("TRUNCATE agents", id="truncate"),
    ],
)
def test_plan_write_without_catalog_is_whole_database(sql: str) -> None:
    for policy in (CachePolicy(), CachePolicy(use_catalog=False)):
        plan = Context(catalog=None, policy=policy).write_plan(sql)
        assert plan.whole_database
        assert plan.bumps == {k("epoch")}
        assert plan.tables == {"agents"}
        assert not plan.catalog_changed
        assert plan.catalog_id == 0


def test_plan_write_whole_database_names_tables_or_star() -> None:
    assert DEFAULT.write_plan("CALL refresh_all()").tables == {"*"}
    assert DEFAULT.write_plan("ALTER TABLE public.agents ADD COLUMN x int").tables == {"agents"}


NOT_WRITES = [
    P("SELECT * FROM agents", id="select"),
    P("SELECT * FROM agents WHERE organization_id = 'A'", id="select-pinned"),
    P("SELECT random()", id="volatile-builtin"),
    P("SELECT * FROM agents FOR UPDATE", id="select-for-update"),
    P("COPY agents TO STDOUT", id="copy-to"),
    P("BEGIN", id="begin"),
    P("SET search_path = app", id="set"),
    P("SHOW search_path", id="show"),
    P("", id="empty"),
]


@pytest.mark.parametrize("sql", NOT_WRITES)
def test_plan_write_none_for_statements_that_write_nothing(sql: str) -> None:
    assert DEFAULT.write(sql) is None
    assert Context(catalog=None).write(sql) is None


CATALOG_TARGETS = [
    P(
        "DELETE FROM organizations WHERE id = 'X'",
        {"organizations", "agents"},
        {
            "g:organizations",
            "g:organizations#organization_id:-",
            "g:agents",
            "g:agents#organization_id:-",
        },
        id="fk-cascade",
    ),
    P(
        "INSERT INTO meas_eu (id, organization_id) VALUES (1, 'A')",
        {"meas_eu", "meas"},
        {"g:meas_eu", "g:meas_eu#organization_id=A", "g:meas", "g:meas#organization_id:-"},
        id="partition-confined-parent-unscoped",
    ),
    P(
        "UPDATE meas SET v = 1 WHERE id = 3",
        {"meas", "meas_eu", "meas_us"},
        {
            "g:meas",
            "g:meas#organization_id:-",
            "g:meas_eu",
            "g:meas_eu#organization_id:-",
            "g:meas_us",
            "g:meas_us#organization_id:-",
        },
        id="partitioned-parent-reaches-children",
    ),
    P(
        "UPDATE agent_view SET name = 'x' WHERE organization_id = 'A'",
        {"agent_view", "agents"},
        {
            "g:agent_view",
            "g:agent_view#organization_id=A",
            "g:agents",
            "g:agents#organization_id:-",
        },
        id="through-view",
    ),
]


@pytest.mark.parametrize(("sql", "tables", "bumps"), CATALOG_TARGETS)
def test_plan_write_catalog_targets(sql: str, tables: set[str], bumps: set[str]) -> None:
    plan = DEFAULT.write_plan(sql)
    assert plan.tables == frozenset(tables)
    assert plan.bumps == {k(b) for b in bumps}
    assert not plan.whole_database
    assert plan.catalog_id == id(CATALOG)


RELATIONS = {
    "agents": ("messages.from_agent_id",),
    "organizations": ("agents.organization_id", "public.billing.organization_id"),
}
RELATED = [
    P(
        "UPDATE agents SET name = 'x' WHERE id = 1",
        (),
        {"g:agents", "g:agents#organization_id:-", "g:messages", "g:messages#organization_id:-"},
        {"agents", "messages"},
        id="agents-to-messages",
    ),
    P(
        "UPDATE agents SET name = 'x' WHERE organization_id = 'A'",
        (),
        {"g:agents", "g:agents#organization_id=A", "g:messages", "g:messages#organization_id:-"},
        {"agents", "messages"},
        id="confined-write-related-unscoped",
    ),
    P(
        "UPDATE organizations SET name = 'n' WHERE id = 'X'",
        (),
        {
            "g:organizations",
            "g:organizations#organization_id:-",
            "g:agents",
            "g:agents#organization_id=X",
            "g:billing",
            "g:billing#organization_id=X",
        },
        {"organizations", "agents", "billing"},
        id="organization-scope-carried",
    ),
    P(
        "UPDATE public.organizations o SET name = 'n' WHERE o.id = $1",
        ("X",),
        {
            "g:organizations",
            "g:organizations#organization_id:-",
            "g:agents",
            "g:agents#organization_id=X",
            "g:billing",
            "g:billing#organization_id=X",
        },
        {"organizations", "agents", "billing"},
        id="organization-scope-param",
    ),
    P(
        "UPDATE organizations SET name = 'n' WHERE id = $1",
        (None,),
        {
            "g:organizations",
            "g:organizations#organization_id:-",
            "g:agents",
            "g:agents#organization_id:-",
            "g:billing",
            "g:billing#organization_id:-",
        },
        {"organizations", "agents", "billing"},
        id="organization-binary-param-unscoped",
    ),
    P(
        "UPDATE organizations SET name = 'n' WHERE id IN ('X', 'Y')",
        (),
        {
            "g:organizations",
            "g:organizations#organization_id:-",
            "g:agents",
            "g:agents#organization_id:-",
            "g:billing",
            "g:billing#organization_id:-",
        },
        {"organizations", "agents", "billing"},
        id="organization-two-ids-unscoped",
    ),
    P(
        "UPDATE organizations SET name = 'n' WHERE plan = 'pro'",
        (),
        {
            "g:organizations",
            "g:organizations#organization_id:-",
            "g:agents",
            "g:agents#organization_id:-",
            "g:billing",
            "g:billing#organization_id:-",
        },
        {"organizations", "agents", "billing"},
        id="organization-not-pinned",
    ),
]


@pytest.mark.parametrize(("sql", "params", "bumps", "tables"), RELATED)
def test_plan_write_relations(
    sql: str, params: tuple[str | None, ...], bumps: set[str], tables: set[str]
) -> None:
    catalog = FakeCatalog(views={}, write_reach={}, refused={}, triggers=[])
    plan = Context(
        catalog=catalog, policy=CachePolicy(relations=RELATIONS), params=params
    ).write_plan(sql)
    assert plan.bumps == {k(b) for b in bumps}
    assert plan.tables == frozenset(tables)
    assert not plan.whole_database


def test_plan_write_organization_scope_excludes_unscoped_counter() -> None:
    catalog = FakeCatalog(views={}, write_reach={}, refused={}, triggers=[])
    policy = CachePolicy(relations={"organizations": ("agents.organization_id",)})
    plan = Context(catalog=catalog, policy=policy).write_plan(
        "UPDATE organizations SET name = 'n' WHERE id = 'X'"
    )
    assert k("g:agents#organization_id=X") in plan.bumps
    assert k("g:agents#organization_id:-") not in plan.bumps


def test_plan_write_catalog_id_is_the_catalog_used() -> None:
    other = FakeCatalog(views={}, write_reach={}, refused={}, triggers=[])
    sql = "UPDATE agents SET name = 'x' WHERE id = 1"
    assert Context(catalog=other).write_plan(sql).catalog_id == id(other)
    assert Context(catalog=CATALOG).write_plan(sql).catalog_id == id(CATALOG)
    assert id(other) != id(CATALOG)


# --- soundness: a write that can change a read's result must reach one of its keys ------

# (read, write, can the write change what the read returns?)  The fake catalog's views and
# write reach apply; "can change" is judged from the SQL, not from the planner.
SOUNDNESS = [
    P(
        "SELECT * FROM agents WHERE organization_id = 'A'",
        "UPDATE agents SET name = 'x' WHERE organization_id = 'A'",
        True,
        id="pinned-A/confined-A",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id = 'A'",
        "UPDATE agents SET name = 'x' WHERE organization_id = 'B'",
        False,
        id="pinned-A/confined-B",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id = 'A'",
        "UPDATE agents SET name = 'x' WHERE id = 1",
        True,
        id="pinned-A/unscoped",
    ),
    P(
        "SELECT * FROM agents",
        "DELETE FROM agents WHERE organization_id = 'B'",
        True,
        id="unscoped/confined-B",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id = 'A'",
        "UPDATE agents SET organization_id = 'A' WHERE organization_id = 'B'",
        True,
        id="pinned-A/moves-rows-into-A",
    ),
    P(
        "SELECT * FROM agent_view WHERE organization_id = 'A'",
        "UPDATE agents SET name = 'x' WHERE organization_id = 'B'",
        True,  # the view's organization_id need not be agents.organization_id
        id="view-pinned-A/base-confined-B",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id = 'A'",
        "DELETE FROM organizations WHERE id = 'B'",
        True,  # cascade: the catalog says it reaches agents, scope unknown
        id="pinned-A/cascade",
    ),
    P(
        "SELECT * FROM meas WHERE organization_id = 'A'",
        "INSERT INTO meas_eu (id, organization_id) VALUES (1, 'A')",
        True,
        id="parent-pinned-A/partition-insert-A",
    ),
    P(
        "SELECT * FROM messages",
        "UPDATE agents SET name = 'x' WHERE organization_id = 'A'",
        False,
        id="other-table",
    ),
    # The same bare name read twice, pinned once and once not: the unpinned read sees
    # rows of every organization.
    P(
        "SELECT * FROM agents WHERE organization_id = 'A'"
        " AND id IN (SELECT agent_id FROM public.agents)",
        "UPDATE agents SET name = 'x' WHERE organization_id = 'B'",
        True,
        id="pinned-and-unpinned-spellings",
    ),
    P(
        "SELECT * FROM s1.agents a JOIN s2.agents b ON a.id = b.id WHERE a.organization_id = 'A'",
        "UPDATE s2.agents SET name = 'x' WHERE organization_id = 'B'",
        True,
        id="two-schemas-one-pinned",
    ),
    P(
        "SELECT * FROM agent_view v JOIN agents a ON a.id = v.id WHERE a.organization_id = 'A'",
        "UPDATE agents SET name = 'x' WHERE organization_id = 'B'",
        True,  # agent_view reads agents of every organization
        id="base-pinned-and-read-through-view",
    ),
]


def _check(read_sql: str, write_sql: str, can_change: bool, ctx: Context = DEFAULT) -> None:
    keys = set(ctx.read_plan(read_sql).gen_keys)
    bumps = ctx.write_plan(write_sql).bumps
    shared = keys & bumps
    assert bool(shared) is can_change, f"read keys {sorted(keys)}, write bumps {sorted(bumps)}"


@pytest.mark.parametrize(("read_sql", "write_sql", "can_change"), SOUNDNESS)
def test_scope_soundness(read_sql: str, write_sql: str, can_change: bool) -> None:
    _check(read_sql, write_sql, can_change)


TWO_SCOPE_SOUNDNESS = [
    P(
        "SELECT * FROM agents WHERE organization_id = 'A'",
        "UPDATE agents SET name = 'x' WHERE tenant_id = 'T'",
        True,  # tenant T may have rows of organization A
        id="pinned-org/confined-tenant",
    ),
    P(
        "SELECT * FROM agents WHERE tenant_id = 'T'",
        "UPDATE agents SET name = 'x' WHERE organization_id = 'A'",
        True,
        id="pinned-tenant/confined-org",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id = 'A' AND tenant_id = 'T'",
        "UPDATE agents SET name = 'x' WHERE organization_id = 'A' AND tenant_id = 'T'",
        True,
        id="pinned-both/confined-both",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id = 'A'",
        "UPDATE agents SET name = 'x' WHERE organization_id = 'B' AND tenant_id = 'T'",
        False,
        id="pinned-org-A/confined-org-B",
    ),
]


@pytest.mark.parametrize(("read_sql", "write_sql", "can_change"), TWO_SCOPE_SOUNDNESS)
def test_scope_soundness_two_scope_columns(read_sql: str, write_sql: str, can_change: bool) -> None:
    policy = CachePolicy(scope_columns=TWO_SCOPES)
    _check(read_sql, write_sql, can_change, Context(policy=policy, options=OPTIONS_TWO_SCOPES))
