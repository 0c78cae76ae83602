"""Response tracker: conversations between a client and Postgres, read as transcripts.

Each test is a script for `converse`:

* ``("F", Parse("s1", "select 1"))``   the client sends a message (the session pushes the
  entry; Flush and CopyData push nothing);
* ``("B", "1", PARSE)``               Postgres answers with tag ``1``; the step asserts which
  request the message completed (no request named: it must complete nothing);
* ``("B", "C", b"SELECT 1\\0", EXECUTE)`` the same with a payload;
* ``("pending", "BIND EXECUTE SYNC")``, ``("statements", {"s1"})``, ``("portals", {"p": "s1"})``,
  ``("status", "T")``, ``("skipping", True)``, ``("copy_in", True)``, ``("idle", True)``:
  assertions on the tracker's state at that point of the conversation.

Where the behaviour of Postgres was not obvious, the conversation was first run against
PostgreSQL 15 (see `tests.proxy.recorded`, and the `replay` tests at the end, which feed
recorded bytes through the real framing and codec).
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.codec import TxnStatus
from proxy.framing import BackendScanner, FrontendReader
from proxy.tracker import Pending, Request, Tracker, pending_for
from tests.proxy import recorded

QUERY, FUNCTION_CALL = Request.QUERY, Request.FUNCTION_CALL
PARSE, BIND, DESCRIBE, EXECUTE = Request.PARSE, Request.BIND, Request.DESCRIBE, Request.EXECUTE
CLOSE, SYNC = Request.CLOSE, Request.SYNC

# --- what the client sends: the entry the session pushes for each message ---------------


def Query(sql: str) -> Pending:
    return Pending(Request.QUERY, sql=sql)


def Parse(name: str, sql: str = "select 1", oids: tuple[int, ...] = ()) -> Pending:
    return Pending(Request.PARSE, name=name, sql=sql, param_oids=oids)


def Bind(portal: str = "", statement: str = "") -> Pending:
    return Pending(Request.BIND, name=portal, statement=statement)


def Describe(kind: str, name: str = "") -> Pending:
    return Pending(Request.DESCRIBE, name=name, kind=kind)


def Execute(portal: str = "") -> Pending:
    return Pending(Request.EXECUTE, name=portal)


def Close(kind: str, name: str = "") -> Pending:
    return Pending(Request.CLOSE, name=name, kind=kind)


def Sync() -> Pending:
    return Pending(Request.SYNC)


def FunctionCall() -> Pending:
    return Pending(Request.FUNCTION_CALL)


def CopyDone() -> Pending:
    return Pending(Request.COPY_END)


CopyFail = CopyDone


def Flush() -> Pending | None:
    return None  # Flush gets no answer, so the session pushes nothing


CopyData = Flush


# --- what Postgres answers -------------------------------------------------------------

ROW = b"\x00\x01\x00\x00\x00\x011"
SELECT_1 = b"SELECT 1\x00"
IDLE, IN_TXN, FAILED = b"I", b"T", b"E"
ERROR = b"SERROR\x00VERROR\x00C42601\x00Msyntax error\x00\x00"
COPY_IN = b"\x00\x00\x01\x00\x00"  # CopyInResponse: text, one column


def converse(tracker: Tracker, script: list[tuple[Any, ...]]) -> Tracker:
    """Play a conversation against `tracker`, checking every assertion in it."""
    for number, step in enumerate(script, 1):
        where = f"step {number}: {step!r}"
        match step:
            case ("F", entry):
                if entry is not None:
                    tracker.push(entry)
            case ("B", str(tag), *rest):
                payload = next((r for r in rest if isinstance(r, bytes)), b"")
                expected = next((r for r in rest if isinstance(r, Request)), None)
                done = tracker.on_backend(ord(tag), payload)
                got = None if done is None else done.request
                assert got is expected, f"{where}: completed {got}, expected {expected}"
            case ("pending", str(names)):
                got_names = " ".join(e.request.name for e in tracker.pending)
                assert got_names == names, f"{where}: pending is {got_names!r}"
            case ("statements", set(names)):
                assert set(tracker.statements) == names, f"{where}: {tracker.statements}"
            case ("portals", dict(portals)):
                assert tracker.portals == portals, f"{where}: {tracker.portals}"
            case ("status", str(status)):
                assert tracker.status is TxnStatus(ord(status)), f"{where}: {tracker.status}"
            case ("skipping" | "copy_in" as flag, bool(value)):
                assert getattr(tracker, flag) is value, where
            case ("idle", bool(value)):
                assert tracker.idle() is value, where
            case _:
                raise AssertionError(f"bad script step {where}")
    return tracker


# --- simple query ----------------------------------------------------------------------


def test_simple_query() -> None:
    converse(Tracker(), [
        ("idle", True),
        ("F", Query("select 1 as a, 'x'::text as b")),
        ("pending", "QUERY"),
        ("idle", False),
        ("B", "T"),
        ("B", "D", ROW),
        ("B", "C", SELECT_1),
        ("pending", "QUERY"),
        ("B", "Z", IDLE, QUERY),
        ("pending", ""),
        ("idle", True),
        ("status", "I"),
    ])  # fmt: skip


def test_simple_query_with_several_statements_has_one_ready_for_query() -> None:
    converse(Tracker(), [
        ("F", Query("select 1; select 2")),
        ("B", "T"), ("B", "D", ROW), ("B", "C", SELECT_1),
        ("B", "T"), ("B", "D", ROW), ("B", "C", SELECT_1),
        ("pending", "QUERY"),
        ("B", "Z", IDLE, QUERY),
        ("idle", True),
    ])  # fmt: skip


def test_simple_query_error_does_not_start_skipping() -> None:
    converse(Tracker(), [
        ("F", Query("selec 1")),
        ("B", "E", ERROR),
        ("skipping", False),
        ("pending", "QUERY"),
        ("B", "Z", IDLE, QUERY),
        ("F", Query("select 1")),
        ("pending", "QUERY"),
    ])  # fmt: skip


def test_empty_query() -> None:
    converse(Tracker(), [
        ("F", Query("")),
        ("B", "I"),
        ("pending", "QUERY"),
        ("B", "Z", IDLE, QUERY),
    ])  # fmt: skip


def test_asynchronous_messages_complete_nothing() -> None:
    """NoticeResponse, ParameterStatus and NotificationResponse can arrive at any time."""
    converse(Tracker(), [
        ("F", Query("set application_name = 'x'")),
        ("B", "N", b"SNOTICE\x00C00000\x00Mhi\x00\x00"),
        ("B", "C", b"SET\x00"),
        ("B", "S", b"application_name\x00x\x00"),
        ("B", "A", b"\x00\x00\x00\x07chan\x00\x00"),
        ("pending", "QUERY"),
        ("B", "Z", IDLE, QUERY),
        ("B", "A", b"\x00\x00\x00\x07chan\x00\x00"),
        ("B", "S", b"TimeZone\x00UTC\x00"),
        ("idle", True),
    ])  # fmt: skip


def test_transaction_status_follows_ready_for_query() -> None:
    converse(Tracker(), [
        ("F", Query("begin")),
        ("B", "C", b"BEGIN\x00"), ("B", "Z", IN_TXN, QUERY),
        ("status", "T"),
        ("F", Query("select 1/0")),
        ("B", "E", ERROR), ("B", "Z", FAILED, QUERY),
        ("status", "E"),
        ("F", Query("rollback")),
        ("B", "C", b"ROLLBACK\x00"), ("B", "Z", IDLE, QUERY),
        ("status", "I"),
    ])  # fmt: skip


def test_pipelined_simple_queries_complete_in_order() -> None:
    first, second = Query("select 1"), Query("select 2")
    tracker = converse(Tracker(), [
        ("F", first), ("F", second),
        ("pending", "QUERY QUERY"),
        ("B", "T"), ("B", "D", ROW), ("B", "C", SELECT_1),
    ])  # fmt: skip
    assert tracker.on_backend(ord("Z"), IDLE) is first
    assert tracker.on_backend(ord("Z"), IDLE) is second
    assert tracker.idle()


# --- extended query --------------------------------------------------------------------


def test_extended_query_unnamed() -> None:
    converse(Tracker(), [
        ("F", Parse("", "select $1::int4 as n", (23,))),
        ("F", Bind("", "")),
        ("F", Describe("P", "")),
        ("F", Execute("")),
        ("F", Sync()),
        ("pending", "PARSE BIND DESCRIBE EXECUTE SYNC"),
        ("statements", set()),
        ("B", "1", PARSE),
        ("statements", {""}),
        ("B", "2", BIND),
        ("portals", {"": ""}),
        ("B", "T", DESCRIBE),
        ("B", "D", ROW),
        ("B", "C", SELECT_1, EXECUTE),
        ("pending", "SYNC"),
        ("B", "Z", IDLE, SYNC),
        ("idle", True),
        ("statements", {""}),
        ("portals", {}),  # the unnamed portal ended with the implicit transaction
    ])  # fmt: skip


def test_statement_registry_records_sql_and_parameter_types() -> None:
    tracker = converse(Tracker(), [
        ("F", Parse("s1", "select $1::int4 as n", (23,))),
        ("F", Sync()),
        ("B", "1", PARSE),
        ("B", "Z", IDLE, SYNC),
    ])  # fmt: skip
    statement = tracker.statements["s1"]
    assert (statement.sql, statement.param_oids) == ("select $1::int4 as n", (23,))


def test_describe_statement_parameter_description_then_row_description() -> None:
    converse(Tracker(), [
        ("F", Parse("s1", "select $1::int + 1 as x", (23,))),
        ("F", Describe("S", "s1")),
        ("F", Sync()),
        ("B", "1", PARSE),
        ("B", "t", b"\x00\x01\x00\x00\x00\x17"),
        ("pending", "DESCRIBE SYNC"),
        ("B", "T", DESCRIBE),
        ("B", "Z", IDLE, SYNC),
    ])  # fmt: skip


def test_describe_of_a_statement_without_rows_gets_no_data() -> None:
    converse(Tracker(), [
        ("F", Parse("ins", "insert into t values ($1)")),
        ("F", Describe("S", "ins")),
        ("F", Bind("", "ins")),
        ("F", Describe("P", "")),
        ("F", Execute("")),
        ("F", Sync()),
        ("B", "1", PARSE),
        ("B", "t", b"\x00\x01\x00\x00\x00\x17"),
        ("B", "n", DESCRIBE),
        ("B", "2", BIND),
        ("B", "n", DESCRIBE),
        ("B", "C", b"INSERT 0 1\x00", EXECUTE),
        ("B", "Z", IDLE, SYNC),
    ])  # fmt: skip


def test_registry_changes_only_when_postgres_confirms() -> None:
    converse(Tracker(), [
        ("F", Query("begin")), ("B", "C", b"BEGIN\x00"), ("B", "Z", IN_TXN, QUERY),
        ("F", Parse("s1")), ("F", Bind("p1", "s1")), ("F", Sync()),
        ("statements", set()), ("portals", {}),
        ("B", "1", PARSE),
        ("statements", {"s1"}), ("portals", {}),
        ("B", "2", BIND),
        ("portals", {"p1": "s1"}),
        ("B", "Z", IN_TXN, SYNC),
        ("portals", {"p1": "s1"}),  # named portals live until the transaction ends
        ("F", Close("P", "p1")), ("F", Close("S", "s1")), ("F", Sync()),
        ("portals", {"p1": "s1"}), ("statements", {"s1"}),
        ("B", "3", CLOSE),
        ("portals", {}), ("statements", {"s1"}),
        ("B", "3", CLOSE),
        ("statements", set()),
        ("B", "Z", IN_TXN, SYNC),
    ])  # fmt: skip


def test_close_of_a_name_that_does_not_exist_still_completes() -> None:
    converse(Tracker(), [
        ("F", Close("S", "nope")), ("F", Close("P", "nope")), ("F", Sync()),
        ("B", "3", CLOSE), ("B", "3", CLOSE), ("B", "Z", IDLE, SYNC),
        ("statements", set()), ("portals", {}),
    ])  # fmt: skip


def test_closing_a_statement_leaves_its_portals() -> None:
    """PG 15 recorded: Parse s1, Bind p1, Close S s1, Execute p1 -> the Execute succeeds."""
    converse(Tracker(), [
        ("F", Query("begin")), ("B", "C", b"BEGIN\x00"), ("B", "Z", IN_TXN, QUERY),
        ("F", Parse("s1")), ("F", Bind("p1", "s1")), ("F", Close("S", "s1")),
        ("F", Execute("p1")), ("F", Sync()),
        ("B", "1", PARSE), ("B", "2", BIND), ("B", "3", CLOSE),
        ("B", "D", ROW), ("B", "C", SELECT_1, EXECUTE),
        ("B", "Z", IN_TXN, SYNC),
        ("statements", set()), ("portals", {"p1": "s1"}),
    ])  # fmt: skip


def test_parse_of_an_existing_name_fails_and_keeps_the_statement() -> None:
    tracker = converse(Tracker(), [
        ("F", Parse("n", "select 1")), ("F", Sync()),
        ("B", "1", PARSE), ("B", "Z", IDLE, SYNC),
        ("F", Parse("n", "select 2")), ("F", Sync()),
        ("B", "E", ERROR, PARSE),  # 42P05 prepared statement "n" already exists
        ("B", "Z", IDLE, SYNC),
        ("statements", {"n"}),
    ])  # fmt: skip
    assert tracker.statements["n"].sql == "select 1"  # the failed Parse changed nothing


def test_a_failed_parse_of_the_unnamed_statement_destroys_the_old_one() -> None:
    """PG 15 recorded: Parse "" ok; Parse "" 'selec' fails; Bind "" -> 26000 unnamed
    prepared statement does not exist (exec_parse_message drops it before parsing)."""
    converse(Tracker(), [
        ("F", Parse("", "select 1")), ("F", Sync()),
        ("B", "1", PARSE), ("B", "Z", IDLE, SYNC),
        ("statements", {""}),
        ("F", Parse("", "selec")), ("F", Sync()),
        ("B", "E", ERROR, PARSE),
        ("B", "Z", IDLE, SYNC),
        ("statements", set()),
    ])  # fmt: skip


def test_a_parse_discarded_while_skipping_leaves_the_unnamed_statement() -> None:
    converse(Tracker(), [
        ("F", Parse("", "select 1")), ("F", Sync()),
        ("B", "1", PARSE), ("B", "Z", IDLE, SYNC),
        ("F", Bind("", "nope")), ("F", Parse("", "select 2")), ("F", Sync()),
        ("B", "E", ERROR, BIND),
        ("pending", "SYNC"),
        ("B", "Z", IDLE, SYNC),
        ("statements", {""}),
    ])  # fmt: skip


def test_simple_query_destroys_the_unnamed_statement_not_named_ones() -> None:
    """PG 15 recorded: after a Query, Bind "" -> 26000 unnamed prepared statement does not
    exist, whatever the Query was (even an empty one)."""
    converse(Tracker(), [
        ("F", Parse("", "select 1")), ("F", Parse("s1")), ("F", Sync()),
        ("B", "1", PARSE), ("B", "1", PARSE), ("B", "Z", IDLE, SYNC),
        ("statements", {"", "s1"}),
        ("F", Query("")),
        ("B", "I"),
        ("statements", {"", "s1"}),
        ("B", "Z", IDLE, QUERY),
        ("statements", {"s1"}),
    ])  # fmt: skip


def test_simple_query_in_a_transaction_replaces_the_unnamed_portal() -> None:
    """PG 15 recorded: BEGIN; Bind ""; Query 'select 2'; Execute "" -> 34000 portal ""
    does not exist.  An empty Query runs no statement and leaves the portal alone."""
    converse(Tracker(), [
        ("F", Query("begin")), ("B", "C", b"BEGIN\x00"), ("B", "Z", IN_TXN, QUERY),
        ("F", Parse("s1")), ("F", Bind("", "s1")), ("F", Bind("p", "s1")), ("F", Sync()),
        ("B", "1", PARSE), ("B", "2", BIND), ("B", "2", BIND), ("B", "Z", IN_TXN, SYNC),
        ("portals", {"": "s1", "p": "s1"}),
        ("F", Query("")), ("B", "I"), ("B", "Z", IN_TXN, QUERY),
        ("portals", {"": "s1", "p": "s1"}),
        ("F", Query("select 2")),
        ("B", "T"), ("B", "D", ROW), ("B", "C", SELECT_1),
        ("portals", {"p": "s1"}),
        ("B", "Z", IN_TXN, QUERY),
    ])  # fmt: skip


def test_portals_end_with_the_transaction_not_before() -> None:
    converse(Tracker(), [
        ("F", Query("begin")), ("B", "C", b"BEGIN\x00"), ("B", "Z", IN_TXN, QUERY),
        ("F", Bind("p", "s")), ("F", Sync()),
        ("B", "2", BIND), ("B", "Z", IN_TXN, SYNC),
        ("F", Query("select 1/0")), ("B", "E", ERROR), ("B", "Z", FAILED, QUERY),
        ("portals", {"p": "s"}),  # still there (unusable) until the block ends
        ("F", Query("rollback")), ("B", "C", b"ROLLBACK\x00"), ("B", "Z", IDLE, QUERY),
        ("portals", {}),
    ])  # fmt: skip


def test_flush_gets_no_answer_and_responses_arrive_before_sync() -> None:
    """postgres.js / asyncpg style: Parse, Describe, Flush, then wait (PITFALLS B5)."""
    converse(Tracker(), [
        ("F", Parse("s1", "select $1")),
        ("F", Describe("S", "s1")),
        ("F", Flush()),
        ("pending", "PARSE DESCRIBE"),
        ("B", "1", PARSE),
        ("B", "t", b"\x00\x01\x00\x00\x00\x19"),
        ("B", "T", DESCRIBE),
        ("idle", True),
        ("F", Bind("", "s1")), ("F", Execute("")), ("F", Sync()),
        ("B", "2", BIND), ("B", "D", ROW), ("B", "C", SELECT_1, EXECUTE),
        ("B", "Z", IDLE, SYNC),
    ])  # fmt: skip


def test_pipeline_of_two_segments() -> None:
    converse(Tracker(), [
        ("F", Parse("")), ("F", Bind()), ("F", Execute()), ("F", Sync()),
        ("F", Parse("")), ("F", Bind()), ("F", Execute()), ("F", Sync()),
        ("pending", "PARSE BIND EXECUTE SYNC PARSE BIND EXECUTE SYNC"),
        ("B", "1", PARSE), ("B", "2", BIND), ("B", "C", SELECT_1, EXECUTE),
        ("B", "Z", IDLE, SYNC),
        ("pending", "PARSE BIND EXECUTE SYNC"),
        ("B", "1", PARSE), ("B", "2", BIND), ("B", "C", SELECT_1, EXECUTE),
        ("B", "Z", IDLE, SYNC),
        ("idle", True),
    ])  # fmt: skip


# --- errors: skip till Sync ------------------------------------------------------------


def test_error_mid_pipeline_discards_up_to_sync_only() -> None:
    converse(Tracker(), [
        ("F", Parse("", "select 1/0")), ("F", Bind()), ("F", Execute()), ("F", Sync()),
        ("F", Parse("", "select 1")), ("F", Bind()), ("F", Execute()), ("F", Sync()),
        ("B", "1", PARSE),
        ("B", "E", ERROR, BIND),  # 22012, raised while planning at Bind
        ("pending", "SYNC PARSE BIND EXECUTE SYNC"),  # the Execute will get no answer
        ("skipping", False),  # the Sync is already on its way
        ("B", "Z", IDLE, SYNC),
        ("B", "1", PARSE), ("B", "2", BIND), ("B", "C", SELECT_1, EXECUTE),
        ("B", "Z", IDLE, SYNC),
        ("idle", True),
    ])  # fmt: skip


def test_messages_sent_while_postgres_skips_are_not_recorded() -> None:
    converse(Tracker(), [
        ("F", Parse("", "selec")), ("F", Flush()),
        ("B", "E", ERROR, PARSE),
        ("skipping", True),
        ("idle", True),  # nothing is owed an answer until the Sync
        ("F", Bind()), ("F", Describe("P")), ("F", Execute()), ("F", Close("S", "x")),
        ("F", FunctionCall()),
        ("pending", ""),
        ("F", Sync()),
        ("skipping", False),
        ("pending", "SYNC"),
        ("B", "Z", IDLE, SYNC),
        ("idle", True),
    ])  # fmt: skip


def test_simple_query_sent_while_skipping_is_discarded() -> None:
    """PG 15 recorded: Parse 'selec 1', Bind, Execute, Query 'select 1' (no Sync) -> only
    the ErrorResponse; the Query is ignored, and the Sync that follows gets the only Z."""
    converse(Tracker(), [
        ("F", Parse("", "selec 1")), ("F", Bind()), ("F", Execute()),
        ("F", Query("select 1")),
        ("B", "E", ERROR, PARSE),
        ("pending", ""),
        ("skipping", True),
        ("F", Query("select 2")),  # still skipping: discarded too
        ("pending", ""),
        ("F", Sync()),
        ("B", "Z", IDLE, SYNC),
        ("idle", True),
    ])  # fmt: skip


def test_describe_of_a_missing_statement_starts_skipping() -> None:
    converse(Tracker(), [
        ("F", Describe("S", "nope")), ("F", Bind("", "nope")), ("F", Execute()),
        ("F", Sync()),
        ("B", "E", ERROR, DESCRIBE),
        ("pending", "SYNC"),
        ("B", "Z", IDLE, SYNC),
    ])  # fmt: skip


def test_deferred_constraint_error_at_sync() -> None:
    """The implicit COMMIT at Sync fails: ErrorResponse then ReadyForQuery, no skipping."""
    converse(Tracker(), [
        ("F", Parse("", "insert into pr_d values (1, 99)")), ("F", Bind()), ("F", Execute()),
        ("F", Sync()),
        ("B", "1", PARSE), ("B", "2", BIND), ("B", "C", b"INSERT 0 1\x00", EXECUTE),
        ("B", "E", ERROR),  # 23503 at COMMIT: the Sync is still owed its Z
        ("pending", "SYNC"),
        ("skipping", False),
        ("B", "Z", IDLE, SYNC),
        ("F", Query("select 1")),
        ("pending", "QUERY"),
    ])  # fmt: skip


def test_simple_query_after_unsynced_extended_messages_acts_as_sync() -> None:
    """B7, PG 15 recorded: Parse, Bind, Execute, Query (no Sync) -> 1 2 D C T D C Z."""
    converse(Tracker(), [
        ("F", Parse("")), ("F", Bind()), ("F", Execute()), ("F", Query("select 2")),
        ("B", "1", PARSE), ("B", "2", BIND), ("B", "D", ROW),
        ("B", "C", SELECT_1, EXECUTE),
        ("B", "T"), ("B", "D", ROW), ("B", "C", SELECT_1),
        ("pending", "QUERY"),
        ("B", "Z", IDLE, QUERY),
        ("idle", True),
        ("statements", set()),  # the Query destroyed the unnamed statement again
    ])  # fmt: skip


# --- COPY --------------------------------------------------------------------------------


def test_copy_in_simple() -> None:
    converse(Tracker(), [
        ("F", Query("copy t from stdin")),
        ("B", "G", COPY_IN),
        ("copy_in", True), ("idle", False),
        ("F", CopyData()), ("F", CopyData()),
        ("F", CopyDone()),
        ("copy_in", False),
        ("pending", "QUERY"),
        ("B", "C", b"COPY 2\x00"),
        ("B", "Z", IDLE, QUERY),
        ("idle", True),
    ])  # fmt: skip


def test_copy_in_ignores_sync_and_flush_until_copy_done() -> None:
    converse(Tracker(), [
        ("F", Query("copy t from stdin")),
        ("B", "G", COPY_IN),
        ("F", CopyData()), ("F", Flush()), ("F", Sync()), ("F", CopyData()),
        ("pending", "QUERY"),  # the Sync reached a backend in copy-in mode: ignored
        ("F", CopyDone()),
        ("B", "C", b"COPY 2\x00"), ("B", "Z", IDLE, QUERY),
        ("idle", True),
    ])  # fmt: skip


def test_copy_in_extended_as_libpq_sends_it() -> None:
    """Bind/Execute/Sync, then CopyData.., CopyDone, Sync: the first Sync is swallowed by
    copy-in mode, the second gets the ReadyForQuery (PITFALLS B12, pgbouncer#1025)."""
    converse(Tracker(), [
        ("F", Parse("", "copy t from stdin")), ("F", Bind()), ("F", Describe("P")),
        ("F", Execute()), ("F", Sync()),
        ("B", "1", PARSE), ("B", "2", BIND), ("B", "n", DESCRIBE),
        ("pending", "EXECUTE SYNC"),
        ("B", "G", COPY_IN),
        ("pending", "EXECUTE"),
        ("copy_in", True),
        ("F", CopyData()), ("F", CopyData()), ("F", CopyDone()), ("F", Sync()),
        ("pending", "EXECUTE SYNC"),
        ("B", "C", b"COPY 2\x00", EXECUTE),
        ("B", "Z", IDLE, SYNC),
        ("idle", True),
    ])  # fmt: skip


def test_copy_fail_simple() -> None:
    converse(Tracker(), [
        ("F", Query("copy t from stdin")),
        ("B", "G", COPY_IN),
        ("F", CopyData()), ("F", CopyFail()),
        ("B", "E", ERROR),  # 57014 COPY from stdin failed
        ("B", "Z", IDLE, QUERY),
        ("idle", True),
    ])  # fmt: skip


def test_copy_fail_extended() -> None:
    converse(Tracker(), [
        ("F", Parse("", "copy t from stdin")), ("F", Bind()), ("F", Execute()), ("F", Sync()),
        ("B", "1", PARSE), ("B", "2", BIND), ("B", "G", COPY_IN),
        ("F", CopyFail()), ("F", Sync()),
        ("B", "E", ERROR, EXECUTE),
        ("pending", "SYNC"),
        ("B", "Z", IDLE, SYNC),
        ("idle", True),
    ])  # fmt: skip


def test_error_during_extended_copy_in_skips_till_the_clients_sync() -> None:
    """PG 15 recorded: bad CopyData -> ErrorResponse at once; CopyData/CopyDone the client
    still sends are dropped; its Sync gets the ReadyForQuery."""
    converse(Tracker(), [
        ("F", Parse("", "copy t from stdin")), ("F", Bind()), ("F", Execute()), ("F", Sync()),
        ("B", "1", PARSE), ("B", "2", BIND), ("B", "G", COPY_IN),
        ("F", CopyData()),
        ("B", "E", ERROR, EXECUTE),  # 22P02 invalid input syntax
        ("copy_in", False), ("skipping", True),
        ("F", CopyData()), ("F", CopyDone()), ("F", Sync()),
        ("pending", "SYNC"),
        ("B", "Z", IDLE, SYNC),
        ("idle", True),
    ])  # fmt: skip


def test_error_during_simple_copy_in_then_late_copy_done() -> None:
    """PG 15 recorded: E Z at once; the client's late CopyDone is dropped by Postgres."""
    converse(Tracker(), [
        ("F", Query("copy t from stdin")),
        ("B", "G", COPY_IN),
        ("F", CopyData()),
        ("B", "E", ERROR),
        ("B", "Z", IDLE, QUERY),
        ("F", CopyDone()),
        ("idle", True),
        ("F", Query("select 1")),
        ("B", "T"), ("B", "D", ROW), ("B", "C", SELECT_1),
        ("B", "Z", IDLE, QUERY),
        ("idle", True),
    ])  # fmt: skip


def test_copy_done_racing_ahead_of_copy_in_response() -> None:
    """A client that streams its COPY data without waiting: CopyDone and a Sync reach the
    tracker before CopyInResponse.  The Sync after CopyDone is answered; the one before
    (sent right after Execute) is swallowed by copy-in mode."""
    converse(Tracker(), [
        ("F", Parse("", "copy t from stdin")), ("F", Bind()), ("F", Execute()), ("F", Sync()),
        ("F", CopyData()), ("F", CopyDone()), ("F", Sync()),
        ("pending", "PARSE BIND EXECUTE SYNC COPY_END SYNC"),
        ("B", "1", PARSE), ("B", "2", BIND),
        ("B", "G", COPY_IN),
        ("copy_in", False),  # its CopyDone is already through
        ("pending", "EXECUTE SYNC"),
        ("B", "C", b"COPY 1\x00", EXECUTE),
        ("B", "Z", IDLE, SYNC),
        ("idle", True),
    ])  # fmt: skip


def test_copy_out_simple_and_extended() -> None:
    converse(Tracker(), [
        ("F", Query("copy (select 1) to stdout")),
        ("B", "H", COPY_IN),
        ("copy_in", False),
        ("B", "d", b"1\n"), ("B", "c"),
        ("B", "C", b"COPY 1\x00"),
        ("B", "Z", IDLE, QUERY),
        ("F", Parse("", "copy (select 1) to stdout")), ("F", Bind()), ("F", Execute()),
        ("F", Sync()),
        ("B", "1", PARSE), ("B", "2", BIND),
        ("B", "H", COPY_IN), ("B", "d", b"1\n"), ("B", "c"),
        ("pending", "EXECUTE SYNC"),  # a Sync is not swallowed in copy-out mode
        ("B", "C", b"COPY 1\x00", EXECUTE),
        ("B", "Z", IDLE, SYNC),
        ("idle", True),
    ])  # fmt: skip


# --- PortalSuspended -------------------------------------------------------------------


def test_execute_with_row_limit_is_answered_by_portal_suspended() -> None:
    converse(Tracker(), [
        ("F", Query("begin")), ("B", "C", b"BEGIN\x00"), ("B", "Z", IN_TXN, QUERY),
        ("F", Parse("", "select generate_series(1,3)")), ("F", Bind("p")),
        ("F", Execute("p")), ("F", Execute("p")), ("F", Sync()),
        ("B", "1", PARSE), ("B", "2", BIND),
        ("B", "D", ROW), ("B", "D", ROW),
        ("B", "s", EXECUTE),
        ("pending", "EXECUTE SYNC"),
        ("B", "D", ROW),
        ("B", "C", SELECT_1, EXECUTE),
        ("B", "Z", IN_TXN, SYNC),
        ("portals", {"p": ""}),
        ("F", Execute("p")), ("F", Sync()),  # an exhausted portal: CommandComplete at once
        ("B", "C", b"SELECT 0\x00", EXECUTE),
        ("B", "Z", IN_TXN, SYNC),
    ])  # fmt: skip


# --- DEALLOCATE ALL / DISCARD ALL (PITFALLS B11) -----------------------------------------


def test_deallocate_all_keeps_a_parse_pipelined_after_it() -> None:
    converse(Tracker(), [
        ("F", Parse("a")), ("F", Sync()), ("B", "1", PARSE), ("B", "Z", IDLE, SYNC),
        ("F", Query("DEALLOCATE ALL")),
        ("F", Parse("b")), ("F", Sync()),
        ("B", "C", b"DEALLOCATE ALL\x00"),
        ("statements", set()),
        ("B", "Z", IDLE, QUERY),
        ("B", "1", PARSE),
        ("statements", {"b"}),
        ("B", "Z", IDLE, SYNC),
    ])  # fmt: skip


def test_deallocate_all_leaves_portals() -> None:
    """PG 15 recorded: in a transaction, DEALLOCATE ALL and then Execute p1 -> rows."""
    converse(Tracker(), [
        ("F", Query("begin")), ("B", "C", b"BEGIN\x00"), ("B", "Z", IN_TXN, QUERY),
        ("F", Parse("s1")), ("F", Bind("p1", "s1")), ("F", Sync()),
        ("B", "1", PARSE), ("B", "2", BIND), ("B", "Z", IN_TXN, SYNC),
        ("F", Query("deallocate all")),
        ("B", "C", b"DEALLOCATE ALL\x00"),
        ("statements", set()),
        ("portals", {"p1": "s1"}),
        ("B", "Z", IN_TXN, QUERY),
        ("F", Execute("p1")), ("F", Sync()),
        ("B", "D", ROW), ("B", "C", SELECT_1, EXECUTE), ("B", "Z", IN_TXN, SYNC),
    ])  # fmt: skip


def test_discard_all_closes_statements_and_portals() -> None:
    """PG 15 recorded: Parse s1, Bind p1, Query 'discard all' -> 1 2 C Z; Execute p1 ->
    34000 portal "p1" does not exist."""
    converse(Tracker(), [
        ("F", Parse("s1")), ("F", Bind("p1", "s1")), ("F", Query("discard all")),
        ("B", "1", PARSE), ("B", "2", BIND),
        ("portals", {"p1": "s1"}),
        ("B", "C", b"DISCARD ALL\x00"),
        ("statements", set()),
        ("portals", {}),
        ("B", "Z", IDLE, QUERY),
    ])  # fmt: skip


def test_deallocate_of_one_name_clears_nothing_here() -> None:
    """The tag of ``DEALLOCATE s1`` is plain ``DEALLOCATE``: it names no statement."""
    converse(Tracker(), [
        ("F", Parse("s1")), ("F", Parse("s2")), ("F", Sync()),
        ("B", "1", PARSE), ("B", "1", PARSE), ("B", "Z", IDLE, SYNC),
        ("F", Query("deallocate s1")),
        ("B", "C", b"DEALLOCATE\x00"), ("B", "Z", IDLE, QUERY),
        ("statements", {"s1", "s2"}),
        ("F", Query("discard plans")),
        ("B", "C", b"DISCARD PLANS\x00"), ("B", "Z", IDLE, QUERY),
        ("statements", {"s1", "s2"}),
    ])  # fmt: skip


# --- FunctionCall, desync guard ----------------------------------------------------------


def test_function_call() -> None:
    converse(Tracker(), [
        ("F", FunctionCall()),
        ("pending", "FUNCTION_CALL"),
        ("B", "V", b"\x00\x00\x00\x015"),
        ("B", "Z", IDLE, FUNCTION_CALL),
        ("F", FunctionCall()),
        ("B", "E", ERROR),  # 42883 function with OID 1 does not exist
        ("skipping", False),
        ("B", "Z", IDLE, FUNCTION_CALL),
        ("idle", True),
    ])  # fmt: skip


def test_ready_for_query_drops_requests_left_unanswered_before_it() -> None:
    converse(Tracker(), [
        ("F", Describe("P")), ("F", Execute()), ("F", Sync()),
        ("B", "Z", IDLE, SYNC),
        ("pending", ""),
        ("idle", True),
    ])  # fmt: skip


def test_unsolicited_messages_with_nothing_pending() -> None:
    converse(Tracker(), [
        ("B", "E", b"SFATAL\x00VFATAL\x00C57P01\x00Mterminating connection\x00\x00"),
        ("B", "C", SELECT_1), ("B", "1"), ("B", "G", COPY_IN),
        ("idle", False),  # an unexpected CopyInResponse still means copy-in mode
        ("B", "Z", IDLE),
        ("idle", True),
    ])  # fmt: skip


# --- recorded conversations through the real framing and codec ---------------------------

SESSION_DECODE = set(b"RKSZE123nCIsGT")


def replay(
    rounds: list[tuple[bytes, bytes]], tracker: Tracker | None = None
) -> tuple[str, Tracker]:
    """Feed recorded rounds; return the transcript of what each backend message completed,
    e.g. ``"1:PARSE 2:BIND T:DESCRIBE C:EXECUTE Z:SYNC"`` (a bare tag completed nothing)."""
    tracker = tracker or Tracker()
    reader = FrontendReader(1 << 20)
    reader.startup = False
    scanner = BackendScanner(SESSION_DECODE)
    words = []
    for frontend, backend in rounds:
        for tag, raw in reader.feed(frontend):
            entry = pending_for(tag, raw[5:])
            if entry is not None:
                tracker.push(entry)
        for tag, payload, _ in scanner.feed(backend):
            done = tracker.on_backend(tag, payload)
            words.append(chr(tag) + ("" if done is None else ":" + done.request.name))
    assert reader.pending() == b"" and scanner.at_boundary()
    return " ".join(words), tracker


REPLAYS = [
    (
        "simple-select",
        [(recorded.SIMPLE_SELECT_FE, recorded.SIMPLE_SELECT_BE)],
        "T C Z:QUERY",
    ),
    (
        "extended",
        [(recorded.EXTENDED_FE, recorded.EXTENDED_BE)],
        "1:PARSE 2:BIND T:DESCRIBE C:EXECUTE Z:SYNC",
    ),
    (
        "asyncpg-describe-flush-then-bind",
        recorded.ASYNCPG_ROUNDS,
        "1:PARSE T:DESCRIBE 2:BIND C:EXECUTE Z:SYNC",
    ),
    (
        "psycopg-prepared-and-pipeline",
        recorded.PSYCOPG_ROUNDS,
        "C Z:QUERY 1:PARSE Z:SYNC 2:BIND T:DESCRIBE C:EXECUTE Z:SYNC "
        "1:PARSE 2:BIND T:DESCRIBE C:EXECUTE 1:PARSE 2:BIND T:DESCRIBE C:EXECUTE Z:SYNC "
        "C Z:QUERY",
    ),
    (
        "pipeline-error",
        recorded.PIPELINE_ERROR_ROUNDS,
        "1:PARSE E:BIND Z:SYNC 1:PARSE 2:BIND C:EXECUTE Z:SYNC",
    ),
    (
        "portal-suspended",
        recorded.SUSPENDED_ROUNDS,
        "C Z:QUERY 1:PARSE 2:BIND s:EXECUTE C:EXECUTE Z:SYNC C Z:QUERY",
    ),
    ("copy-in-simple", recorded.COPY_IN_SIMPLE_ROUNDS, "G C Z:QUERY"),
    (
        "copy-in-extended",
        recorded.COPY_IN_EXTENDED_ROUNDS,
        "1:PARSE 2:BIND n:DESCRIBE G C:EXECUTE Z:SYNC",
    ),
    ("query-while-skipping", recorded.QUERY_WHILE_SKIPPING_ROUNDS, "E:PARSE Z:SYNC"),
    (
        "deferred-error-at-sync",
        recorded.DEFERRED_AT_SYNC_ROUNDS,
        "1:PARSE 2:BIND C:EXECUTE E Z:SYNC",
    ),
    (
        "deallocate-all-pipelined",
        recorded.DEALLOCATE_ALL_ROUNDS,
        "1:PARSE Z:SYNC 1:PARSE 2:BIND C:EXECUTE 1:PARSE Z:SYNC",
    ),
]


@pytest.mark.parametrize(
    ("rounds", "transcript"), [r[1:] for r in REPLAYS], ids=[r[0] for r in REPLAYS]
)
def test_recorded_conversation(rounds: list[tuple[bytes, bytes]], transcript: str) -> None:
    got, tracker = replay(rounds)
    assert got == transcript
    assert tracker.idle()
    assert not tracker.skipping and not tracker.copy_in
    assert tracker.status is TxnStatus.IDLE


def test_recorded_registries() -> None:
    _, tracker = replay(recorded.ASYNCPG_ROUNDS)
    assert tracker.statements["__asyncpg_stmt_1__"].sql == "select $1::int4 as i, $2::text as t"
    _, tracker = replay(recorded.PSYCOPG_ROUNDS)
    assert set(tracker.statements) == {"_pg3_0"}  # COMMIT (a Query) dropped the unnamed one
    assert tracker.statements["_pg3_0"].param_oids == (21, 0)
    assert tracker.portals == {}  # COMMIT ended the transaction
    _, tracker = replay(recorded.DEALLOCATE_ALL_ROUNDS)
    assert set(tracker.statements) == {"b"}
