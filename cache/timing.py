"""Round-trip times of a cache backend, for ``pgreactive_redis_duration_seconds``.

`TimedBackend` wraps any `cache.backend.Backend` and times each lookup, fill, bump, mark and
publish -- one round trip each -- from the call to its outcome, failures and timeouts
included (a slow Redis shows here before it fails).  Everything else is passed through.
The wrapped backend is `inner`, for what is not part of the protocol (the Redis client).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from cache.backend import Backend, BackendStats, Lookup

Observe = Callable[[float], None]


class TimedBackend:
    """A `Backend` whose round trips are observed by `observers[operation]`."""

    def __init__(self, inner: Backend, observers: dict[str, Observe]) -> None:
        self.inner = inner
        self._lookup = observers["lookup"]
        self._fill = observers["fill"]
        self._bump = observers["bump"]
        self._mark = observers["mark"]
        self._publish = observers["publish"]

    @property
    def epoch_key(self) -> str:
        return self.inner.epoch_key

    @property
    def available(self) -> bool:
        return self.inner.available

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def healthy(self) -> bool:
        return await self.inner.healthy()

    def stats(self) -> BackendStats:
        return self.inner.stats()

    async def lookup(self, entry_key: str, gen_keys: Sequence[str]) -> Lookup | None:
        started = time.perf_counter()
        try:
            return await self.inner.lookup(entry_key, gen_keys)
        finally:
            self._lookup(time.perf_counter() - started)

    def lookup_now(
        self, entry_key: str, gen_keys: Sequence[str], callback: Callable[[Lookup | None], None]
    ) -> bool:
        started = time.perf_counter()
        observe = self._lookup

        def timed(result: Lookup | None) -> None:
            observe(time.perf_counter() - started)
            callback(result)

        return self.inner.lookup_now(entry_key, gen_keys, timed)

    async def fill(
        self, entry_key: str, gen_keys: Sequence[str], expected_gens: str, blob: bytes, ttl_ms: int
    ) -> bool:
        started = time.perf_counter()
        try:
            return await self.inner.fill(entry_key, gen_keys, expected_gens, blob, ttl_ms)
        finally:
            self._fill(time.perf_counter() - started)

    async def bump(self, gen_keys: Sequence[str], tokens: Sequence[str] = ()) -> bool:
        started = time.perf_counter()
        try:
            return await self.inner.bump(gen_keys, tokens)
        finally:
            self._bump(time.perf_counter() - started)

    async def mark(self, gen_keys: Sequence[str], token: str, ttl_ms: int) -> bool:
        started = time.perf_counter()
        try:
            return await self.inner.mark(gen_keys, token, ttl_ms)
        finally:
            self._mark(time.perf_counter() - started)

    async def publish(
        self, channel: str, payload: str, stream_maxlen: int, once: tuple[str, str] | None = None
    ) -> str | None:
        started = time.perf_counter()
        try:
            return await self.inner.publish(channel, payload, stream_maxlen, once)
        finally:
            self._publish(time.perf_counter() - started)

    async def replay(self, channel: str, after_id: str, count: int) -> list[tuple[str, str]] | None:
        return await self.inner.replay(channel, after_id, count)

    async def save_prepared(self, gid_key: str, gen_keys: Sequence[str]) -> bool:
        return await self.inner.save_prepared(gid_key, gen_keys)

    async def take_prepared(self, gid_key: str) -> list[str] | None:
        return await self.inner.take_prepared(gid_key)

    async def load_prepared(self, gid_key: str) -> list[str] | None:
        return await self.inner.load_prepared(gid_key)
