"""`TimedBackend` observes one round trip per lookup, fill, bump, mark and publish, and changes
nothing about their outcomes (pgreactive_redis_duration_seconds)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cache.backend import Backend, Lookup, event_template
from cache.memory import MemoryBackend
from cache.timing import TimedBackend
from proxy.metrics import REDIS_OPERATIONS


class _Now(MemoryBackend):
    """The in-process backend, with a `lookup_now` that answers at once (as Redis's
    data_received would, later)."""

    def lookup_now(
        self, entry_key: str, gen_keys: Sequence[str], callback: Callable[[Lookup | None], None]
    ) -> bool:
        callback(Lookup("1", None))
        return True


async def test_each_operation_is_observed_once_and_passed_through() -> None:
    seen: dict[str, list[float]] = {op: [] for op in REDIS_OPERATIONS}
    backend: Backend = TimedBackend(_Now(), {op: seen[op].append for op in REDIS_OPERATIONS})
    await backend.start()
    looked = await backend.lookup("e", ["g"])
    assert looked is not None and not looked.hit
    assert await backend.fill("e", ["g"], looked.gens, b"blob", 1000)
    assert await backend.bump(["g"])
    assert await backend.mark(["g"], "token", 1000)
    assert await backend.publish("ch", event_template({"type": "invalidation"}), 10)
    answers: list[Lookup | None] = []
    assert backend.lookup_now("e", ["g"], answers.append)
    assert answers == [Lookup("1", None)]
    assert {op: len(times) for op, times in seen.items()} == {
        "lookup": 2, "fill": 1, "bump": 1, "mark": 1, "publish": 1,
    }  # fmt: skip
    assert all(t >= 0 for times in seen.values() for t in times)
    await backend.close()
