"""Reading the invalidation events: filters, ids, and replay from the stream.

Shared by ``pgreactive events tail`` (`proxy.tools.events`) and ``GET /events``
(`proxy.sse`).  Both follow the channel and replay from the stream of the same name
(`proxy.config.events_channel`) without a gap or a duplicate between the two, the same way:
subscribe first (live events now queue up), then read the stream after the consumer's last
id (`replay`), then drop every live event whose ``eventId`` is not `newer` than the last one
handled.  Stream ids increase and the proxy XADDs and PUBLISHes in one atomic script, so the
channel delivers events in id order.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cache.backend import parse_stream_id

REPLAY_BATCH = 1000  # stream entries per XRANGE
STREAM_ID = re.compile(r"\d+(-\d+)?")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to pass: all of them, or those naming one of `tables` / `orgs`.

    A whole-database invalidation (``"table": "*"``) reaches every table, so it passes a
    table filter; ``organizationId`` must equal one of `orgs` exactly (an unscoped event
    has null there and does not pass).
    """

    tables: frozenset[str] = frozenset()
    orgs: frozenset[str] = frozenset()

    def keeps(self, event: Mapping[str, Any]) -> bool:
        if self.tables:
            named = [event.get("table")]
            listed = event.get("tables")
            if isinstance(listed, list):
                named += listed
            if "*" not in named and not self.tables.intersection(named):
                return False
        return not self.orgs or event.get("organizationId") in self.orgs


def newer(event_id: str, last: str | None) -> bool:
    """Whether stream id `event_id` comes after `last` (always, when nothing was seen)."""
    if last is None:
        return True
    try:
        return parse_stream_id(event_id) > parse_stream_id(last)
    except ValueError:
        return True  # not an id of ours: nothing to deduplicate against


def decode(payload: bytes) -> dict[str, Any] | None:
    """The event object of a payload, or None when it is not a JSON object."""
    try:
        event = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return event if isinstance(event, dict) else None


async def replay(client: Redis, channel: str, after: str) -> AsyncIterator[tuple[str, bytes]]:
    """``(stream id, payload)`` of every entry of the stream after id `after`, in order,
    read `REPLAY_BATCH` at a time."""
    while True:
        entries: Any = await client.xrange(channel, min=f"({after}", count=REPLAY_BATCH)
        for entry_id, fields in entries:
            after = entry_id.decode("ascii")
            yield after, fields.get(b"event", b"")
        if len(entries) < REPLAY_BATCH:
            return


@dataclass(frozen=True, slots=True)
class StreamState:
    """What XINFO STREAM says of the stream (the counters are None before Redis 7.0)."""

    first: str | None  # the oldest entry kept (None: empty)
    last: str  # the newest id ever added
    length: int
    added: int | None  # entries ever added
    max_deleted: str | None  # the newest id trimmed or deleted ("0-0": none)


async def stream_state(client: Redis, channel: str) -> StreamState | None:
    """The stream's `StreamState`, or None when there is no stream (yet)."""
    try:
        info: Any = await client.xinfo_stream(channel)
    except RedisError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    first = info.get("first-entry")
    added, deleted = info.get("entries-added"), info.get("max-deleted-entry-id")
    return StreamState(
        first=_text(first[0]) if first else None,
        last=_text(info.get("last-generated-id") or "0-0"),
        length=int(info.get("length") or 0),
        added=added if isinstance(added, int) else None,
        max_deleted=_text(deleted) if deleted is not None else None,
    )


def trimmed_after(state: StreamState | None, since: str) -> str | None:
    """The stream's oldest entry, when events between `since` and it may have been trimmed
    (the stream keeps about `events.stream_maxlen` entries); else None."""
    if state is None or state.first is None or state.added is None:
        return None  # no stream, empty, or a Redis before 7.0 that does not count
    if state.added > state.length and newer(state.first, since):
        return state.first
    return None


def lost_after(state: StreamState | None, since: str) -> bool:
    """Whether some event after `since` may no longer be replayable (then the consumer must
    resync): the stream dropped entries newer than `since` (trimmed to about
    `events.stream_maxlen`, or deleted), or it never reached `since` (it was recreated).
    Id 0 asks for all the stream holds: never lost.

    Trimming removes the oldest entries, and Redis does not say which ids it removed: when
    the oldest entry kept is newer than `since` and something was removed, an entry after
    `since` may have been among them.  That answer is conservative (true also when exactly
    the entries up to `since` went): a needless resync costs a revalidation, a missed one
    would cost stale data."""
    if parse_stream_id(since) == (0, 0):
        return False
    if state is None or newer(since, state.last):
        return True  # no stream, or one that never reached `since`: it was recreated
    if not newer(state.last, since):
        return False  # nothing was added after `since`
    if state.added is not None and state.added == state.length:
        return False  # nothing was ever removed
    if state.first is None or newer(state.first, since):
        return True
    return state.max_deleted is not None and newer(state.max_deleted, since)  # an XDEL


def _text(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)
