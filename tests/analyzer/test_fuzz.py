"""analyze() never raises, and never calls anything cacheable that could write."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer import Analysis, Kind, analyze

CORPUS = [
    "SELECT a.id, b.name FROM agents a JOIN orgs b ON a.org = b.id WHERE a.organization_id = $1",
    "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
    "INSERT INTO t (organization_id, n) VALUES ('o', 1) ON CONFLICT (id) DO UPDATE SET n = 2",
    "UPDATE t SET a = u.a FROM u WHERE t.id = u.id AND t.organization_id = 'x'",
    "DELETE FROM t USING u WHERE t.id = u.id",
    "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE x = 'now') FOR UPDATE",
    "SET search_path TO a, \"B\"; SELECT set_config('x.y', 'v', false)",
    "BEGIN ISOLATION LEVEL SERIALIZABLE; COMMIT",
    "SELECT count(*) FROM t TABLESAMPLE SYSTEM (5) WHERE s = 'it''s' /* query='a.b' */",
    "EXPLAIN ANALYZE MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
    "CREATE TEMP TABLE x AS SELECT * FROM pg_class",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r LIMIT 3",
    "SELECT $$dollar$$, E'\\x41', B'101', 1.5e3, -7, NULL, true",
]


def _check(result: Analysis) -> None:
    assert isinstance(result, Analysis)
    if result.cacheable:
        assert result.kind is Kind.SELECT
        assert not result.tables_written
        assert not result.writes_unknown
        assert result.reason is None
    else:
        assert result.reason is not None
    result.fingerprint  # noqa: B018 - must not raise either


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = list(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["delete", "insert", "duplicate"]))
        pos = draw(st.integers(0, max(len(text) - 1, 0)))
        if op == "delete" and text:
            del text[pos]
        elif op == "insert":
            text.insert(pos, draw(st.sampled_from(list("'\"$;()*/-\\ ,.=0aZ\n\x00é"))))
        elif text:
            text.insert(pos, text[pos])
    return "".join(text)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(sql: str) -> None:
    _check(analyze(sql))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_sql_never_raises(sql: str) -> None:
    _check(analyze(sql))


def test_deeply_nested_input_does_not_raise() -> None:
    _check(analyze("SELECT " + "(" * 5000 + "1" + ")" * 5000))
    _check(analyze("SELECT " + "-" * 10000 + "1"))
