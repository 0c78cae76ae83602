"""`cache.eligibility`: every bypass reason a session's state decides, and their precedence."""

from __future__ import annotations

import pytest

from analyzer import analyze
from cache.eligibility import SessionFacts, bypass, relayed_read_reason
from cache.planner import Bypass

IDLE = SessionFacts()

CASES = [
    pytest.param(IDLE, None, id="idle-outside-a-transaction"),
    pytest.param(SessionFacts(in_transaction=True), Bypass.IN_TRANSACTION, id="in-transaction"),
    pytest.param(
        SessionFacts(awaiting_replies=True), Bypass.REQUEST_SHAPE, id="replies-outstanding"
    ),
    pytest.param(SessionFacts(skipping=True), Bypass.REQUEST_SHAPE, id="skipping-until-sync"),
    pytest.param(SessionFacts(capturing=True), Bypass.REQUEST_SHAPE, id="capturing-a-miss"),
    pytest.param(SessionFacts(executed=True), Bypass.REQUEST_SHAPE, id="segment-executed"),
    pytest.param(SessionFacts(invalidating=True), Bypass.REQUEST_SHAPE, id="invalidating"),
    pytest.param(
        SessionFacts(state_unknown=True), Bypass.SESSION_STATE_UNKNOWN, id="state-unknown"
    ),
    pytest.param(SessionFacts(rereading=True), Bypass.SESSION_STATE_UNKNOWN, id="rereading"),
    pytest.param(SessionFacts(temporary=True), Bypass.SESSION_STATE, id="temporary-relations"),
    pytest.param(
        SessionFacts(client_encoding="LATIN1"), Bypass.SESSION_STATE, id="client-encoding"
    ),
    pytest.param(SessionFacts(client_encoding="UTF8"), None, id="client-encoding-utf8"),
    # Precedence: the first reason of the module docstring's list wins.
    pytest.param(
        SessionFacts(in_transaction=True, awaiting_replies=True, state_unknown=True),
        Bypass.IN_TRANSACTION,
        id="transaction-before-shape",
    ),
    pytest.param(
        SessionFacts(invalidating=True, state_unknown=True, temporary=True),
        Bypass.REQUEST_SHAPE,
        id="shape-before-state",
    ),
    pytest.param(
        SessionFacts(rereading=True, client_encoding="SQL_ASCII"),
        Bypass.SESSION_STATE_UNKNOWN,
        id="unknown-before-known-state",
    ),
]


@pytest.mark.parametrize(("facts", "expected"), CASES)
def test_bypass(facts: SessionFacts, expected: Bypass | None) -> None:
    assert bypass(facts) is expected


@pytest.mark.parametrize(
    ("sql", "facts", "expected"),
    [
        pytest.param("select 1", IDLE, Bypass.REQUEST_SHAPE, id="cacheable-in-a-pipeline"),
        pytest.param(
            "select * from agents",
            SessionFacts(in_transaction=True),
            Bypass.IN_TRANSACTION,
            id="session-reason-first",
        ),
        pytest.param("select now()", IDLE, "stable_function", id="statement-reason"),
        pytest.param(
            "select now()",
            SessionFacts(temporary=True),
            Bypass.SESSION_STATE,
            id="session-reason-before-statement",
        ),
        pytest.param("update agents set x = 1", IDLE, None, id="not-a-read"),
    ],
)
def test_relayed_read_reason(sql: str, facts: SessionFacts, expected: str | None) -> None:
    assert relayed_read_reason(analyze(sql), facts) == expected


def test_facts_are_a_value() -> None:
    with pytest.raises(AttributeError):
        IDLE.in_transaction = True  # type: ignore[misc]
    assert SessionFacts(temporary=True) == SessionFacts(temporary=True)
