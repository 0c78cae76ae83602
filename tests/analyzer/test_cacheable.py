"""May this statement be served from the cache? And if not, why (PITFALLS section D)."""

from __future__ import annotations

import pytest

from analyzer import AnalyzerOptions, Reason, analyze

P = pytest.param

CACHEABLE = [
    P("SELECT * FROM agents", id="plain"),
    P("SELECT 1", id="no-table-literal"),
    P("SELECT lower('A')", id="no-table-immutable-function"),
    P("VALUES (1), (2)", id="values"),
    P("SELECT * FROM agents WHERE id = $1", id="parameter"),
    P("SELECT a.*, b.x FROM a JOIN b ON a.id = b.id WHERE a.k = 'v'", id="join"),
    P("SELECT count(*), sum(x), avg(x), min(x), max(x) FROM t", id="aggregates"),
    P("SELECT x, row_number() OVER (ORDER BY x) FROM t", id="window-function"),
    P("SELECT coalesce(a, b), nullif(a, b), greatest(a, b) FROM t", id="sql-constructs"),
    P("SELECT CASE WHEN a THEN 1 ELSE 2 END FROM t", id="case"),
    P("SELECT upper(name), abs(n), round(f), substr(s, 1, 2), md5(s) FROM t", id="immutables"),
    P("SELECT * FROM t WHERE x IN (SELECT x FROM u)", id="subquery"),
    P("WITH x AS (SELECT * FROM t) SELECT * FROM x", id="cte"),
    P("SELECT * FROM t ORDER BY x LIMIT 10 OFFSET 5", id="limit-offset"),
    P("SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b", id="distinct-on"),
    P("SELECT x::int, y::text, z::numeric(10, 2) FROM t", id="harmless-casts"),
    P("SELECT * FROM t WHERE s = 'a''b'", id="escaped-quote"),
    P("SELECT array_agg(x), string_agg(s, ',') FROM t", id="array-string-agg"),
    P("TABLE agents", id="table-command"),
    P("SELECT * FROM t WHERE created_at > '2024-01-01'", id="date-literal-uncast"),
    P("SELECT * FROM pgbench_accounts WHERE aid = $1", id="pg-prefix-needs-underscore"),
    P("SELECT 'information_schema' AS s FROM t", id="catalog-name-as-string"),
    P("SELECT my_immutable(x) FROM t", id="user-immutable-via-lookup"),
]


@pytest.mark.parametrize("sql", CACHEABLE)
def test_cacheable(sql: str) -> None:
    options = AnalyzerOptions(function_volatility={"my_immutable": "i"})
    result = analyze(sql, options=options)
    assert result.cacheable, result.reasons
    assert result.reason is None
    assert not result.tables_written


NOT_CACHEABLE = [
    # D1 volatile functions
    P("SELECT random()", Reason.VOLATILE_FUNCTION, id="random"),
    P("SELECT * FROM t ORDER BY random()", Reason.VOLATILE_FUNCTION, id="order-by-random"),
    P("SELECT nextval('s')", Reason.WRITES, id="nextval-writes"),
    P("SELECT currval('s')", Reason.VOLATILE_FUNCTION, id="currval"),
    P("SELECT lastval()", Reason.VOLATILE_FUNCTION, id="lastval"),
    P("SELECT clock_timestamp()", Reason.VOLATILE_FUNCTION, id="clock-timestamp"),
    P("SELECT timeofday()", Reason.VOLATILE_FUNCTION, id="timeofday"),
    P("SELECT gen_random_uuid()", Reason.VOLATILE_FUNCTION, id="gen-random-uuid"),
    P("SELECT pg_sleep(1)", Reason.VOLATILE_FUNCTION, id="pg-sleep"),
    P("SELECT set_config('a.b', 'c', false)", Reason.VOLATILE_FUNCTION, id="set-config"),
    P("SELECT pg_notify('c', 'x')", Reason.VOLATILE_FUNCTION, id="pg-notify"),
    P("SELECT pg_advisory_lock(1)", Reason.VOLATILE_FUNCTION, id="advisory-lock"),
    P("SELECT pg_try_advisory_xact_lock(1)", Reason.VOLATILE_FUNCTION, id="advisory-xact-lock"),
    P("SELECT * FROM t WHERE id = (random() * 10)::int", Reason.VOLATILE_FUNCTION, id="nested"),
    P("SELECT pg_catalog.random()", Reason.VOLATILE_FUNCTION, id="qualified-builtin"),
    # D2 stable functions and SQL value functions
    P("SELECT now()", Reason.STABLE_FUNCTION, id="now"),
    P("SELECT current_timestamp", Reason.STABLE_FUNCTION, id="current-timestamp"),
    P("SELECT CURRENT_DATE", Reason.STABLE_FUNCTION, id="current-date"),
    P("SELECT LOCALTIME", Reason.STABLE_FUNCTION, id="localtime"),
    P("SELECT localtimestamp(3)", Reason.STABLE_FUNCTION, id="localtimestamp-precision"),
    P("SELECT current_user", Reason.STABLE_FUNCTION, id="current-user"),
    P("SELECT session_user", Reason.STABLE_FUNCTION, id="session-user"),
    P("SELECT current_role", Reason.STABLE_FUNCTION, id="current-role"),
    P("SELECT user", Reason.STABLE_FUNCTION, id="user"),
    P("SELECT current_catalog", Reason.STABLE_FUNCTION, id="current-catalog"),
    P("SELECT current_schema", Reason.STABLE_FUNCTION, id="current-schema"),
    P("SELECT current_schema()", Reason.STABLE_FUNCTION, id="current-schema-call"),
    P("SELECT statement_timestamp()", Reason.STABLE_FUNCTION, id="statement-timestamp"),
    P("SELECT current_setting('app.tenant')", Reason.STABLE_FUNCTION, id="current-setting"),
    P("SELECT to_char(x, 'Day') FROM t", Reason.STABLE_FUNCTION, id="to-char"),
    P("SELECT concat(a, b) FROM t", Reason.STABLE_FUNCTION, id="concat-is-stable"),
    P("SELECT date_trunc('day', ts) FROM t", Reason.STABLE_FUNCTION, id="date-trunc-overloaded"),
    P("SELECT * FROM t WHERE owner = current_user", Reason.STABLE_FUNCTION, id="where-user"),
    P("SELECT txid_current()", Reason.STABLE_FUNCTION, id="txid-current"),
    P("SELECT jsonb_agg(x) FROM t", Reason.STABLE_FUNCTION, id="jsonb-agg-is-stable"),
    P("SELECT collation for ('a')", Reason.STABLE_FUNCTION, id="collation-for"),
    P("SELECT x AT TIME ZONE 'UTC' FROM t", Reason.STABLE_FUNCTION, id="at-time-zone"),
    # stable casts and clock-reading literals
    P("SELECT 'now'::timestamptz", Reason.STABLE_CAST, id="now-cast-timestamptz"),
    P("SELECT 'today'::date", Reason.STABLE_CAST, id="today-cast-date"),
    P("SELECT * FROM t WHERE d > 'yesterday'", Reason.STABLE_CAST, id="yesterday-literal"),
    P("SELECT * FROM t WHERE ts > 'NOW'", Reason.STABLE_CAST, id="now-literal-uppercase"),
    P("SELECT x::timestamptz FROM t", Reason.STABLE_CAST, id="cast-timestamptz"),
    P("SELECT CAST(x AS date) FROM t", Reason.STABLE_CAST, id="cast-as-date"),
    P("SELECT TIMESTAMP '2024-01-01'", Reason.STABLE_CAST, id="typed-literal-timestamp"),
    P("SELECT interval '1 day'", Reason.STABLE_CAST, id="interval-literal"),
    P("SELECT 't'::regclass", Reason.STABLE_CAST, id="regclass"),
    P("SELECT 'int4'::regtype", Reason.STABLE_CAST, id="regtype"),
    # unknown / user functions
    P("SELECT my_func()", Reason.UNKNOWN_FUNCTION, id="unknown-function"),
    P("SELECT app.my_func()", Reason.UNKNOWN_FUNCTION, id="unknown-qualified"),
    P("SELECT my_stable()", Reason.STABLE_FUNCTION, id="user-stable-via-lookup"),
    P("SELECT my_volatile()", Reason.VOLATILE_FUNCTION, id="user-volatile-via-lookup"),
    P("SELECT dblink('x', 'select 1')", Reason.UNKNOWN_FUNCTION, id="dblink-unknown"),
    # D4 locking
    P("SELECT * FROM t FOR UPDATE", Reason.LOCKING_CLAUSE, id="for-update"),
    P("SELECT * FROM t FOR NO KEY UPDATE", Reason.LOCKING_CLAUSE, id="for-no-key-update"),
    P("SELECT * FROM t FOR SHARE", Reason.LOCKING_CLAUSE, id="for-share"),
    P("SELECT * FROM t FOR KEY SHARE", Reason.LOCKING_CLAUSE, id="for-key-share"),
    P("SELECT * FROM t FOR UPDATE SKIP LOCKED", Reason.LOCKING_CLAUSE, id="skip-locked"),
    P("SELECT * FROM t FOR UPDATE OF t NOWAIT", Reason.LOCKING_CLAUSE, id="for-update-of"),
    P(
        "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
        Reason.LOCKING_CLAUSE,
        id="locking-in-subquery",
    ),
    P(
        "WITH l AS (SELECT * FROM t FOR SHARE) SELECT * FROM l",
        Reason.LOCKING_CLAUSE,
        id="locking-in-cte",
    ),
    P(
        "SELECT * FROM a WHERE id IN (SELECT id FROM b FOR UPDATE)",
        Reason.LOCKING_CLAUSE,
        id="locking-in-where-subquery",
    ),
    # D5 writes hidden in SELECT syntax
    P(
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        Reason.WRITES,
        id="writable-cte",
    ),
    P(
        "WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT 1",
        Reason.WRITES,
        id="writable-cte-unused",
    ),
    P("SELECT * INTO x FROM t", Reason.NOT_A_READ, id="select-into"),
    P("CREATE TABLE x AS SELECT * FROM t", Reason.NOT_A_READ, id="create-table-as"),
    P("CREATE MATERIALIZED VIEW m AS SELECT 1", Reason.NOT_A_READ, id="create-matview"),
    P("REFRESH MATERIALIZED VIEW m", Reason.NOT_A_READ, id="refresh-matview"),
    P("INSERT INTO t VALUES (1) RETURNING *", Reason.NOT_A_READ, id="insert-returning"),
    P("UPDATE t SET a = 1 RETURNING *", Reason.NOT_A_READ, id="update-returning"),
    P("DELETE FROM t RETURNING *", Reason.NOT_A_READ, id="delete-returning"),
    P("EXPLAIN ANALYZE DELETE FROM t", Reason.NOT_A_READ, id="explain-analyze-dml"),
    # D6 catalogs and statistics
    P("SELECT * FROM pg_class", Reason.SYSTEM_CATALOG, id="pg-class"),
    P("SELECT * FROM pg_catalog.pg_type", Reason.SYSTEM_CATALOG, id="pg-catalog-qualified"),
    P("SELECT * FROM information_schema.tables", Reason.SYSTEM_CATALOG, id="information-schema"),
    P("SELECT * FROM pg_stat_activity", Reason.SYSTEM_CATALOG, id="pg-stat-activity"),
    P("SELECT * FROM pg_stat_user_tables", Reason.SYSTEM_CATALOG, id="pg-stat-user-tables"),
    P("SELECT * FROM pg_locks", Reason.SYSTEM_CATALOG, id="pg-locks"),
    P("SELECT * FROM pg_settings", Reason.SYSTEM_CATALOG, id="pg-settings"),
    P("SELECT * FROM pg_prepared_statements", Reason.SYSTEM_CATALOG, id="pg-prepared"),
    P("SELECT * FROM pg_cursors", Reason.SYSTEM_CATALOG, id="pg-cursors"),
    P(
        "SELECT t.oid, t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace",
        Reason.SYSTEM_CATALOG,
        id="driver-introspection",
    ),
    P(
        "SELECT * FROM agents WHERE id IN (SELECT objid FROM pg_depend)",
        Reason.SYSTEM_CATALOG,
        id="catalog-in-subquery",
    ),
    P("SHOW search_path", Reason.NOT_A_READ, id="show"),
    # D10/D11/D14/D15 and other statements
    P("LISTEN c", Reason.NOT_A_READ, id="listen"),
    P("NOTIFY c", Reason.NOT_A_READ, id="notify"),
    P("UNLISTEN c", Reason.NOT_A_READ, id="unlisten"),
    P("DECLARE c CURSOR FOR SELECT * FROM t", Reason.NOT_A_READ, id="declare"),
    P("FETCH NEXT FROM c", Reason.NOT_A_READ, id="fetch"),
    P("MOVE c", Reason.NOT_A_READ, id="move"),
    P("CLOSE c", Reason.NOT_A_READ, id="close"),
    P("SELECT * FROM t TABLESAMPLE SYSTEM (10)", Reason.TABLESAMPLE, id="tablesample"),
    P(
        "SELECT * FROM t TABLESAMPLE BERNOULLI (5) REPEATABLE (1)",
        Reason.TABLESAMPLE,
        id="tablesample-repeatable",
    ),
    P("EXPLAIN SELECT * FROM t", Reason.NOT_A_READ, id="explain"),
    P("CALL p()", Reason.NOT_A_READ, id="call"),
    P("DO $$BEGIN END$$", Reason.NOT_A_READ, id="do"),
    P("EXECUTE q", Reason.NOT_A_READ, id="execute"),
    P("/* NO CACHE */ SELECT * FROM t", Reason.HINT_NO_CACHE, id="hint-no-cache"),
    P("SELECT * FROM t /*+ no_cache */", Reason.HINT_NO_CACHE, id="hint-plus-no-cache"),
    P("/*NO QUERY CACHE*/ SELECT 1", Reason.HINT_NO_CACHE, id="hint-pgpool-style"),
    P("SELECT 1 -- no-cache", Reason.HINT_NO_CACHE, id="hint-line-comment"),
    P("SELECT xmlparse(document '<a/>')", Reason.UNSAFE_EXPRESSION, id="xml"),
    # whole-string reasons
    P("SELECT 1; SELECT 2", Reason.MULTI_STATEMENT, id="multi-reads"),
    P("SELECT * FROM t; DELETE FROM t", Reason.MULTI_STATEMENT, id="multi-mixed"),
    P("SELECT FROM WHERE", Reason.UNPARSEABLE, id="unparseable"),
    P("", Reason.EMPTY, id="empty"),
    P("BEGIN", Reason.NOT_A_READ, id="begin"),
    P("SET x.y = 1", Reason.NOT_A_READ, id="set"),
    P("GRANT SELECT ON t TO u", Reason.NOT_A_READ, id="grant"),
]


@pytest.mark.parametrize(("sql", "reason"), NOT_CACHEABLE)
def test_not_cacheable(sql: str, reason: Reason) -> None:
    options = AnalyzerOptions(function_volatility={"my_stable": "s", "my_volatile": "v"})
    result = analyze(sql, options=options)
    assert not result.cacheable
    assert result.reason is reason, result.reasons
    assert reason in result.reasons


@pytest.mark.parametrize(
    ("lookup", "reason", "writes_unknown"),
    [
        P({"f": "i"}, None, False, id="immutable"),
        P({"f": "s"}, Reason.STABLE_FUNCTION, False, id="stable"),
        P({"f": "v"}, Reason.VOLATILE_FUNCTION, True, id="volatile-may-write"),
        P({}, Reason.UNKNOWN_FUNCTION, True, id="unknown-may-write"),
        P({"f": "x"}, Reason.UNKNOWN_FUNCTION, True, id="garbage-answer-is-unknown"),
    ],
)
def test_user_function_lookup(
    lookup: dict[str, str], reason: Reason | None, writes_unknown: bool
) -> None:
    result = analyze("SELECT f(x) FROM t", options=AnalyzerOptions(function_volatility=lookup))
    assert result.reason is reason
    assert result.writes_unknown is writes_unknown


def test_lookup_receives_qualified_name() -> None:
    asked: list[str] = []

    def lookup(name: str) -> str | None:
        asked.append(name)
        return "i"

    options = AnalyzerOptions(function_volatility=lookup)
    result = analyze("SELECT app.f(1), lower('x')", options=options)
    assert asked == ["app.f"]  # built-ins are resolved from the built-in table
    assert result.cacheable


def test_new_options_object_sees_new_lookup() -> None:
    sql = "SELECT f2(1)"
    assert analyze(sql, options=AnalyzerOptions(function_volatility={"f2": "v"})).reason is (
        Reason.VOLATILE_FUNCTION
    )
    assert analyze(sql, options=AnalyzerOptions(function_volatility={"f2": "i"})).cacheable


def test_builtin_volatile_does_not_claim_unknown_writes() -> None:
    assert analyze("SELECT random()").writes_unknown is False


def test_several_reasons_are_all_listed() -> None:
    result = analyze("SELECT now(), random() FROM pg_class FOR UPDATE")
    assert {
        Reason.LOCKING_CLAUSE,
        Reason.SYSTEM_CATALOG,
        Reason.STABLE_FUNCTION,
        Reason.VOLATILE_FUNCTION,
    } <= result.reasons
    assert result.reason is Reason.LOCKING_CLAUSE
