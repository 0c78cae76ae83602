"""The in-process cache backend, used when no Redis is configured (one proxy instance).

Theory of operation: the same data model and answers as `cache.store.RedisBackend` (see
`cache.backend`), kept in this process.  Every operation runs to completion without awaiting,
so on one event loop each is as atomic as a Lua script in Redis.

* Counters live in a plain dict and are never evicted; a missing one is born at
  ``time.time_ns() // 1000`` (µs), exactly like the Redis backend.
* Entries live in an `OrderedDict` in LRU order with an absolute expiry (monotonic clock).
  Their total size (keys + gens + blobs) is bounded by ``max_bytes``: storing evicts the least
  recently used entries, never counters.  An expired entry is dropped when a lookup meets it,
  or when it reaches the LRU end (so it still counts towards the bound until then).
* Events: each channel has a bounded deque (the replay stream, exact MAXLEN) with ids
  ``<ms>-<seq>`` chosen as XADD ``*`` would, and in-process subscribers get the identical
  payload through a bounded `asyncio.Queue` each (when a queue is full its oldest event is
  dropped: pub/sub is lossy, replay is not).
* In-flight marks: per counter, a dict of token → expiry (monotonic clock); a fill is
  refused while any of its counters has an unexpired one.
* It never fails, so `available` is always True.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cache.backend import (
    EVENT_ID,
    BackendCounters,
    Lookup,
    check_template,
    parse_stream_id,
)


@dataclass(frozen=True, slots=True)
class _Entry:
    gens: str
    blob: bytes
    expires: float
    size: int


class MemoryBackend(BackendCounters):
    """`cache.backend.Backend` in process memory."""

    def __init__(
        self,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        epoch_key: str = "pgr:epoch",
        queue_size: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._max_bytes = max_bytes
        self._epoch_key = epoch_key
        self._queue_size = queue_size
        self._clock = clock
        self._counters: dict[str, int] = {}
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._streams: dict[str, deque[tuple[str, str]]] = {}
        self._last_ids: dict[str, tuple[int, int]] = {}
        self._positions: dict[str, str] = {}  # `publish(once=...)`: last position per key
        self._subscribers: dict[str, list[asyncio.Queue[str]]] = {}
        self._prepared: dict[str, list[str]] = {}
        self._inflight: dict[str, dict[str, float]] = {}  # counter → token → expiry
        self.evictions = 0

    @property
    def epoch_key(self) -> str:
        return self._epoch_key

    @property
    def available(self) -> bool:
        return True

    @property
    def bytes_used(self) -> int:
        return self._bytes

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subscribers.clear()

    async def healthy(self) -> bool:
        return True

    # --- counters and entries -------------------------------------------------------------

    def _gens(self, gen_keys: Sequence[str]) -> str:
        values: list[str] = []
        born: int | None = None
        for key in gen_keys:
            value = self._counters.get(key)
            if value is None:
                born = born if born is not None else time.time_ns() // 1000
                value = self._counters[key] = born
            values.append(str(value))
        return ",".join(values)

    def _live(self, entry_key: str) -> _Entry | None:
        entry = self._entries.get(entry_key)
        if entry is not None and entry.expires <= self._clock():
            self._drop(entry_key)
            return None
        return entry

    def _drop(self, entry_key: str) -> None:
        entry = self._entries.pop(entry_key)
        self._bytes -= entry.size

    async def lookup(self, entry_key: str, gen_keys: Sequence[str]) -> Lookup | None:
        self.lookups += 1
        gens = self._gens(gen_keys)
        entry = self._live(entry_key)
        if entry is None or entry.gens != gens:
            return Lookup(gens=gens, blob=None)
        self._entries.move_to_end(entry_key)
        self.hits += 1
        return Lookup(gens=gens, blob=entry.blob)

    def lookup_now(
        self, entry_key: str, gen_keys: Sequence[str], callback: Callable[[Lookup | None], None]
    ) -> bool:
        return False  # `lookup` never waits here: the task path costs nothing extra

    async def fill(
        self,
        entry_key: str,
        gen_keys: Sequence[str],
        expected_gens: str,
        blob: bytes,
        ttl_ms: int,
    ) -> bool:
        if self._gens(gen_keys) != expected_gens or self._in_flight(gen_keys):
            self.fills_refused += 1
            return False
        size = len(entry_key) + len(expected_gens) + 1 + len(blob)
        if size > self._max_bytes:
            return False
        if entry_key in self._entries:
            self._drop(entry_key)
        self._entries[entry_key] = _Entry(expected_gens, blob, self._clock() + ttl_ms / 1000, size)
        self._bytes += size
        self._evict()
        self.fills_stored += 1
        return True

    def _evict(self) -> None:
        while self._bytes > self._max_bytes:
            key = next(iter(self._entries))
            self._drop(key)
            self.evictions += 1

    def _in_flight(self, gen_keys: Sequence[str]) -> bool:
        now = self._clock()
        for key in gen_keys:
            marks = self._inflight.get(key)
            if marks:
                for token, expires in list(marks.items()):
                    if expires > now:
                        return True
                    del marks[token]
        return False

    def _incr(self, gen_keys: Sequence[str]) -> None:
        born: int | None = None
        for key in gen_keys:
            value = self._counters.get(key)
            if value is None:
                born = born if born is not None else time.time_ns() // 1000
                value = born
            self._counters[key] = value + 1

    async def bump(self, gen_keys: Sequence[str], tokens: Sequence[str] = ()) -> bool:
        self._incr(gen_keys)
        for key in gen_keys if tokens else ():
            marks = self._inflight.get(key)
            if marks is not None:
                for token in tokens:
                    marks.pop(token, None)
                if not marks:
                    del self._inflight[key]
        self.bumps += 1
        return True

    async def mark(self, gen_keys: Sequence[str], token: str, ttl_ms: int) -> bool:
        self._incr(gen_keys)
        expires = self._clock() + ttl_ms / 1000
        now = self._clock()
        for key in gen_keys:
            marks = self._inflight.setdefault(key, {})
            for other in [t for t, e in marks.items() if e <= now]:
                del marks[other]  # (marks never confirmed: their proxy session ended)
            marks[token] = expires
        self.marks += 1
        return True

    # --- events ---------------------------------------------------------------------------

    def subscribe(self, channel: str) -> asyncio.Queue[str]:
        """A queue that receives every payload published on ``channel`` from now on."""
        queue: asyncio.Queue[str] = asyncio.Queue(self._queue_size)
        self._subscribers.setdefault(channel, []).append(queue)
        return queue

    def unsubscribe(self, channel: str, queue: asyncio.Queue[str]) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._subscribers[channel].remove(queue)

    def _next_id(self, channel: str) -> str:
        ms = time.time_ns() // 1_000_000
        last_ms, last_seq = self._last_ids.get(channel, (0, -1))
        seq = 0
        if last_ms >= ms:
            ms, seq = last_ms, last_seq + 1
        self._last_ids[channel] = (ms, seq)
        return f"{ms}-{seq}"

    async def publish(
        self, channel: str, payload: str, stream_maxlen: int, once: tuple[str, str] | None = None
    ) -> str | None:
        check_template(payload)
        if once is not None:
            key, position = once
            if self._positions.get(key, "") >= position:
                return ""
            self._positions[key] = position
        event_id = self._next_id(channel)
        final = payload.replace(EVENT_ID, event_id, 1)
        stream = self._streams.setdefault(channel, deque())
        stream.append((event_id, final))
        while len(stream) > max(stream_maxlen, 0):
            stream.popleft()
        for queue in self._subscribers.get(channel, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(final)
        self.published += 1
        return event_id

    async def replay(self, channel: str, after_id: str, count: int) -> list[tuple[str, str]] | None:
        after = parse_stream_id(after_id)
        out: list[tuple[str, str]] = []
        for event_id, payload in self._streams.get(channel, ()):
            if parse_stream_id(event_id) > after:
                out.append((event_id, payload))
                if len(out) >= count:
                    break
        return out

    # --- two-phase commit -----------------------------------------------------------------

    async def save_prepared(self, gid_key: str, gen_keys: Sequence[str]) -> bool:
        self._prepared[gid_key] = list(gen_keys)
        return True

    async def take_prepared(self, gid_key: str) -> list[str] | None:
        return self._prepared.pop(gid_key, None)

    async def load_prepared(self, gid_key: str) -> list[str] | None:
        keys = self._prepared.get(gid_key)
        return list(keys) if keys is not None else None
