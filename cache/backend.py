"""What every cache storage backend offers: the `Backend` protocol and its result types.

Theory of operation (shared by `cache.store.RedisBackend` and `cache.memory.MemoryBackend`):

* **Generation counters** are integer keys chosen by the caller (one per table, table scope,
  database, plus one global *epoch*).  They never expire and never go backwards.  A missing
  counter is *born* at the store's current time in microseconds and afterwards only ever
  incremented, so a counter that was evicted, deleted or lost comes back at a value it never
  had before (as long as it was bumped fewer than once per microsecond on average since it
  was first born, and the store's clock does not step backwards).  A missing counter is
  therefore "unknown", never 0, and entries stored under its old values can never match again.
* **Entries** are stored under a caller-given key as ``<gens>\\n<blob>``, where ``<gens>`` is
  the comma-joined decimal values of the entry's counters, read *before* the query ran, in
  the order of the ``gen_keys`` given.  An entry is served only while the current values
  still equal its stored ``<gens>``; a bump makes every older entry unreachable at once.
* **lookup** reads the counters (birthing missing ones) and the entry in one atomic step and
  returns the current ``gens`` (to hand back to **fill**) plus the blob when it is current.
* **fill** stores an entry only if the counters still equal the ``gens`` the reader saw before
  it ran its query (compare-and-set): a write that committed and bumped in between makes the
  fill *refused* (PITFALLS E5).
* **bump** increments counters after a commit; the caller awaits it before the writer sees
  ReadyForQuery (invariant 2).
* **In-flight marks** (invariant 9, reads never go backwards): **mark** runs *before* a
  write's commit goes upstream.  It bumps the counters the commit will bump (so every entry
  stored under them becomes unreachable at once: lookups miss) and adds a caller-chosen
  token to each counter's in-flight set, live for ``ttl_ms`` (so it ends by itself if the
  proxy dies before confirming).  While any mark on one of its counters is live, **fill**
  refuses.  The commit's confirmation is a **bump** with the mark's ``tokens``: it bumps the
  counters again and ends those marks.  The second bump is needed: a reader that read the
  counters after the mark, but whose query ran before the commit was visible, would
  otherwise store the old rows under still-current counters once the mark is gone.  Each
  mark has its own token, so concurrent writers on the same counters never end each
  other's marks, and one whose TTL ran out only loses its own protection.
* **Fail open, then heal** (invariant 5): a backend never raises for a store failure; it
  returns a "not available" value (lookup → ``None``, fill/bump → ``False``, publish →
  ``None``).  After a failure it serves nothing until it has bumped the epoch counter, which
  every lookup must include among its ``gen_keys`` (`Backend.epoch_key`).
* **Events**: `publish` appends a JSON payload to a capped stream named like the channel and
  publishes the *identical* payload on the channel.  The payload carries its own stream
  entry id: the caller writes the `EVENT_ID` placeholder where the id belongs (use
  `event_template`), the backend chooses the id and substitutes it before storing and
  publishing.  `replay` returns what a consumer missed, strictly after the last id it saw.

This module is pure: it imports neither asyncio's I/O nor redis.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

EVENT_ID = "__PGREACTIVE_EVENT_ID__"
"""Placeholder that `Backend.publish` replaces (first occurrence) with the stream entry id."""

INFLIGHT_PREFIX = "inflight:"
"""Counter keys must not start with this: it names their in-flight sets."""


def inflight_key(gen_key: str) -> str:
    """The in-flight set of a counter (same Redis Cluster hash tag as the counter)."""
    return INFLIGHT_PREFIX + gen_key


@dataclass(frozen=True, slots=True)
class Lookup:
    """The outcome of `Backend.lookup`: the current generations, and the blob on a hit."""

    gens: str
    """Comma-joined current counter values, in ``gen_keys`` order; pass to `Backend.fill`."""
    blob: bytes | None
    """The stored blob when the entry exists and its generations are current, else None."""

    @property
    def hit(self) -> bool:
        return self.blob is not None


@dataclass(frozen=True, slots=True)
class BackendStats:
    """A snapshot of a backend's counters, for metrics."""

    available: bool
    errors: int
    skipped: int
    lookups: int
    hits: int
    fills_stored: int
    fills_refused: int
    bumps: int
    bump_failures: int
    marks: int
    heals: int
    published: int


def event_template(fields: Mapping[str, object]) -> str:
    """JSON for `Backend.publish`: ``fields`` with ``"eventId"`` set to the `EVENT_ID` placeholder.

    ``eventId`` is placed right after ``type`` (or first), so that it is the first occurrence
    of the placeholder even if some later value happened to contain the placeholder text.
    """
    ordered: dict[str, object] = {}
    if "type" in fields:
        ordered["type"] = fields["type"]
    ordered["eventId"] = EVENT_ID
    for name, value in fields.items():
        if name not in ("type", "eventId"):
            ordered[name] = value
    return json.dumps(ordered, separators=(",", ":"))


def check_template(payload: str) -> None:
    """Raise ValueError when ``payload`` lacks the `EVENT_ID` placeholder (a programming error)."""
    if EVENT_ID not in payload:
        raise ValueError(f"event payload must contain the {EVENT_ID!r} placeholder")


def parse_stream_id(stream_id: str) -> tuple[int, int]:
    """``"1732612345123-4"`` → ``(1732612345123, 4)``; a bare ``"ms"`` means ``ms-0``."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class BackendCounters:
    """The operation counters both backends keep, and the `stats()` snapshot of them."""

    def __init__(self) -> None:
        self.errors = 0
        self.skipped = 0
        self.lookups = 0
        self.hits = 0
        self.fills_stored = 0
        self.fills_refused = 0
        self.bumps = 0
        self.bump_failures = 0
        self.marks = 0
        self.heals = 0
        self.published = 0

    @property
    def available(self) -> bool:
        raise NotImplementedError

    def stats(self) -> BackendStats:
        return BackendStats(
            available=self.available,
            errors=self.errors,
            skipped=self.skipped,
            lookups=self.lookups,
            hits=self.hits,
            fills_stored=self.fills_stored,
            fills_refused=self.fills_refused,
            bumps=self.bumps,
            bump_failures=self.bump_failures,
            marks=self.marks,
            heals=self.heals,
            published=self.published,
        )


@runtime_checkable
class Backend(Protocol):
    """The storage operations the cache layer needs; none of them raises for a store failure."""

    @property
    def epoch_key(self) -> str:
        """The global epoch counter: include it in every lookup's ``gen_keys``."""
        ...

    @property
    def available(self) -> bool:
        """True when lookups may be served; False while failed or not yet healed."""
        ...

    async def start(self) -> None:
        """Connect (and heal) if possible; never raises for an unreachable store."""

    async def close(self) -> None:
        """Release connections and subscribers."""

    async def healthy(self) -> bool:
        """For /readyz: can the store be used right now (probes it, may heal)."""
        ...

    def stats(self) -> BackendStats:
        """A snapshot of the counters."""
        ...

    async def lookup(self, entry_key: str, gen_keys: Sequence[str]) -> Lookup | None:
        """Current gens and, when current, the entry's blob; None when unavailable."""
        ...

    def lookup_now(
        self, entry_key: str, gen_keys: Sequence[str], callback: Callable[[Lookup | None], None]
    ) -> bool:
        """`lookup` without a task, where the backend can: start it and return True;
        `callback` gets the outcome later (never before this returns).  False: nothing was
        started, use `lookup`."""
        ...

    async def fill(
        self,
        entry_key: str,
        gen_keys: Sequence[str],
        expected_gens: str,
        blob: bytes,
        ttl_ms: int,
    ) -> bool:
        """Store ``blob`` if the gens still equal ``expected_gens`` and no mark on them is
        live; False if refused/failed."""
        ...

    async def bump(self, gen_keys: Sequence[str], tokens: Sequence[str] = ()) -> bool:
        """Increment (or birth) each counter and end the marks ``tokens`` on them; False
        when it could not be done."""
        ...

    async def mark(self, gen_keys: Sequence[str], token: str, ttl_ms: int) -> bool:
        """Before a commit: increment each counter and mark it in flight under ``token``
        for ``ttl_ms``; False when it could not be done (as a failed bump)."""
        ...

    async def publish(
        self, channel: str, payload: str, stream_maxlen: int, once: tuple[str, str] | None = None
    ) -> str | None:
        """Append to stream ``channel`` and publish; returns the event id, None on failure.

        With ``once = (key, position)``: only if ``position`` (fixed-width text) is past the
        one last published under ``key``, atomically with storing it; else returns ``""``."""
        ...

    async def replay(self, channel: str, after_id: str, count: int) -> list[tuple[str, str]] | None:
        """Up to ``count`` events strictly after ``after_id`` (``"0"`` for all); None on failure."""
        ...

    async def save_prepared(self, gid_key: str, gen_keys: Sequence[str]) -> bool:
        """Remember a prepared transaction's counters to bump at COMMIT PREPARED."""
        ...

    async def take_prepared(self, gid_key: str) -> list[str] | None:
        """Fetch and forget them; None when unknown *or* unavailable (bump the database)."""
        ...

    async def load_prepared(self, gid_key: str) -> list[str] | None:
        """Fetch them (to mark before COMMIT PREPARED); None when unknown or unavailable."""
        ...
