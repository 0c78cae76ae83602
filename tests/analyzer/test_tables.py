"""Tables read and written, everywhere they hide."""

from __future__ import annotations

import pytest

from analyzer import analyze

P = pytest.param

TABLE_CASES = [
    # joins of every kind
    P("SELECT * FROM a JOIN b ON a.id = b.a_id", {"a", "b"}, set(), id="inner-join"),
    P("SELECT * FROM a LEFT JOIN b USING (id)", {"a", "b"}, set(), id="left-join"),
    P("SELECT * FROM a RIGHT OUTER JOIN b ON true", {"a", "b"}, set(), id="right-join"),
    P("SELECT * FROM a FULL JOIN b ON a.x = b.x", {"a", "b"}, set(), id="full-join"),
    P("SELECT * FROM a CROSS JOIN b", {"a", "b"}, set(), id="cross-join"),
    P("SELECT * FROM a NATURAL JOIN b", {"a", "b"}, set(), id="natural-join"),
    P("SELECT * FROM a, b, c", {"a", "b", "c"}, set(), id="comma-join"),
    P("SELECT * FROM (a JOIN b ON true) JOIN c ON true", {"a", "b", "c"}, set(), id="nested-join"),
    P("SELECT * FROM a JOIN b USING (id) AS j", {"a", "b"}, set(), id="join-using-alias"),
    # subqueries everywhere
    P("SELECT (SELECT max(x) FROM b) FROM a", {"a", "b"}, set(), id="subquery-select-list"),
    P("SELECT * FROM (SELECT * FROM b) s", {"b"}, set(), id="subquery-from"),
    P("SELECT * FROM a WHERE x IN (SELECT x FROM b)", {"a", "b"}, set(), id="in-subquery"),
    P("SELECT * FROM a WHERE EXISTS (SELECT 1 FROM b)", {"a", "b"}, set(), id="exists"),
    P("SELECT * FROM a WHERE NOT EXISTS (SELECT 1 FROM b)", {"a", "b"}, set(), id="not-exists"),
    P("SELECT * FROM a WHERE x = ANY (SELECT x FROM b)", {"a", "b"}, set(), id="any-subquery"),
    P(
        "SELECT x, count(*) FROM a GROUP BY x HAVING count(*) > (SELECT count(*) FROM b)",
        {"a", "b"},
        set(),
        id="having-subquery",
    ),
    P(
        "SELECT * FROM a ORDER BY (SELECT min(y) FROM b WHERE b.id = a.id)",
        {"a", "b"},
        set(),
        id="order-by-subquery",
    ),
    P(
        "SELECT * FROM a, LATERAL (SELECT * FROM b WHERE b.id = a.id) l",
        {"a", "b"},
        set(),
        id="lateral",
    ),
    P(
        "SELECT * FROM a CROSS JOIN LATERAL (SELECT * FROM b) l",
        {"a", "b"},
        set(),
        id="cross-join-lateral",
    ),
    P("SELECT CASE WHEN EXISTS (SELECT 1 FROM b) THEN 1 END", {"b"}, set(), id="case-exists"),
    P("SELECT ARRAY(SELECT x FROM b)", {"b"}, set(), id="array-subquery"),
    # set operations
    P("SELECT x FROM a UNION SELECT x FROM b", {"a", "b"}, set(), id="union"),
    P("SELECT x FROM a UNION ALL SELECT x FROM b", {"a", "b"}, set(), id="union-all"),
    P("SELECT x FROM a INTERSECT SELECT x FROM b", {"a", "b"}, set(), id="intersect"),
    P("SELECT x FROM a EXCEPT SELECT x FROM b", {"a", "b"}, set(), id="except"),
    P(
        "SELECT x FROM a UNION (SELECT x FROM b EXCEPT SELECT x FROM c)",
        {"a", "b", "c"},
        set(),
        id="nested-set-ops",
    ),
    # CTEs
    P("WITH x AS (SELECT * FROM a) SELECT * FROM x", {"a"}, set(), id="cte-not-a-table"),
    P(
        "WITH x AS (SELECT * FROM a), y AS (SELECT * FROM x JOIN b ON true) SELECT * FROM y",
        {"a", "b"},
        set(),
        id="chained-ctes",
    ),
    P(
        "WITH x AS (WITH y AS (SELECT * FROM a) SELECT * FROM y) SELECT * FROM x",
        {"a"},
        set(),
        id="nested-cte",
    ),
    P(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
        "SELECT * FROM r",
        set(),
        set(),
        id="recursive-cte",
    ),
    P(
        "WITH RECURSIVE t(id) AS (SELECT id FROM tree WHERE parent IS NULL UNION ALL "
        "SELECT tree.id FROM tree JOIN t ON tree.parent = t.id) SELECT * FROM t",
        {"tree"},
        set(),
        id="recursive-cte-over-table",
    ),
    P(
        "WITH agents AS (SELECT * FROM agents WHERE active) SELECT * FROM agents",
        {"agents"},
        set(),
        id="cte-shadows-table-it-reads",
    ),
    P(
        "WITH a AS (SELECT 1) SELECT * FROM public.a",
        {"public.a"},
        set(),
        id="qualified-name-not-cte",
    ),
    P(
        "SELECT * FROM (WITH c AS (SELECT 1) SELECT * FROM c) s, c",
        {"c"},
        set(),
        id="cte-scope-ends-with-subquery",
    ),
    P(
        "WITH x AS (SELECT * FROM y), y AS (SELECT 1) SELECT * FROM x",
        {"y"},
        set(),
        id="non-recursive-cte-sees-only-earlier",
    ),
    # names
    P("SELECT * FROM Agents", {"agents"}, set(), id="case-folded"),
    P('SELECT * FROM "Agents"', {"Agents"}, set(), id="quoted-keeps-case"),
    P("SELECT * FROM public.agents", {"public.agents"}, set(), id="schema-qualified"),
    P('SELECT * FROM "My Schema"."T"', {"My Schema.T"}, set(), id="quoted-schema-qualified"),
    P("SELECT * FROM db.public.agents", {"db.public.agents"}, set(), id="three-part-name"),
    P('SELECT * FROM "a.b"', {"a.b"}, set(), id="quoted-name-with-dot"),
    P("SELECT * FROM ONLY agents", {"agents"}, set(), id="only"),
    P("SELECT * FROM agents *", {"agents"}, set(), id="star-inheritance"),
    P("TABLE agents", {"agents"}, set(), id="table-command"),
    P("SELECT * FROM active_agents_view", {"active_agents_view"}, set(), id="view-as-table"),
    P("SELECT * FROM generate_series(1, 3) g", set(), set(), id="function-in-from"),
    P("VALUES (1), (2)", set(), set(), id="values-no-table"),
    # writes
    P("INSERT INTO t (a) VALUES (1)", set(), {"t"}, id="insert-values"),
    P("INSERT INTO t SELECT * FROM u", {"u"}, {"t"}, id="insert-select"),
    P(
        "INSERT INTO t (id, a) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET a = excluded.a",
        set(),
        {"t"},
        id="upsert",
    ),
    P("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", set(), {"t"}, id="insert-do-nothing"),
    P("INSERT INTO t DEFAULT VALUES RETURNING id", set(), {"t"}, id="insert-returning"),
    P("UPDATE t SET a = u.a FROM u WHERE t.id = u.id", {"u"}, {"t"}, id="update-from"),
    P("UPDATE t SET a = (SELECT max(a) FROM u)", {"u"}, {"t"}, id="update-subquery"),
    P("DELETE FROM t USING u WHERE t.id = u.id", {"u"}, {"t"}, id="delete-using"),
    P("DELETE FROM t WHERE id IN (SELECT id FROM u)", {"u"}, {"t"}, id="delete-in-subquery"),
    P("DELETE FROM ONLY t WHERE id = 1", set(), {"t"}, id="delete-only"),
    P("UPDATE public.t AS x SET a = 1", set(), {"public.t"}, id="update-qualified-alias"),
    P(
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a "
        "WHEN NOT MATCHED THEN INSERT (id, a) VALUES (s.id, s.a)",
        {"s"},
        {"t"},
        id="merge",
    ),
    P(
        "MERGE INTO t USING (SELECT * FROM s JOIN r ON true) q ON t.id = q.id "
        "WHEN MATCHED THEN DELETE",
        {"s", "r"},
        {"t"},
        id="merge-subquery-source",
    ),
    P("TRUNCATE a, b, c", set(), {"a", "b", "c"}, id="truncate-several"),
    P("TRUNCATE TABLE a CASCADE", set(), {"a"}, id="truncate-cascade"),
    P("COPY t FROM STDIN", set(), {"t"}, id="copy-from"),
    P("COPY t (a, b) FROM '/tmp/x.csv' WITH CSV", set(), {"t"}, id="copy-from-file"),
    P("COPY t TO STDOUT", {"t"}, set(), id="copy-to"),
    P("COPY (SELECT * FROM a JOIN b ON true) TO STDOUT", {"a", "b"}, set(), id="copy-query-to"),
    # writes hidden in reads
    P(
        "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
        set(),
        {"t"},
        id="writable-cte-delete",
    ),
    P(
        "WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM u JOIN v ON true",
        {"v"},
        {"t"},
        id="writable-cte-update",
    ),
    P(
        "WITH i AS (INSERT INTO t (a) SELECT a FROM s RETURNING *) SELECT count(*) FROM i",
        {"s"},
        {"t"},
        id="writable-cte-insert-select",
    ),
    P(
        "WITH m AS (MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING *) "
        "SELECT * FROM m",
        {"s"},
        {"t"},
        id="writable-cte-merge",
    ),
    P("SELECT * INTO new_t FROM t", {"t"}, {"new_t"}, id="select-into"),
    P("CREATE TABLE n AS SELECT * FROM t", {"t"}, {"n"}, id="create-table-as"),
    P("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", {"t"}, {"mv"}, id="create-matview"),
    P("REFRESH MATERIALIZED VIEW mv", set(), {"mv"}, id="refresh-matview"),
    P("EXPLAIN ANALYZE DELETE FROM t", set(), {"t"}, id="explain-analyze-delete"),
    P(
        "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1 FROM u",
        {"u"},
        {"t"},
        id="explain-analyze-options",
    ),
    P("EXPLAIN DELETE FROM t", {"t"}, set(), id="explain-without-analyze-writes-nothing"),
    P("EXPLAIN (ANALYZE false) DELETE FROM t", {"t"}, set(), id="explain-analyze-false"),
    P("SELECT nextval('seq_a')", set(), {"seq_a"}, id="nextval-writes-sequence"),
    P("SELECT setval('public.\"Seq\"', 5)", set(), {"public.Seq"}, id="setval-quoted"),
    # DDL
    P("ALTER TABLE t ADD COLUMN b int", set(), {"t"}, id="alter-table"),
    P("DROP TABLE a, s.b CASCADE", set(), {"a", "s.b"}, id="drop-tables"),
    P("DROP VIEW IF EXISTS v", set(), {"v"}, id="drop-view"),
    P("ALTER TABLE s.t RENAME TO u", set(), {"s.t", "s.u"}, id="rename-table"),
    P("ALTER TABLE t RENAME COLUMN a TO b", set(), {"t"}, id="rename-column"),
    P("CREATE OR REPLACE VIEW v AS SELECT * FROM t", {"t"}, {"v"}, id="create-or-replace-view"),
    P("CREATE TABLE t (id int REFERENCES u (id))", set(), {"t", "u"}, id="create-with-fk"),
    P("CREATE INDEX i ON t (a)", set(), {"t"}, id="create-index"),
    P(
        "ALTER TABLE p ATTACH PARTITION c FOR VALUES IN (1)",
        set(),
        {"p", "c"},
        id="attach-partition",
    ),
    P("GRANT SELECT ON t, s.u TO bob", set(), {"t", "s.u"}, id="grant-tables"),
    P("REVOKE SELECT ON TABLE t FROM bob", set(), {"t"}, id="revoke-table"),
    P("LOCK TABLE t", {"t"}, set(), id="lock-reads-nothing-written"),
    P("DECLARE c CURSOR FOR SELECT * FROM t", {"t"}, set(), id="declare-cursor-reads"),
    P("PREPARE q AS DELETE FROM t", {"t"}, set(), id="prepare-runs-nothing"),
]


@pytest.mark.parametrize(("sql", "read", "written"), TABLE_CASES)
def test_tables(sql: str, read: set[str], written: set[str]) -> None:
    result = analyze(sql)
    assert result.tables_read == read
    assert result.tables_written == written


@pytest.mark.parametrize(
    ("sql", "flag"),
    [
        P("CALL do_things()", "writes_unknown", id="call"),
        P("DO $$BEGIN DELETE FROM t; END$$", "writes_unknown", id="do"),
        P("EXECUTE q(1)", "writes_unknown", id="sql-execute"),
        P("SELECT my_func(1)", "writes_unknown", id="unknown-user-function"),
        P("SELECT nextval(some_column) FROM t", "writes_unknown", id="nextval-non-literal"),
        P("TRUNCATE a CASCADE", "truncate_cascade", id="truncate-cascade-noted"),
        P("TRUNCATE a CASCADE", "writes_unknown", id="truncate-cascade-unknown-reach"),
        P("CREATE TEMP TABLE x (a int)", "creates_temp", id="create-temp"),
        P("CREATE TEMPORARY TABLE x AS SELECT 1", "creates_temp", id="create-temp-as"),
        P("SELECT 1 INTO TEMP x", "creates_temp", id="select-into-temp"),
        P("CREATE TABLE pg_temp.x (a int)", "creates_temp", id="create-pg-temp"),
        P("CREATE TEMP VIEW v AS SELECT 1", "creates_temp", id="create-temp-view"),
        P("CREATE TEMP SEQUENCE s", "creates_temp", id="create-temp-sequence"),
        P("SELECTT", "writes_unknown", id="unparseable-may-write"),
    ],
)
def test_flags(sql: str, flag: str) -> None:
    assert getattr(analyze(sql), flag) is True


@pytest.mark.parametrize(
    "sql",
    [
        P("SELECT random()", id="builtin-volatile"),
        P("SELECT * FROM t", id="plain-read"),
        P("CREATE TABLE x (a int)", id="create-permanent"),
        P("INSERT INTO t VALUES (1)", id="insert"),
        P("EXPLAIN SELECT my_func()", id="explain-runs-nothing"),
    ],
)
def test_no_unknown_writes_or_temp(sql: str) -> None:
    result = analyze(sql)
    assert not result.writes_unknown
    assert not result.creates_temp
