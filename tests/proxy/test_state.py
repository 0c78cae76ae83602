"""Session settings with transactional semantics (PITFALLS C11)."""

from __future__ import annotations

import struct

import pytest

from proxy.state import (
    DEFAULT,
    REREAD_SQL,
    RESULT_SETTINGS,
    STARTUP_SQL,
    Settings,
    decode_reread,
    startup_settings,
)


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        pytest.param({"user": "u", "database": "d"}, {"session_authorization": "u"}, id="plain"),
        pytest.param(
            {"user": "u", "TimeZone": "UTC", "application_name": "x"},
            {"session_authorization": "u", "timezone": "UTC", "application_name": "x"},
            id="parameters-lowercased",
        ),
        pytest.param(
            {"user": "u", "options": "-c search_path=app,public -c statement_timeout=5s"},
            {"session_authorization": "u", "search_path": "app,public", "statement_timeout": "5s"},
            id="options-c",
        ),
        pytest.param(
            {"user": "u", "options": "-csearch_path=a\\ b --work-mem=64MB"},
            {"session_authorization": "u", "search_path": "a b", "work_mem": "64MB"},
            id="options-escaped-and-long-form",
        ),
    ],
)
def test_startup_settings(parameters: dict[str, str], expected: dict[str, str]) -> None:
    assert startup_settings(parameters) == expected


def _session(**initial: str) -> Settings:
    return Settings.from_startup({"user": "alice", **initial})


def test_set_in_autocommit_sticks() -> None:
    s = _session()
    s.apply("set", "search_path", "app", False)
    s.end_transaction(committed=True)
    assert s.get("search_path") == "app"


def test_set_rolled_back_is_undone() -> None:
    s = _session(search_path="public")
    s.apply("set", "search_path", "app", False)
    assert s.get("search_path") == "app"
    s.end_transaction(committed=False)
    assert s.get("search_path") == "public"


def test_set_local_ends_with_the_transaction() -> None:
    s = _session()
    s.apply("set", "role", "reader", True)
    assert s.get("role") == "reader"
    s.end_transaction(committed=True)
    assert s.get("role") is None


def test_rollback_to_savepoint_restores() -> None:
    s = _session()
    s.apply("set", "search_path", "a", False)
    s.savepoint("sp1")
    s.apply("set", "search_path", "b", False)
    s.apply("set", "role", "r", True)
    s.rollback_to("SP1")
    assert s.get("search_path") == "a"
    assert s.get("role") is None
    s.apply("set", "search_path", "c", False)  # the savepoint remains usable
    s.rollback_to("sp1")
    assert s.get("search_path") == "a"
    s.end_transaction(committed=True)
    assert s.get("search_path") == "a"


def test_release_keeps_changes() -> None:
    s = _session()
    s.savepoint("sp")
    s.apply("set", "search_path", "x", False)
    s.release("sp")
    s.rollback_to("sp")  # no longer exists: nothing happens
    s.end_transaction(committed=True)
    assert s.get("search_path") == "x"


def test_reset_returns_to_startup_value_or_default() -> None:
    s = _session(options="-c search_path=app")
    s.apply("set", "search_path", "other", False)
    s.apply("reset", "search_path", None, False)
    assert s.get("search_path") == "app"
    s.apply("set", "datestyle", "German", False)
    s.apply("reset", "DateStyle", None, False)
    assert s.get("datestyle") == DEFAULT


def test_reset_all_and_discard_all() -> None:
    s = _session(timezone="UTC")
    s.apply("set", "timezone", "Europe/Paris", False)
    s.apply("set", "app.tenant", "42", False)
    s.end_transaction(committed=True)
    s.apply("reset_all", None, None, False)
    s.end_transaction(committed=True)
    assert s.get("timezone") == "UTC"
    assert s.get("app.tenant") == DEFAULT
    s.apply("set", "role", "reader", False)
    s.end_transaction(committed=True)
    s.apply("discard_all", None, None, False)
    s.end_transaction(committed=True)
    assert s.get("role") == DEFAULT


def test_reported_value_wins_over_any_layer() -> None:
    s = _session()
    s.apply("set", "timezone", "Asia/Tokyo", True)
    s.reported("TimeZone", "UTC")
    assert s.get("timezone") == "UTC"


def test_effective_merges_layers() -> None:
    s = _session()
    s.apply("set", "a.b", "1", False)
    s.apply("set", "c.d", "2", True)
    assert s.effective() == {"session_authorization": "alice", "a.b": "1", "c.d": "2"}


def test_reset_all_keeps_role_and_session_authorization() -> None:
    """RESET ALL does not touch role or session_authorization (GUC_NO_RESET_ALL)."""
    s = _session()
    s.apply("set", "role", "reader", False)
    s.apply("set", "search_path", "x", False)
    s.apply("reset_all", None, None, False)
    s.end_transaction(committed=True)
    assert s.get("role") == "reader"
    assert s.get("session_authorization") == "alice"
    assert s.get("search_path") == DEFAULT


def test_set_session_authorization_resets_the_role() -> None:
    s = _session()
    s.apply("set", "role", "reader", False)
    s.apply("set", "session_authorization", "bob", False)
    s.end_transaction(committed=True)
    assert s.get("session_authorization") == "bob"
    assert s.get("role") == DEFAULT


# --- reading the session's state back (issue 9 §2) ----------------------------------------


def _data_row(*values: str | None) -> bytes:
    out = struct.pack("!H", len(values))
    for value in values:
        if value is None:
            out += struct.pack("!i", -1)
        else:
            raw = value.encode()
            out += struct.pack("!i", len(raw)) + raw
    return out


_N = len(RESULT_SETTINGS)
_SETTINGS = ("s2", "UTC", *([None] * (_N - 2)))  # search_path, timezone, then unknown ones


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        pytest.param(
            _data_row("alice", "alice", "f", *_SETTINGS),
            ({"search_path": "s2", "timezone": "UTC", "session_authorization": "alice"}, False),
            id="plain",
        ),
        pytest.param(
            _data_row("alice", "bob", "t", *([None] * _N)),
            ({"session_authorization": "alice", "role": "bob"}, True),
            id="set-role-and-temporary-relations",
        ),
        pytest.param(None, None, id="no-row"),
        pytest.param(_data_row("alice", "alice", "f"), None, id="too-few-columns"),
        pytest.param(_data_row(None, "alice", "f", *_SETTINGS), None, id="null-user"),
        pytest.param(_data_row("a", "a", "f", *_SETTINGS)[:-3], None, id="truncated"),
    ],
)
def test_decode_reread(row: bytes | None, expected: object) -> None:
    assert decode_reread(row) == expected


def test_reread_sql_reads_every_result_setting() -> None:
    for sql in (REREAD_SQL, STARTUP_SQL):
        for name in RESULT_SETTINGS:
            assert f"current_setting('{name}', true)" in sql


def test_resync_at_start_is_what_reset_returns_to() -> None:
    s = Settings.from_startup({"user": "u"})
    s.resync({"bytea_output": "escape", "session_authorization": "u"}, reported=(),
             at_start=True)  # e.g. ALTER ROLE u SET bytea_output = 'escape'
    s.apply("set", "bytea_output", "hex", False)
    s.end_transaction(True)
    s.apply("reset", "bytea_output", None, False)
    assert s.get("bytea_output") == "escape"
    other = Settings.from_startup({"user": "u"})
    other.resync({"bytea_output": "hex", "session_authorization": "u"}, reported=(),
                 at_start=True)
    assert s.effective() != other.effective()


def test_resync_replaces_what_sql_text_showed_but_keeps_reported_values() -> None:
    s = Settings.from_startup({"user": "u", "application_name": "app"})
    s.apply("set", "search_path", "s1", False)
    s.apply("set", "role", "r", False)
    s.reported("TimeZone", "UTC")
    version = s.version
    s.resync({"search_path": "s2", "bytea_output": "escape", "timezone": "Europe/Paris"},
             reported={"timezone"}, at_start=False)
    assert s.version > version
    assert s.get("search_path") == "s2"  # DO changed it: the backend's word wins
    assert s.get("bytea_output") == "escape"
    assert s.get("timezone") == "UTC"  # ParameterStatus is authoritative
    assert s.get("application_name") == "app"  # not a result setting: as followed
    assert s.get("role") is None  # current_user is the session user again
    s.apply("reset", "search_path", None, False)
    assert s.get("search_path") == DEFAULT  # not at start: RESET still goes to the default
