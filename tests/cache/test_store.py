"""Storage backends: generations, fill/refuse, TTL, events, 2PC sets, fail-open and heal.

Shared semantics run against both backends (`backend` fixture: memory, redis on db 13);
Redis-only behaviour (counter loss, outages, eviction policy) uses the `redis_backend`,
`redis_server` and `relay` fixtures.  No test asserts on elapsed time: waits are polls with a
generous guard that only fails a test when something never happens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from cache.backend import (
    EVENT_ID,
    Backend,
    Lookup,
    event_template,
    inflight_key,
    parse_stream_id,
)
from cache.memory import MemoryBackend
from cache.store import RedisBackend

from .conftest import EPOCH, RedisServer, Relay

GENS = ["t:gen:a", "t:gen:b", EPOCH]
GUARD = 5.0  # seconds: only ever a limit for "this never happened"


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened within {GUARD}s: {what}")
        await asyncio.sleep(0.02)


async def must_lookup(b: Backend, key: str, gens: list[str] = GENS) -> Lookup:
    result = await b.lookup(key, gens)
    assert result is not None
    return result


def now_us() -> int:
    return time.time_ns() // 1000


# --- shared semantics ---------------------------------------------------------------------


async def test_miss_births_counters_at_microsecond_time(backend: Backend) -> None:
    before = now_us()
    first = await must_lookup(backend, "t:e:1")
    after = now_us()
    assert first.blob is None and not first.hit
    values = [int(v) for v in first.gens.split(",")]
    assert len(values) == len(GENS)
    for v in values:  # born from the store's clock (same host); generous slack either side
        assert before - 60_000_000 <= v <= after + 60_000_000
    again = await must_lookup(backend, "t:e:1")
    assert again.gens == first.gens  # born once, then stable


async def test_fill_then_hit_then_bump_misses(backend: Backend) -> None:
    miss = await must_lookup(backend, "t:e:1")
    assert await backend.fill("t:e:1", GENS, miss.gens, b"rows\n\x00bytes", 60_000)
    hit = await must_lookup(backend, "t:e:1")
    assert hit == Lookup(gens=miss.gens, blob=b"rows\n\x00bytes")
    assert await backend.bump(["t:gen:b"])
    after = await must_lookup(backend, "t:e:1")
    assert after.blob is None
    old = miss.gens.split(",")
    new = after.gens.split(",")
    assert new[0] == old[0] and int(new[1]) == int(old[1]) + 1 and new[2] == old[2]
    stats = backend.stats()
    assert stats.fills_stored == 1 and stats.hits == 1 and stats.lookups == 3
    assert stats.bumps == 1


async def test_fill_with_pre_bump_gens_is_refused(backend: Backend) -> None:
    read = await must_lookup(backend, "t:e:1")
    assert await backend.bump(["t:gen:a"])  # a write commits while the reader runs its query
    assert not await backend.fill("t:e:1", GENS, read.gens, b"stale", 60_000)
    assert backend.stats().fills_refused == 1
    now = await must_lookup(backend, "t:e:1")
    assert now.blob is None
    # and nothing was stored: a fill with the current gens succeeds, a lookup sees only it
    assert await backend.fill("t:e:1", GENS, now.gens, b"fresh", 60_000)
    assert (await must_lookup(backend, "t:e:1")).blob == b"fresh"


async def test_bump_births_missing_counter(backend: Backend) -> None:
    before = now_us()
    assert await backend.bump(["t:gen:new"])
    value = int((await must_lookup(backend, "t:e:x", ["t:gen:new"])).gens)
    assert value > before - 60_000_000 and value != 0


async def test_entry_expires_after_ttl(backend: Backend) -> None:
    read = await must_lookup(backend, "t:e:ttl")
    assert await backend.fill("t:e:ttl", GENS, read.gens, b"short-lived", 200)

    async def gone() -> bool:
        return (await must_lookup(backend, "t:e:ttl")).blob is None

    await eventually(gone, "entry with ttl_ms=200 expired")


async def test_entries_without_gen_keys(backend: Backend) -> None:
    read = await must_lookup(backend, "t:e:nogens", [])
    assert read.gens == ""
    assert await backend.fill("t:e:nogens", [], "", b"x", 60_000)
    assert (await must_lookup(backend, "t:e:nogens", [])).blob == b"x"


async def test_publish_payload_carries_its_stream_id(backend: Backend) -> None:
    template = event_template({"type": "invalidation", "table": "agents", "tables": ["agents"]})
    assert EVENT_ID in template
    event_id = await backend.publish("t:events", template, 1000)
    assert event_id is not None
    event = json.loads(template.replace(EVENT_ID, event_id))
    assert list(event) == ["type", "eventId", "table", "tables"]
    replayed = await backend.replay("t:events", "0", 10)
    assert replayed == [(event_id, json.dumps(event, separators=(",", ":")))]
    assert json.loads(replayed[0][1])["eventId"] == event_id


async def test_replay_returns_only_later_events_in_order(backend: Backend) -> None:
    ids = []
    for n in range(5):
        event_id = await backend.publish("t:events", event_template({"n": n}), 1000)
        assert event_id is not None
        ids.append(event_id)
    assert [parse_stream_id(i) for i in ids] == sorted(parse_stream_id(i) for i in ids)
    assert len(set(ids)) == 5
    later = await backend.replay("t:events", ids[1], 100)
    assert later is not None
    assert [i for i, _ in later] == ids[2:]
    assert [json.loads(p)["n"] for _, p in later] == [2, 3, 4]
    assert [json.loads(p)["eventId"] for _, p in later] == ids[2:]
    assert [i for i, _ in await backend.replay("t:events", ids[1], 2) or []] == ids[2:4]
    assert await backend.replay("t:events", ids[-1], 10) == []
    assert await backend.replay("t:nothing", "0", 10) == []


async def test_publish_requires_the_placeholder(backend: Backend) -> None:
    with pytest.raises(ValueError):
        await backend.publish("t:events", json.dumps({"eventId": "x"}), 10)


async def test_prepared_sets_save_and_take(backend: Backend) -> None:
    assert await backend.take_prepared("t:2pc:unknown") is None
    assert await backend.save_prepared("t:2pc:g1", ["t:gen:a", "t:gen:b"])
    assert await backend.take_prepared("t:2pc:g1") == ["t:gen:a", "t:gen:b"]
    assert await backend.take_prepared("t:2pc:g1") is None  # taken once


async def test_concurrent_lookups_fills_bumps(backend: Backend) -> None:
    keys = [f"t:e:c{n % 10}" for n in range(50)]

    async def reader(key: str) -> None:
        read = await must_lookup(backend, key)
        await asyncio.sleep(0)
        await backend.fill(key, GENS, read.gens, key.encode(), 60_000)
        again = await must_lookup(backend, key)
        assert again.blob in (None, key.encode())

    async def writer(n: int) -> None:
        assert await backend.bump([GENS[n % 2]])

    jobs = [reader(k) for k in keys] + [writer(n) for n in range(10)]
    await asyncio.gather(*jobs)
    pre = await must_lookup(backend, "t:e:c0")
    assert await backend.bump(["t:gen:a"])
    for key in set(keys):
        assert (await must_lookup(backend, key)).blob is None
        assert not await backend.fill(key, GENS, pre.gens, b"stale", 60_000)
    assert [(await must_lookup(backend, k)).blob for k in sorted(set(keys))] == [None] * 10


# --- in-flight marks (invariant 9) -----------------------------------------------------------


async def test_mark_bumps_so_old_entries_miss_and_refuses_fills(backend: Backend) -> None:
    read = await must_lookup(backend, "t:e:1")
    assert await backend.fill("t:e:1", GENS, read.gens, b"old", 60_000)
    assert await backend.mark(["t:gen:a"], "w1", 60_000)  # before the COMMIT goes upstream
    during = await must_lookup(backend, "t:e:1")
    assert during.blob is None and during.gens != read.gens  # the old entry is unreachable
    # A reader that read the counters after the mark: its gens are current, yet refused.
    assert not await backend.fill("t:e:1", GENS, during.gens, b"maybe old", 60_000)
    assert (await must_lookup(backend, "t:e:1")).blob is None
    # Another counter of the same read carries no mark: a read not depending on it fills.
    other = await must_lookup(backend, "t:e:2", ["t:gen:b", EPOCH])
    assert await backend.fill("t:e:2", ["t:gen:b", EPOCH], other.gens, b"b", 60_000)
    assert backend.stats().marks == 1


async def test_confirm_bumps_again_and_ends_the_mark(backend: Backend) -> None:
    assert await backend.mark(["t:gen:a", "t:gen:b"], "w1", 60_000)
    during = await must_lookup(backend, "t:e:1")
    assert await backend.bump(["t:gen:a", "t:gen:b"], ["w1"])  # Postgres confirmed
    # The reader that read during the mark may have read the old rows: refused for good.
    assert not await backend.fill("t:e:1", GENS, during.gens, b"old", 60_000)
    after = await must_lookup(backend, "t:e:1")
    assert [int(v) for v in after.gens.split(",")[:2]] == [
        int(v) + 1 for v in during.gens.split(",")[:2]
    ]
    assert await backend.fill("t:e:1", GENS, after.gens, b"new", 60_000)
    assert (await must_lookup(backend, "t:e:1")).blob == b"new"


async def test_concurrent_marks_end_separately(backend: Backend) -> None:
    assert await backend.mark(["t:gen:a"], "w1", 60_000)
    assert await backend.mark(["t:gen:a"], "w2", 60_000)
    assert await backend.bump(["t:gen:a"], ["w1"])  # the first writer is confirmed
    read = await must_lookup(backend, "t:e:1")
    assert not await backend.fill("t:e:1", GENS, read.gens, b"x", 60_000)  # w2 still in flight
    assert await backend.bump(["t:gen:a"], ["w2"])
    read = await must_lookup(backend, "t:e:1")
    assert await backend.fill("t:e:1", GENS, read.gens, b"x", 60_000)


async def test_a_mark_expires_on_its_own(backend: Backend) -> None:
    assert await backend.mark(["t:gen:a"], "lost", 50)  # its proxy died before confirming
    assert await backend.mark(["t:gen:a"], "live", 60_000)
    assert await backend.bump(["t:gen:a"], ["live"])
    read = await must_lookup(backend, "t:e:1")

    async def stored() -> bool:
        return await backend.fill("t:e:1", GENS, read.gens, b"x", 60_000)

    await eventually(stored, "a fill after the unconfirmed mark's TTL")


async def test_a_late_confirm_does_not_end_another_mark(backend: Backend) -> None:
    assert await backend.mark(["t:gen:a"], "slow", 50)

    async def expired() -> bool:
        read = await must_lookup(backend, "t:e:0", ["t:gen:a"])
        return await backend.fill("t:e:0", ["t:gen:a"], read.gens, b"x", 60_000)

    await eventually(expired, "the slow writer's mark expiring")
    assert await backend.mark(["t:gen:a"], "other", 60_000)
    assert await backend.bump(["t:gen:a"], ["slow"])  # the slow writer confirms at last
    read = await must_lookup(backend, "t:e:1")
    assert not await backend.fill("t:e:1", GENS, read.gens, b"x", 60_000)


async def test_prepared_sets_load_without_forgetting(backend: Backend) -> None:
    assert await backend.save_prepared("t:2pc:g", ["t:gen:a"])
    assert await backend.load_prepared("t:2pc:g") == ["t:gen:a"]
    assert await backend.take_prepared("t:2pc:g") == ["t:gen:a"]
    assert await backend.load_prepared("t:2pc:g") is None


async def test_redis_in_flight_sets_expire_and_are_emptied(
    redis_backend: RedisBackend, direct: aioredis.Redis
) -> None:
    assert await redis_backend.mark(["t:gen:a"], "w1", 30_000)
    key = inflight_key("t:gen:a")
    assert 0 < await direct.pttl(key) <= 30_000  # it ends on its own if nobody confirms
    assert await direct.pttl("t:gen:a") == -1  # counters never expire
    assert await redis_backend.bump(["t:gen:a"], ["w1"])
    assert not await direct.exists(key)


async def test_redis_failed_mark_opens_the_breaker(
    redis_backend: RedisBackend, direct: aioredis.Redis
) -> None:
    await direct.set(inflight_key("t:gen:wrongtype"), "not a set")
    assert not await redis_backend.mark(["t:gen:wrongtype"], "w1", 30_000)
    assert not redis_backend.available  # serves nothing until healed (an epoch bump)
    assert redis_backend.bump_failures == 1


# --- memory backend -----------------------------------------------------------------------


async def test_memory_subscribers_get_the_stored_payload() -> None:
    b = MemoryBackend()
    queue = b.subscribe("t:events")
    event_id = await b.publish("t:events", event_template({"type": "invalidation"}), 10)
    payload = queue.get_nowait()
    assert json.loads(payload)["eventId"] == event_id
    assert await b.replay("t:events", "0", 10) == [(event_id, payload)]
    b.unsubscribe("t:events", queue)
    await b.publish("t:events", event_template({}), 10)
    assert queue.empty()


async def test_memory_stream_is_capped() -> None:
    b = MemoryBackend()
    for n in range(30):
        await b.publish("t:events", event_template({"n": n}), 10)
    events = await b.replay("t:events", "0", 100)
    assert events is not None
    assert [json.loads(p)["n"] for _, p in events] == list(range(20, 30))


async def test_memory_evicts_entries_lru_never_counters() -> None:
    b = MemoryBackend(max_bytes=1000)
    gens = {}
    for n in range(20):
        read = await must_lookup(b, f"k{n}", [f"g{n}"])
        gens[n] = read.gens
        assert await b.fill(f"k{n}", [f"g{n}"], read.gens, b"x" * 100, 60_000)
        await must_lookup(b, "k0", ["g0"])  # keep k0 recently used
    assert b.bytes_used <= 1000
    assert b.evictions > 0
    assert (await must_lookup(b, "k0", ["g0"])).blob == b"x" * 100
    assert (await must_lookup(b, "k1", ["g1"])).blob is None  # evicted
    for n in range(20):  # counters all survived with their values
        assert (await must_lookup(b, "other", [f"g{n}"])).gens == gens[n]


# --- redis: counters never go backwards ---------------------------------------------------


async def test_lost_counter_is_reborn_at_a_new_value(
    redis_backend: RedisBackend, direct: aioredis.Redis
) -> None:
    read = await must_lookup(redis_backend, "t:e:1")
    assert await redis_backend.fill("t:e:1", GENS, read.gens, b"old", 60_000)
    assert (await must_lookup(redis_backend, "t:e:1")).blob == b"old"
    seen = {int(read.gens.split(",")[0])}
    for _ in range(3):
        assert await redis_backend.bump(["t:gen:a"])
        value = await direct.get("t:gen:a")
        assert isinstance(value, bytes)
        seen.add(int(value))
    assert await direct.get("t:e:1") is not None
    await direct.delete("t:gen:a")  # as an eviction or a lost write would
    after = await must_lookup(redis_backend, "t:e:1")
    reborn = int(after.gens.split(",")[0])
    assert reborn not in seen and reborn > max(seen)
    assert after.blob is None
    assert await direct.get("t:e:1") is not None  # the entry is still there, just unreachable
    assert await direct.ttl("t:gen:a") == -1  # counters never get a TTL


async def test_allkeys_eviction_cannot_resurrect_entries(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = aioredis.Redis.from_url(redis_server.url)
    await admin.config_set("maxmemory-policy", "allkeys-lru")
    b = RedisBackend.from_url(redis_server.url, epoch_key=EPOCH, op_timeout=2, connect_timeout=2)
    with caplog.at_level(logging.WARNING, logger="cache.store"):
        await b.start()
    assert b.eviction_policy == "allkeys-lru"
    assert any("allkeys-lru" in r.getMessage() for r in caplog.records)
    try:
        read = await must_lookup(b, "t:e:1")
        assert await b.fill("t:e:1", GENS, read.gens, b"v" * 1000, 600_000)
        await admin.config_set("maxmemory", "2mb")
        for n in range(400):  # fill past maxmemory: LRU evicts counters and entries alike
            await admin.set(f"t:filler:{n}", b"f" * 10_000)
        evicted = [k for k in ("t:gen:a", "t:gen:b", EPOCH) if await admin.get(k) is None]
        if not evicted:  # LRU is approximate: make sure at least one counter is gone
            await admin.delete("t:gen:a")
        await admin.config_set("maxmemory", "0")
        result = await must_lookup(b, "t:e:1")
        assert result.blob is None
        assert result.gens != read.gens
    finally:
        await b.close()
        await admin.aclose()


async def test_noeviction_or_volatile_policy_gives_no_warning(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    b = RedisBackend.from_url(redis_server.url, epoch_key=EPOCH)
    with caplog.at_level(logging.WARNING, logger="cache.store"):
        await b.start()
    await b.close()
    assert b.eviction_policy == "noeviction"
    assert not [r for r in caplog.records if r.name == "cache.store"]


# --- redis: fail open, then heal ----------------------------------------------------------


async def guarded(coro: Awaitable[Any]) -> Any:
    """Await with the guard: an outage must never make an operation hang."""
    return await asyncio.wait_for(coro, GUARD)


async def test_outage_fails_open_and_heals_by_bumping_the_epoch(
    relay: Relay, redis_server: RedisServer
) -> None:
    b = RedisBackend.from_url(relay.url, epoch_key=EPOCH, breaker_seconds=0.2)
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        await b.start()
        assert b.available and b.heals == 0  # reachable at start: no epoch bump
        read = await must_lookup(b, "t:e:1")
        assert await b.fill("t:e:1", GENS, read.gens, b"pre-outage", 600_000)
        assert (await must_lookup(b, "t:e:1")).blob == b"pre-outage"

        relay.cut()
        assert await guarded(b.lookup("t:e:1", GENS)) is None
        assert not b.available
        assert await guarded(b.bump(["t:gen:a"])) is False  # this invalidation is lost...
        assert await guarded(b.fill("t:e:1", GENS, read.gens, b"x", 1000)) is False
        assert await guarded(b.publish("t:ev", event_template({}), 10)) is None
        assert await guarded(b.replay("t:ev", "0", 10)) is None
        assert await guarded(b.take_prepared("t:2pc")) is None
        assert not await guarded(b.healthy())
        assert b.errors >= 1 and b.bump_failures == 1
        assert await admin.get("t:e:1") is not None  # ...while Redis kept its data

        relay.restore()

        async def healed() -> bool:
            return await b.lookup("t:e:1", GENS) is not None

        await eventually(healed, "backend available again after restore")
        assert b.available and b.heals == 1
        after = await must_lookup(b, "t:e:1")
        assert after.blob is None  # the entry the lost bump should have killed is not served
        assert after.gens.split(",")[:2] == read.gens.split(",")[:2]  # only the epoch moved
        assert after.gens.split(",")[2] != read.gens.split(",")[2]
        assert await admin.get("t:e:1") is not None
        assert await b.healthy()
    finally:
        await b.close()
        await admin.aclose()


async def test_stalled_redis_times_out_and_opens_the_breaker(relay: Relay) -> None:
    b = RedisBackend.from_url(relay.url, epoch_key=EPOCH, op_timeout=0.1, breaker_seconds=60)
    try:
        await b.start()
        assert b.available
        relay.stall()
        assert await guarded(b.lookup("t:e:1", GENS)) is None
        assert not b.available and b.errors == 1
        # breaker open: lookups make no Redis call and are answered at once...
        assert await guarded(b.lookup("t:e:1", GENS)) is None
        assert b.errors == 1 and b.skipped == 1
        # ...but an invalidation is never skipped: it is tried (once, the breaker being
        # open) and fails only on its own timeout.
        assert await guarded(b.bump(["t:gen:a"])) is False
        assert b.errors == 2 and b.bump_failures == 1 and b.skipped == 1
        relay.restore()
        assert await b.lookup("t:e:1", GENS) is None  # still within the breaker window
    finally:
        await b.close()


async def test_start_with_redis_down_does_not_raise() -> None:
    from .conftest import free_port

    b = RedisBackend.from_url(f"redis://127.0.0.1:{free_port()}/0", breaker_seconds=0.05)
    try:
        await guarded(b.start())
        assert not b.available
        assert await guarded(b.lookup("t:e:1", GENS)) is None
        assert await guarded(b.bump(["t:gen:a"])) is False
        assert not await guarded(b.healthy())
        assert b.stats().available is False and b.heals == 0
    finally:
        await b.close()


async def test_failure_during_heal_keeps_backend_unavailable(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = redis_backend
    b._trip(ConnectionError("simulated"))  # as after a failed bump
    b._open_until = 0.0
    real_bump = b._bump

    async def bump_while_another_op_fails(**kw: Any) -> Any:
        result = await real_bump(**kw)
        b._trip(ConnectionError("concurrent failure"))  # e.g. a bump failing meanwhile
        return result

    monkeypatch.setattr(b, "_bump", bump_while_another_op_fails)
    assert not await b.healthy()
    assert not b.available
    monkeypatch.setattr(b, "_bump", real_bump)
    b._open_until = 0.0
    assert await b.healthy()
    assert b.available


async def test_reply_errors_on_reads_do_not_open_the_breaker(
    redis_backend: RedisBackend, direct: aioredis.Redis
) -> None:
    await direct.rpush("t:e:wrongtype", "x")
    assert await redis_backend.lookup("t:e:wrongtype", GENS) is None
    assert redis_backend.available and redis_backend.errors == 1
    await direct.rpush("t:gen:wrongtype", "x")
    assert not await redis_backend.bump(["t:gen:wrongtype"])  # a failed bump always trips
    assert not redis_backend.available


# --- redis: events --------------------------------------------------------------------------


async def test_subscriber_and_stream_get_identical_payloads(
    redis_backend: RedisBackend, direct: aioredis.Redis
) -> None:
    pubsub = direct.pubsub()
    await pubsub.subscribe("t:events")
    try:
        template = event_template({"type": "invalidation", "tables": ["agents"]})
        event_id = await redis_backend.publish("t:events", template, 100)
        assert event_id is not None
        deadline = time.monotonic() + GUARD
        message = None
        while message is None and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        assert message is not None
        published = message["data"]
        stream = await direct.xrange("t:events")
        assert stream == [(event_id.encode(), {b"event": published})]
        assert json.loads(published)["eventId"] == event_id
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_stream_is_trimmed_approximately(
    redis_backend: RedisBackend, direct: aioredis.Redis
) -> None:
    for n in range(1000):
        assert await redis_backend.publish("t:events", event_template({"n": n}), 100) is not None
    length = await direct.xlen("t:events")
    assert 100 <= length < 1000


async def test_publish_ids_follow_the_stream_even_if_clock_is_behind(
    redis_backend: RedisBackend, direct: aioredis.Redis
) -> None:
    future = (time.time_ns() // 1_000_000) + 3_600_000
    await direct.xadd("t:events", {"event": "{}"}, id=f"{future}-5")
    event_id = await redis_backend.publish("t:events", event_template({}), 100)
    assert event_id == f"{future}-6"
    await direct.xdel("t:events", f"{future}-6")  # last-generated-id stays: no reuse
    assert await redis_backend.publish("t:events", event_template({}), 100) == f"{future}-7"


async def test_noscript_is_reloaded(redis_backend: RedisBackend, direct: aioredis.Redis) -> None:
    await direct.script_flush()
    read = await must_lookup(redis_backend, "t:e:1")
    assert await redis_backend.fill("t:e:1", GENS, read.gens, b"ok", 60_000)
    assert redis_backend.available
