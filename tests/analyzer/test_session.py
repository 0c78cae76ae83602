"""Session changes, transaction control, comments and whole-string options."""

from __future__ import annotations

import pytest

from analyzer import (
    AnalyzerOptions,
    Kind,
    Reason,
    SessionChange,
    TransactionInfo,
    TxnCommand,
    analyze,
)

P = pytest.param
S = SessionChange

SESSION_CASES = [
    P("SET search_path TO a, \"B\"", S("set", "search_path", 'a, "B"'), id="search-path-quoting"),
    P("SET search_path = public, \"$user\"", S("set", "search_path", 'public, "$user"'), id="user"),
    P("SET SEARCH_PATH TO x", S("set", "search_path", "x"), id="name-lowercased"),
    P("SET LOCAL search_path TO x", S("set", "search_path", "x", True), id="local"),
    P("SET SESSION search_path TO x", S("set", "search_path", "x"), id="session-keyword"),
    P("SET TIME ZONE 'UTC'", S("set", "timezone", "UTC"), id="time-zone"),
    P("SET timezone = 'Europe/Paris'", S("set", "timezone", "Europe/Paris"), id="timezone-guc"),
    P("SET TIME ZONE LOCAL", S("reset", "timezone"), id="time-zone-local"),
    P("SET extra_float_digits = 3", S("set", "extra_float_digits", "3"), id="integer-value"),
    P("SET extra_float_digits = -3", S("set", "extra_float_digits", "-3"), id="negative"),
    P("SET DateStyle = 'ISO, MDY'", S("set", "datestyle", "ISO, MDY"), id="datestyle"),
    P("SET datestyle TO iso, dmy", S("set", "datestyle", "iso, dmy"), id="datestyle-list"),
    P("SET app.tenant = 'org-1'", S("set", "app.tenant", "org-1"), id="custom-guc"),
    P("SET statement_timeout TO DEFAULT", S("reset", "statement_timeout"), id="to-default"),
    P("SET ROLE bob", S("set", "role", "bob"), id="set-role"),
    P("SET ROLE NONE", S("set", "role", "none"), id="set-role-none"),
    P("SET LOCAL ROLE bob", S("set", "role", "bob", True), id="set-local-role"),
    P("RESET ROLE", S("reset", "role"), id="reset-role"),
    P(
        "SET SESSION AUTHORIZATION alice",
        S("set", "session_authorization", "alice"),
        id="session-authorization",
    ),
    P(
        "SET SESSION AUTHORIZATION DEFAULT",
        S("reset", "session_authorization"),
        id="session-authorization-default",
    ),
    P("RESET SESSION AUTHORIZATION", S("reset", "session_authorization"), id="reset-session-auth"),
    P("RESET search_path", S("reset", "search_path"), id="reset"),
    P("RESET ALL", S("reset_all"), id="reset-all"),
    P("DISCARD ALL", S("discard_all"), id="discard-all"),
    P("DISCARD TEMP", S("discard_temp"), id="discard-temp"),
    P("DISCARD TEMPORARY", S("discard_temp"), id="discard-temporary"),
    P("DISCARD PLANS", S("discard_plans"), id="discard-plans"),
    P("DISCARD SEQUENCES", S("discard_sequences"), id="discard-sequences"),
    P(
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        S("set", "default_transaction_isolation", "repeatable read"),
        id="session-characteristics",
    ),
    P(
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        S("set", "transaction_isolation", "serializable", True),
        id="set-transaction",
    ),
    P(
        "SELECT set_config('search_path', 'a', false)",
        S("set", "search_path", "a"),
        id="set-config-in-select",
    ),
    P(
        "SELECT set_config('Role', 'bob', true)",
        S("set", "role", "bob", True),
        id="set-config-local",
    ),
    P(
        "SELECT pg_catalog.set_config('app.tenant', '7', false)",
        S("set", "app.tenant", "7"),
        id="set-config-qualified",
    ),
]


@pytest.mark.parametrize(("sql", "change"), SESSION_CASES)
def test_session_change(sql: str, change: SessionChange) -> None:
    assert analyze(sql).session_change == change


def test_set_config_with_non_literal_arguments_is_flagged() -> None:
    result = analyze("SELECT set_config(name, value, false) FROM settings_to_apply")
    assert result.session_change is None
    assert result.changes_session_unknown
    assert not result.cacheable


def test_set_transaction_lists_every_characteristic() -> None:
    result = analyze("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE")
    assert result.session_changes == (
        S("set", "transaction_isolation", "serializable", True),
        S("set", "transaction_read_only", "on", True),
        S("set", "transaction_deferrable", "on", True),
    )
    assert result.transaction == TransactionInfo(
        TxnCommand.SET_TRANSACTION, isolation="serializable", read_only=True, deferrable=True
    )


def test_multi_statement_keeps_session_changes_in_order() -> None:
    result = analyze("SET ROLE a; SELECT 1; RESET ROLE")
    assert result.session_changes == (S("set", "role", "a"), S("reset", "role"))


TXN_CASES = [
    P("BEGIN", TransactionInfo(TxnCommand.BEGIN), id="begin"),
    P("BEGIN WORK", TransactionInfo(TxnCommand.BEGIN), id="begin-work"),
    P("START TRANSACTION", TransactionInfo(TxnCommand.START), id="start"),
    P(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        TransactionInfo(TxnCommand.BEGIN, isolation="repeatable read", read_only=True),
        id="begin-isolation-read-only",
    ),
    P(
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
        TransactionInfo(TxnCommand.START, isolation="serializable", read_only=False),
        id="start-serializable",
    ),
    P(
        "BEGIN ISOLATION LEVEL READ COMMITTED",
        TransactionInfo(TxnCommand.BEGIN, isolation="read committed"),
        id="begin-read-committed",
    ),
    P("COMMIT", TransactionInfo(TxnCommand.COMMIT), id="commit"),
    P("COMMIT AND CHAIN", TransactionInfo(TxnCommand.COMMIT, chain=True), id="commit-chain"),
    P("END", TransactionInfo(TxnCommand.COMMIT), id="end"),
    P("ROLLBACK", TransactionInfo(TxnCommand.ROLLBACK), id="rollback"),
    P("ABORT", TransactionInfo(TxnCommand.ROLLBACK), id="abort"),
    P("SAVEPOINT sp1", TransactionInfo(TxnCommand.SAVEPOINT, savepoint="sp1"), id="savepoint"),
    P("RELEASE sp1", TransactionInfo(TxnCommand.RELEASE, savepoint="sp1"), id="release"),
    P(
        "RELEASE SAVEPOINT \"Sp\"",
        TransactionInfo(TxnCommand.RELEASE, savepoint="Sp"),
        id="release-quoted",
    ),
    P(
        "ROLLBACK TO SAVEPOINT sp1",
        TransactionInfo(TxnCommand.ROLLBACK_TO, savepoint="sp1"),
        id="rollback-to",
    ),
    P("ROLLBACK TO sp1", TransactionInfo(TxnCommand.ROLLBACK_TO, savepoint="sp1"), id="rb-to"),
    P("PREPARE TRANSACTION 'g1'", TransactionInfo(TxnCommand.PREPARE, gid="g1"), id="prepare"),
    P(
        "COMMIT PREPARED 'g1'",
        TransactionInfo(TxnCommand.COMMIT_PREPARED, gid="g1"),
        id="commit-prepared",
    ),
    P(
        "ROLLBACK PREPARED 'g1'",
        TransactionInfo(TxnCommand.ROLLBACK_PREPARED, gid="g1"),
        id="rollback-prepared",
    ),
]


@pytest.mark.parametrize(("sql", "info"), TXN_CASES)
def test_transaction(sql: str, info: TransactionInfo) -> None:
    result = analyze(sql)
    assert result.kind is Kind.TRANSACTION
    assert result.transaction == info


COMMENT_CASES = [
    P("SELECT 1 /* query='agents.getAll' */", "agents.getAll", id="query-tag-end"),
    P("/* query='agents.getAll' */ SELECT 1", "agents.getAll", id="query-tag-start"),
    P("SELECT 1 /*action='getAll',controller='agents'*/", "agents.getAll", id="controller-action"),
    P(
        "SELECT 1 /*action='show',controller='agents',framework='rails%3A7'*/",
        "agents.show",
        id="more-tags",
    ),
    P("SELECT 1 /*query='a%2Eb%20c'*/", "a.b c", id="url-decoded"),
    P("SELECT 1 /*route='%2Fapi%2Fagents'*/", "/api/agents", id="route"),
    P("SELECT 1 /* plain comment */", None, id="plain-comment"),
    P("SELECT 1", None, id="no-comment"),
    P("SELECT 1 -- query='x'", "x", id="line-comment-tag"),
]


@pytest.mark.parametrize(("sql", "name"), COMMENT_CASES)
def test_query_name(sql: str, name: str | None) -> None:
    assert analyze(sql).query_name == name


def test_fingerprint_ignores_constants_not_structure() -> None:
    a = analyze("SELECT * FROM t WHERE id = 1")
    b = analyze("SELECT * FROM t WHERE id = 2")
    c = analyze("SELECT * FROM u WHERE id = 1")
    assert a.fingerprint is not None
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert analyze("SELECT 1; SELECT 2").fingerprint is not None
    assert analyze("SELEC").fingerprint is None
    assert analyze("").fingerprint is None


def test_nonstandard_strings_hide_statements() -> None:
    sql = "SELECT 'a\\''; DELETE FROM t; --'"
    standard = analyze(sql)
    assert standard.kind is Kind.SELECT  # what a standard_conforming_strings=on server sees
    result = analyze(sql, options=AnalyzerOptions(standard_conforming_strings=False))
    assert result.kind is Kind.UNKNOWN
    assert result.reason is Reason.NONSTANDARD_STRINGS
    assert result.writes_unknown
    assert not result.cacheable


def test_nonstandard_strings_without_backslash_lex_the_same() -> None:
    options = AnalyzerOptions(standard_conforming_strings=False)
    result = analyze("SET standard_conforming_strings = on", options=options)
    assert result.session_change == S("set", "standard_conforming_strings", "on")
