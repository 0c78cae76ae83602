"""`proxy.eventfeed.lost_after` (when ``GET /events`` must send a resync) and the
`proxy.sse.options` of a request."""

from __future__ import annotations

import pytest

from proxy.eventfeed import EventFilter, StreamState, lost_after
from proxy.sse import BadRequest, message, options

UNTRIMMED = StreamState(first="7-1", last="7-3", length=3, added=3, max_deleted="0-0")
TRIMMED = StreamState(first="7-3", last="7-3", length=1, added=3, max_deleted="0-0")
DELETED = StreamState(first="7-1", last="7-3", length=2, added=3, max_deleted="7-2")


@pytest.mark.parametrize(
    ("state", "since", "lost"),
    [
        (UNTRIMMED, "7-1", False),
        (UNTRIMMED, "5-0", False),  # older than the stream, but nothing was ever removed
        (TRIMMED, "7-1", True),
        (TRIMMED, "7-2", True),  # conservative: 7-2 itself may have been the last trimmed
        (TRIMMED, "7-3", False),  # nothing after it
        (DELETED, "7-1", True),  # XDEL of 7-2
        (DELETED, "7-2", False),
        (None, "7-1", True),  # the stream is gone
        (None, "0", False),  # 0: all the stream holds
        (TRIMMED, "0-0", False),
        (UNTRIMMED, "8-0", True),  # newer than the stream ever was: it was recreated
    ],
)
def test_lost_after(state: StreamState | None, since: str, lost: bool) -> None:
    assert lost_after(state, since) is lost


def test_options() -> None:
    keep, since = options("tables=public.agents,notes&org=A", "")
    assert keep == EventFilter(frozenset({"agents", "notes"}), frozenset({"A"}))
    assert since is None
    assert options("lastEventId=5-1", "")[1] == "5-1"
    assert options("lastEventId=5-1", "6-0")[1] == "6-0"  # the header wins
    with pytest.raises(BadRequest, match="expected an event id"):
        options("", "yesterday")


def test_message_splits_data_lines() -> None:
    assert message("1-0", "invalidation", "{}") == b"id: 1-0\nevent: invalidation\ndata: {}\n\n"
    assert message("1-0", "x", "a\nb") == b"id: 1-0\nevent: x\ndata: a\ndata: b\n\n"
