"""Statement kinds, for every family of statement the proxy must tell apart."""

from __future__ import annotations

import pytest

from analyzer import Kind, analyze

P = pytest.param

KIND_CASES = [
    P("SELECT 1", Kind.SELECT, id="select-literal"),
    P("select * from agents", Kind.SELECT, id="select-lowercase"),
    P("VALUES (1), (2)", Kind.SELECT, id="values"),
    P("TABLE agents", Kind.SELECT, id="table-t"),
    P("WITH x AS (SELECT 1) SELECT * FROM x", Kind.SELECT, id="with-select"),
    P("(SELECT 1) UNION (SELECT 2)", Kind.SELECT, id="parenthesised-union"),
    P("INSERT INTO t (a) VALUES (1)", Kind.INSERT, id="insert"),
    P("INSERT INTO t SELECT * FROM u", Kind.INSERT, id="insert-select"),
    P("UPDATE t SET a = 1", Kind.UPDATE, id="update"),
    P("DELETE FROM t", Kind.DELETE, id="delete"),
    P(
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a",
        Kind.MERGE,
        id="merge",
    ),
    P("TRUNCATE t", Kind.TRUNCATE, id="truncate"),
    P("COPY t FROM STDIN", Kind.COPY_FROM, id="copy-from-stdin"),
    P("COPY t TO STDOUT", Kind.COPY_TO, id="copy-to-stdout"),
    P("COPY (SELECT * FROM t) TO STDOUT WITH CSV", Kind.COPY_TO, id="copy-query-to"),
    P("CREATE TABLE t (id int)", Kind.DDL, id="create-table"),
    P("CREATE TABLE t2 AS SELECT * FROM t", Kind.DDL, id="create-table-as"),
    P("SELECT * INTO t2 FROM t", Kind.DDL, id="select-into-is-ddl"),
    P("ALTER TABLE t ADD COLUMN b int", Kind.DDL, id="alter-table"),
    P("DROP TABLE t", Kind.DDL, id="drop-table"),
    P("ALTER TABLE t RENAME TO u", Kind.DDL, id="rename-table"),
    P("CREATE OR REPLACE VIEW v AS SELECT * FROM t", Kind.DDL, id="create-or-replace-view"),
    P("CREATE INDEX ON t (a)", Kind.DDL, id="create-index"),
    P("CREATE MATERIALIZED VIEW mv AS SELECT 1", Kind.DDL, id="create-matview"),
    P("REFRESH MATERIALIZED VIEW mv", Kind.DDL, id="refresh-matview"),
    P("COMMENT ON TABLE t IS 'x'", Kind.DDL, id="comment-on"),
    P("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'", Kind.DDL, id="create-function"),
    P("CREATE SEQUENCE s", Kind.DDL, id="create-sequence"),
    P("CREATE SCHEMA s", Kind.DDL, id="create-schema"),
    P("CREATE ROLE bob", Kind.DDL, id="create-role"),
    P("ALTER ROLE bob SET search_path = a", Kind.DDL, id="alter-role-set"),
    P("GRANT SELECT ON t TO bob", Kind.GRANT, id="grant"),
    P("REVOKE ALL ON t FROM bob", Kind.GRANT, id="revoke"),
    P("GRANT admin TO bob", Kind.GRANT, id="grant-role"),
    P("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", Kind.GRANT, id="default-privs"),
    P("BEGIN", Kind.TRANSACTION, id="begin"),
    P("START TRANSACTION", Kind.TRANSACTION, id="start-transaction"),
    P("COMMIT", Kind.TRANSACTION, id="commit"),
    P("END", Kind.TRANSACTION, id="end"),
    P("ROLLBACK", Kind.TRANSACTION, id="rollback"),
    P("ABORT", Kind.TRANSACTION, id="abort"),
    P("SAVEPOINT s1", Kind.TRANSACTION, id="savepoint"),
    P("RELEASE SAVEPOINT s1", Kind.TRANSACTION, id="release"),
    P("ROLLBACK TO SAVEPOINT s1", Kind.TRANSACTION, id="rollback-to"),
    P("PREPARE TRANSACTION 'g'", Kind.TRANSACTION, id="prepare-transaction"),
    P("COMMIT PREPARED 'g'", Kind.TRANSACTION, id="commit-prepared"),
    P("ROLLBACK PREPARED 'g'", Kind.TRANSACTION, id="rollback-prepared"),
    P("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Kind.TRANSACTION, id="set-transaction"),
    P("SET search_path TO public", Kind.SESSION, id="set"),
    P("SET LOCAL statement_timeout = 5", Kind.SESSION, id="set-local"),
    P("RESET search_path", Kind.SESSION, id="reset"),
    P("RESET ALL", Kind.SESSION, id="reset-all"),
    P("DISCARD ALL", Kind.SESSION, id="discard-all"),
    P("SET ROLE bob", Kind.SESSION, id="set-role"),
    P("SET SESSION AUTHORIZATION bob", Kind.SESSION, id="set-session-authorization"),
    P("SHOW search_path", Kind.SHOW, id="show"),
    P("LISTEN chan", Kind.LISTEN_NOTIFY, id="listen"),
    P("UNLISTEN *", Kind.LISTEN_NOTIFY, id="unlisten"),
    P("NOTIFY chan, 'x'", Kind.LISTEN_NOTIFY, id="notify"),
    P("DECLARE c CURSOR FOR SELECT * FROM t", Kind.CURSOR, id="declare"),
    P("DECLARE c CURSOR WITH HOLD FOR SELECT 1", Kind.CURSOR, id="declare-with-hold"),
    P("FETCH 10 FROM c", Kind.CURSOR, id="fetch"),
    P("MOVE NEXT IN c", Kind.CURSOR, id="move"),
    P("CLOSE c", Kind.CURSOR, id="close"),
    P("CALL p(1)", Kind.CALL, id="call"),
    P("DO $$BEGIN PERFORM 1; END$$", Kind.CALL, id="do"),
    P("PREPARE q AS SELECT * FROM t WHERE id = $1", Kind.PREPARE, id="sql-prepare"),
    P("EXECUTE q(1)", Kind.EXECUTE, id="sql-execute"),
    P("DEALLOCATE q", Kind.DEALLOCATE, id="deallocate"),
    P("DEALLOCATE ALL", Kind.DEALLOCATE, id="deallocate-all"),
    P("EXPLAIN SELECT * FROM t", Kind.EXPLAIN, id="explain"),
    P("EXPLAIN ANALYZE DELETE FROM t", Kind.EXPLAIN, id="explain-analyze-delete"),
    P("SELECT 1; SELECT 2", Kind.MULTI, id="multi"),
    P("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", Kind.OTHER, id="lock"),
    P("VACUUM t", Kind.OTHER, id="vacuum"),
    P("ANALYZE t", Kind.OTHER, id="analyze-stats"),
    P("CHECKPOINT", Kind.OTHER, id="checkpoint"),
    P("", Kind.EMPTY, id="empty-string"),
    P("   \n\t ", Kind.EMPTY, id="whitespace"),
    P("/* nothing */", Kind.EMPTY, id="comment-only"),
    P("-- nothing", Kind.EMPTY, id="line-comment-only"),
    P(";;", Kind.EMPTY, id="semicolons-only"),
    P("SELEC 1", Kind.UNKNOWN, id="typo"),
    P("SELECT 'unterminated", Kind.UNKNOWN, id="unterminated-string"),
]


@pytest.mark.parametrize(("sql", "kind"), KIND_CASES)
def test_kind(sql: str, kind: Kind) -> None:
    assert analyze(sql).kind is kind


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        P("PREPARE q AS SELECT 1", "q", id="prepare-name"),
        P("EXECUTE q(1)", "q", id="execute-name"),
        P("DEALLOCATE q", "q", id="deallocate-name"),
        P("DEALLOCATE ALL", None, id="deallocate-all-no-name"),
        P("DECLARE cur CURSOR FOR SELECT 1", "cur", id="declare-name"),
        P("FETCH ALL FROM cur", "cur", id="fetch-name"),
    ],
)
def test_statement_name(sql: str, name: str | None) -> None:
    assert analyze(sql).statement_name == name


@pytest.mark.parametrize(
    ("sql", "ddl"),
    [
        P("CREATE TABLE t (a int)", True, id="create-is-ddl"),
        P("GRANT SELECT ON t TO bob", True, id="grant-is-ddl"),
        P("DROP INDEX i", True, id="drop-index-ddl"),
        P("INSERT INTO t VALUES (1)", False, id="insert-not-ddl"),
        P("SELECT * INTO new_t FROM t", True, id="select-into-ddl"),
    ],
)
def test_ddl_flag(sql: str, ddl: bool) -> None:
    assert analyze(sql).ddl is ddl


def test_multi_statement_lists_each_statement() -> None:
    result = analyze("BEGIN; UPDATE t SET a = 1; SELECT * FROM u; COMMIT")
    assert [s.kind for s in result.statements] == [
        Kind.TRANSACTION,
        Kind.UPDATE,
        Kind.SELECT,
        Kind.TRANSACTION,
    ]
    assert result.tables_written == {"t"}
    assert result.tables_read == {"u"}


def test_single_statement_has_one_entry() -> None:
    result = analyze("SELECT * FROM t")
    assert len(result.statements) == 1
    assert result.statements[0].tables_read == {"t"}
