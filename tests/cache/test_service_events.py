"""`CacheService.invalidate` publishes its events before it returns.

The session awaits `invalidate` before it lets the writer's ReadyForQuery through, so an event
published only after `invalidate` returned could reach subscribers after the writer learned
of its commit (issue 4: events go out "after the generations are bumped and before the
writer's ReadyForQuery").  A backend whose publish takes a while makes the order visible.
"""

from __future__ import annotations

import asyncio
import json

from cache.keys import Namespace
from cache.memory import MemoryBackend
from cache.planner import WritePlan
from cache.service import CacheService
from proxy.config import cache_settings, events_channel, load
from proxy.metrics import Stats


class _SlowPublish(MemoryBackend):
    """The in-process backend, with a publish that takes 50 ms (as over a slow network)."""

    async def publish(self, channel: str, payload: str, stream_maxlen: int) -> str | None:
        await asyncio.sleep(0.05)
        return await super().publish(channel, payload, stream_maxlen)


async def test_events_are_published_before_invalidate_returns() -> None:
    config = load(None, {}, {})
    backend = _SlowPublish()
    service = CacheService(cache_settings(config), backend, Stats())
    await service.start()
    try:
        ns = Namespace.of(service.upstream_id, "app", service.root)
        plan = WritePlan(frozenset({ns.table("agents")}), "agents", frozenset({"agents"}),
                         "UPDATE", None)
        assert await service.invalidate("app", [plan])
        events = await backend.replay(events_channel(config), "0-0", 10)
        assert events is not None and len(events) == 1
        event = json.loads(events[0][1])
        assert (event["table"], event["operation"], event["database"]) == (
            "agents", "UPDATE", "app"
        )
    finally:
        await service.close()
