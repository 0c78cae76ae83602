"""WHERE keys, scope pins and write confinement (DESIGN.md "Scoped invalidation")."""

from __future__ import annotations

import pytest

from analyzer import AnalyzerOptions, KeyValue, WhereKey, analyze

P = pytest.param
L = lambda v: KeyValue(literal=v)  # noqa: E731
Q = lambda n: KeyValue(param=n)  # noqa: E731
ORG = "organization_id"

PIN_CASES = [
    P("SELECT * FROM agents WHERE organization_id = 'org-1'", {"agents": L("org-1")}, id="literal"),
    P("SELECT * FROM agents WHERE organization_id = 42", {"agents": L("42")}, id="integer"),
    P("SELECT * FROM agents WHERE organization_id = $1", {"agents": Q(1)}, id="param"),
    P("SELECT * FROM agents WHERE $2 = organization_id", {"agents": Q(2)}, id="reversed"),
    P("SELECT * FROM agents WHERE organization_id = $1::uuid", {"agents": Q(1)}, id="cast-param"),
    P(
        "SELECT * FROM agents WHERE organization_id = $1 AND status = 'a' AND id > 3",
        {"agents": Q(1)},
        id="anded",
    ),
    P(
        "SELECT * FROM agents WHERE (organization_id = $1 AND a = 1) AND b = 2",
        {"agents": Q(1)},
        id="nested-and",
    ),
    P("SELECT * FROM agents a WHERE a.organization_id = 'o'", {"agents": L("o")}, id="alias"),
    P("SELECT * FROM agents WHERE agents.organization_id = 'o'", {"agents": L("o")}, id="name"),
    P(
        "SELECT * FROM public.agents WHERE public.agents.organization_id = 'o'",
        {"public.agents": L("o")},
        id="qualified",
    ),
    P("SELECT * FROM agents WHERE organization_id IN ('o')", {"agents": L("o")}, id="in-one"),
    P(
        "SELECT * FROM a JOIN b ON a.id = b.a_id WHERE a.organization_id = $1 "
        "AND b.organization_id = $2",
        {"a": Q(1), "b": Q(2)},
        id="join-per-table",
    ),
    P("SELECT * FROM agents WHERE organization_id = 'o' OR x = 1", {}, id="or-not-pinned"),
    P("SELECT * FROM agents WHERE NOT organization_id = 'o'", {}, id="not-not-pinned"),
    P("SELECT * FROM agents WHERE organization_id IN ('o', 'p')", {}, id="in-two-not-pinned"),
    P("SELECT * FROM agents WHERE organization_id = ANY($1)", {}, id="any-not-pinned"),
    P("SELECT * FROM agents WHERE organization_id <> 'o'", {}, id="not-equal"),
    P("SELECT * FROM agents WHERE organization_id = other_col", {}, id="column-column"),
    P(
        "SELECT * FROM agents WHERE organization_id = 'o' AND organization_id = 'p'",
        {},
        id="contradictory-pins",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id = 'o' AND organization_id = 'o'",
        {"agents": L("o")},
        id="repeated-same-pin",
    ),
    P("SELECT * FROM a JOIN b ON true WHERE organization_id = 'o'", {}, id="unqualified-in-join"),
    P(
        "SELECT * FROM agents a1 JOIN agents a2 ON true WHERE a1.organization_id = 'o'",
        {},
        id="self-join-not-pinned",
    ),
    P(
        "SELECT * FROM agents WHERE organization_id = 'o' AND id IN "
        "(SELECT id FROM agents WHERE organization_id = 'p')",
        {},
        id="table-also-in-subquery-not-pinned",
    ),
    P(
        "SELECT * FROM agents WHERE id IN (SELECT id FROM x WHERE organization_id = 'o')",
        {},
        id="subquery-where-not-top-level",
    ),
    P(
        "SELECT * FROM a WHERE organization_id = 'o' UNION SELECT * FROM b",
        {},
        id="set-operation",
    ),
    P("WITH c AS (SELECT * FROM t) SELECT * FROM c WHERE organization_id = 'o'", {}, id="cte"),
    P(
        "SELECT * FROM (SELECT * FROM t) s WHERE s.organization_id = 'o'",
        {},
        id="subquery-alias",
    ),
]


@pytest.mark.parametrize(("sql", "pins"), PIN_CASES)
def test_scope_pins(sql: str, pins: dict[str, KeyValue]) -> None:
    scope = analyze(sql).scope
    assert {t: dict(cols) for t, cols in scope.pinned.items()} == {
        t: {ORG: v} for t, v in pins.items()
    }


CONFINED_CASES = [
    P("UPDATE agents SET name = 'x' WHERE organization_id = $1", Q(1), id="update-pinned"),
    P("UPDATE agents a SET name = 'x' WHERE a.organization_id = 'o'", L("o"), id="update-alias"),
    P("UPDATE agents SET organization_id = 'p' WHERE organization_id = 'o'", None, id="moves-row"),
    P("UPDATE agents SET name = 'x'", None, id="update-unscoped"),
    P("UPDATE agents SET name = 'x' WHERE organization_id = 'o' OR 1 = 1", None, id="update-or"),
    P(
        "UPDATE agents SET n = u.n FROM u WHERE agents.id = u.id AND agents.organization_id = $1",
        Q(1),
        id="update-from",
    ),
    P(
        "UPDATE agents SET n = u.n FROM u WHERE agents.id = u.id AND u.organization_id = $1",
        None,
        id="update-from-other-table-pinned",
    ),
    P("DELETE FROM agents WHERE organization_id = 'o' AND id = 3", L("o"), id="delete-pinned"),
    P("DELETE FROM agents WHERE id = 3", None, id="delete-unscoped"),
    P(
        "DELETE FROM agents USING u WHERE agents.organization_id = 'o' AND u.id = agents.id",
        L("o"),
        id="delete-using",
    ),
    P("INSERT INTO agents (organization_id, n) VALUES ('o', 1)", L("o"), id="insert-one-row"),
    P(
        "INSERT INTO agents (n, organization_id) VALUES (1, $1), (2, $1)",
        Q(1),
        id="insert-rows-same-param",
    ),
    P(
        "INSERT INTO agents (organization_id, n) VALUES ('o', 1), ('p', 2)",
        None,
        id="insert-rows-differ",
    ),
    P("INSERT INTO agents (n) VALUES (1)", None, id="insert-without-scope-column"),
    P("INSERT INTO agents SELECT * FROM other", None, id="insert-select"),
    P(
        "INSERT INTO agents (organization_id, id) VALUES ('o', 1) "
        "ON CONFLICT (id) DO UPDATE SET n = 1",
        None,
        id="upsert-may-touch-other-scope",
    ),
    P(
        "INSERT INTO agents (organization_id, id) VALUES ('o', 1) ON CONFLICT DO NOTHING",
        L("o"),
        id="insert-do-nothing",
    ),
    P(
        "WITH d AS (DELETE FROM logs RETURNING *) "
        "UPDATE agents SET n = 1 WHERE organization_id = 'o'",
        None,
        id="also-writes-another-table",
    ),
    P("UPDATE agents SET n = my_func() WHERE organization_id = 'o'", None, id="unknown-func"),
    P(
        "MERGE INTO agents USING s ON agents.id = s.id WHEN MATCHED THEN DELETE",
        None,
        id="merge-never",
    ),
]


@pytest.mark.parametrize(("sql", "value"), CONFINED_CASES)
def test_write_confinement(sql: str, value: KeyValue | None) -> None:
    scope = analyze(sql).scope
    assert scope.confined is (value is not None)
    assert scope.confined_to.get(ORG) == value


WHERE_KEY_CASES = [
    P("SELECT * FROM t WHERE id = 5", {"t": [WhereKey("id", "=", (L("5"),))]}, id="eq-literal"),
    P("SELECT * FROM t WHERE id = $1", {"t": [WhereKey("id", "=", (Q(1),))]}, id="eq-param"),
    P(
        "SELECT * FROM t WHERE id IN (1, 2, $3)",
        {"t": [WhereKey("id", "in", (L("1"), L("2"), Q(3)))]},
        id="in-list",
    ),
    P("SELECT * FROM t WHERE id = ANY($1)", {"t": [WhereKey("id", "any", (Q(1),))]}, id="any"),
    P(
        "SELECT * FROM t WHERE id = ANY(ARRAY[1, 2])",
        {"t": [WhereKey("id", "any", (L("1"), L("2")))]},
        id="any-array",
    ),
    P(
        "SELECT * FROM t WHERE a = 'x' AND b = true AND c = -1.5",
        {
            "t": [
                WhereKey("a", "=", (L("x"),)),
                WhereKey("b", "=", (L("true"),)),
                WhereKey("c", "=", (L("-1.5"),)),
            ]
        },
        id="literal-types",
    ),
    P("SELECT * FROM t WHERE id = NULL", {}, id="eq-null-no-key"),
    P("SELECT * FROM t WHERE id > 5", {}, id="range-no-key"),
    P("SELECT * FROM t WHERE id = 5 OR id = 6", {}, id="or-no-key"),
    P("SELECT * FROM t WHERE id IN (SELECT 1)", {}, id="in-subquery-no-key"),
    P("SELECT * FROM t WHERE lower(name) = 'x'", {}, id="expression-no-key"),
    P(
        "SELECT * FROM a JOIN b ON true WHERE a.id = 1 AND b.k = $1",
        {"a": [WhereKey("id", "=", (L("1"),))], "b": [WhereKey("k", "=", (Q(1),))]},
        id="per-table",
    ),
    P("UPDATE t SET a = 1 WHERE id = 7", {"t": [WhereKey("id", "=", (L("7"),))]}, id="update"),
    P("DELETE FROM t WHERE id = $1", {"t": [WhereKey("id", "=", (Q(1),))]}, id="delete"),
]


@pytest.mark.parametrize(("sql", "keys"), WHERE_KEY_CASES)
def test_where_keys(sql: str, keys: dict[str, list[WhereKey]]) -> None:
    found = analyze(sql).where_keys
    assert {t: list(k) for t, k in found.items()} == keys


def test_custom_scope_columns() -> None:
    options = AnalyzerOptions(scope_columns=frozenset({"tenant_id", "team_id"}))
    scope = analyze("SELECT * FROM t WHERE tenant_id = 1 AND team_id = $1", options=options).scope
    assert dict(scope.pinned["t"]) == {"tenant_id": L("1"), "team_id": Q(1)}
    assert scope.value("tenant_id") == L("1")


def test_scope_value_resolves_parameters() -> None:
    value = analyze("SELECT * FROM t WHERE organization_id = $2").scope.value(ORG, "t")
    assert value is not None
    assert value.resolve(["a", "org-7"]) == "org-7"
    assert L("x").resolve([]) == "x"


@pytest.mark.parametrize(
    ("sql", "columns"),
    [
        P("SELECT id, t.name, * FROM t", ("id", "t.name", "*"), id="select-columns"),
        P("SELECT lower(x) AS y, z FROM t", ("z",), id="expressions-skipped"),
        P("UPDATE t SET a = 1, b = 2", ("a", "b"), id="update-set"),
        P("INSERT INTO t (x, y) VALUES (1, 2)", ("x", "y"), id="insert-columns"),
        P("DELETE FROM t", (), id="delete-none"),
    ],
)
def test_columns(sql: str, columns: tuple[str, ...]) -> None:
    assert analyze(sql).columns == columns


@pytest.mark.parametrize(
    ("sql", "functions"),
    [
        P("SELECT lower(x), app.f(y), count(*) FROM t", {"lower", "app.f", "count"}, id="mixed"),
        P("SELECT now(), current_user", {"now", "current_user"}, id="sql-value-functions"),
        P("SELECT extract(year FROM d) FROM t", {"extract"}, id="sql-syntax-unqualified"),
        P("SELECT pg_catalog.lower('A')", {"pg_catalog.lower"}, id="written-qualified"),
        P("CALL app.proc(1)", {"app.proc"}, id="call"),
        P("SELECT 1", set(), id="none"),
    ],
)
def test_functions(sql: str, functions: set[str]) -> None:
    assert analyze(sql).functions == functions
