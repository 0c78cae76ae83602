"""`proxy.capture.Capture`: what a miss keeps for its fill, and what the client sees instead.

Conversations of backend messages, built with `proxy.codec`, fed one by one.
"""

from __future__ import annotations

import struct

from cache import entry
from cache.planner import ReadPlan
from proxy import codec
from proxy.capture import Capture
from proxy.codec import BackendTag

T = codec.message(BackendTag.ROW_DESCRIPTION, struct.pack("!H", 0))
C = codec.message(BackendTag.COMMAND_COMPLETE, b"SELECT 2\x00")
Z = codec.message(BackendTag.READY_FOR_QUERY, b"I")
N = codec.message(BackendTag.NOTICE_RESPONSE, b"SNOTICE\x00\x00")


def _row(value: bytes) -> bytes:
    return codec.message(BackendTag.DATA_ROW, struct.pack("!Hi", 1, len(value)) + value)


def _capture(limit: int = 10_000, max_rows: int = 0) -> Capture:
    plan = ReadPlan(("g",), frozenset({"t"}), 1000)
    return Capture("k", plan, "1", "db", None, 0.0, limit, max_rows=max_rows)


def _feed(capture: Capture, *messages: bytes) -> list[bytes | None]:
    return [capture.add(m[0], m[5:]) for m in messages]


def test_a_whole_result_is_kept_and_relayed_unchanged() -> None:
    c = _capture()
    assert _feed(c, T, _row(b"a"), _row(b"b"), C, Z) == [None] * 5
    assert c.ok and c.complete
    assert b"".join(c.parts) == T + _row(b"a") + _row(b"b") + C


def test_over_the_limit_the_fill_is_abandoned_and_the_rest_streams() -> None:
    c = _capture(limit=len(T) + len(_row(b"a")))
    assert _feed(c, T, _row(b"a"), _row(b"b"), C) == [None] * 4
    assert not c.ok and c.parts == []


def test_a_notice_makes_the_result_not_an_entry() -> None:
    c = _capture()
    _feed(c, T, N, _row(b"a"), C)
    assert not c.ok


def test_row_limit_drops_the_extra_row_and_suspends() -> None:
    """The upstream was asked for N+1 rows: with N+1 the extra one is cut and the result is
    not whole; with exactly N, CommandComplete becomes PortalSuspended for the client."""
    more = _capture(max_rows=1)
    assert _feed(more, T, _row(b"a"), _row(b"b"), C) == [None, None, b"", None]
    assert not more.ok
    exact = _capture(max_rows=1)
    assert _feed(exact, T, _row(b"a"), C) == [None, None, entry.PORTAL_SUSPENDED]
    assert exact.ok and exact.complete
