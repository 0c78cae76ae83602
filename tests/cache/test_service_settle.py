"""`CacheService.settle`: the one call a session awaits before it lets a transaction's end
through, for each kind of `Invalidate` value (a commit, PREPARE TRANSACTION, COMMIT and
ROLLBACK PREPARED), against the in-process backend."""

from __future__ import annotations

from cache.keys import Namespace
from cache.memory import MemoryBackend
from cache.planner import WritePlan
from cache.service import CacheService, Invalidate
from proxy.config import cache_settings, load
from proxy.metrics import Stats


async def _gens(backend: MemoryBackend, *keys: str) -> str:
    looked = await backend.lookup("probe", list(keys))
    assert looked is not None
    return looked.gens


async def test_each_kind_of_transaction_end() -> None:
    backend = MemoryBackend()
    service = CacheService(cache_settings(load(None, {}, {})), backend, Stats())
    await service.start()
    try:
        ns = Namespace.of(service.upstream_id, "app", service.root)
        key = ns.table("agents")
        plan = WritePlan(frozenset({key}), "agents", frozenset({"agents"}), "UPDATE", None)
        start = await _gens(backend, key, ns.epoch)

        assert await service.settle(Invalidate("app", (plan,)))  # a commit
        committed = await _gens(backend, key, ns.epoch)
        assert committed != start

        assert await service.settle(Invalidate("app", (plan,), prepared="g1"))
        assert await _gens(backend, key, ns.epoch) == committed  # saved, not bumped
        assert await service.settle(Invalidate("app", finished="g1", committed=True))
        after_prepared = await _gens(backend, key, ns.epoch)
        assert after_prepared != committed
        assert after_prepared.split(",")[1] == committed.split(",")[1]  # not the database

        assert await service.settle(Invalidate("app", (plan,), prepared="g2"))
        await service.settle(Invalidate("app", finished="g2", committed=False))
        assert await _gens(backend, key, ns.epoch) == after_prepared  # rolled back

        assert await service.settle(Invalidate("app", finished="unknown", committed=True))
        assert (await _gens(backend, key, ns.epoch)).split(",")[1] != after_prepared.split(",")[1]
    finally:
        await service.close()
