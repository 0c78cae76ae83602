"""The Redis cache backend: generations, entries, events and 2PC sets, failing open then healing.

Theory of operation (the data model is in `cache.backend`; the scripts in `cache.lua`):

* Every operation is one round trip: lookup, fill, bump and mark are single Lua scripts (EVALSHA,
  reloaded on NOSCRIPT), publish is one script that XADDs and PUBLISHes the identical
  payload, the rest are single commands.  Lookups (the hot path) and bumps (marks too) go through
  `cache.resp.RespClient` connections (pipelined, one each); the rest through redis-py.
* **Timeouts.** Lookups, fills and the rest time out after ``op_timeout`` /
  ``connect_timeout`` (250 ms by default; redis-py's own retries are off).  A bump or a
  mark — the writer waits for it — is patient: up to `BUMP_ATTEMPT_TIMEOUT` per attempt, retried for
  `BUMP_DEADLINE` seconds while Redis is believed up, and tried once even while the breaker
  is open.
* **Fail open.** No operation raises for a Redis failure.  A connection error or timeout on
  any operation, and *any* error on a bump or mark, marks the backend unavailable and opens the
  circuit breaker: for ``breaker_seconds`` no Redis call is made (lookup → None, fill/bump →
  False, publish/replay → None), then one caller probes.  A Redis *reply* error on an
  operation that cannot lose an invalidation (lookup, fill, publish, replay, 2PC sets; e.g.
  OOM under ``noeviction``) is counted and answered as a miss without opening the breaker.
* **Heal.** While unavailable, bumps are not written, so entries they should have
  invalidated would come back with Redis.  Hence the probe is a bump of the global
  ``epoch_key`` (which every lookup includes), and `available` becomes True only when that
  bump succeeds *and* no other operation failed while it was in flight.  Otherwise the
  breaker reopens.  `start` does not bump: a process that starts has lost no invalidation.
* **Eviction (PITFALLS F2).** Entries carry a TTL, counters none: run Redis with a
  ``volatile-*`` policy (or ``noeviction``) so counters are never evicted.  `start` reads
  ``CONFIG GET maxmemory-policy`` (tolerating a disabled CONFIG) and warns on ``allkeys-*``.
  Even then, an evicted counter is reborn at TIME-µs, a value it never had, so old entries
  stay unreachable: the cost is lost cache, not staleness.
* **Known limit.** A bump that fails on this instance (after its retries) cannot stop
  *other* instances that still reach Redis from serving the entries it should have
  invalidated, until this instance heals (bumping the epoch) or the entries' TTLs run out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import hiredis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cache import lua
from cache.backend import EVENT_ID, BackendCounters, Lookup, check_template, inflight_key
from cache.resp import RespClient, RespError

log = logging.getLogger(__name__)

T = TypeVar("T")

BUMP_ATTEMPT_TIMEOUT: Final = 2.0  # seconds one invalidation attempt may take
BUMP_DEADLINE: Final = 5.0  # seconds an invalidation is retried while Redis is believed up
_TRANSPORT_ERRORS: Final = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


class _Failed:
    """Sentinel: the operation was not done (breaker open, or Redis failed)."""


_FAILED: Final = _Failed()


class RedisBackend(BackendCounters):
    """`cache.backend.Backend` on Redis, with timeouts, a circuit breaker and epoch healing."""

    def __init__(
        self,
        client: Redis,
        *,
        epoch_key: str = "pgr:epoch",
        op_timeout: float = 0.25,
        connect_timeout: float = 0.25,
        breaker_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._client = client
        self._epoch_key = epoch_key
        self._deadline = op_timeout + connect_timeout
        self._breaker_seconds = breaker_seconds
        self._clock = clock
        self._available = False
        self._open_until = 0.0  # no Redis calls before this (monotonic) time
        self._healing = False
        self._failures = 0  # bumped on every breaker-opening failure; guards heal races
        self._lookup = client.register_script(lua.LOOKUP)
        self._fast: RespClient | None = None  # the hot path: pipelined, one connection
        self._fast_ready = False  # a lookup script call on `_fast` has succeeded
        self._patient: RespClient | None = None  # invalidations: long timeouts, retried
        kwargs = client.connection_pool.connection_kwargs
        if "host" in kwargs and not kwargs.get("password") and not kwargs.get("username"):
            where = (kwargs["host"], int(kwargs.get("port", 6379)), int(kwargs.get("db", 0)))
            self._fast = RespClient(
                *where, op_timeout=op_timeout, connect_timeout=connect_timeout
            )
            self._patient = RespClient(
                *where,
                op_timeout=max(op_timeout, BUMP_ATTEMPT_TIMEOUT),
                connect_timeout=max(connect_timeout, BUMP_ATTEMPT_TIMEOUT),
            )
        self._fill = client.register_script(lua.FILL)
        self._bump = client.register_script(lua.BUMP)
        self._mark = client.register_script(lua.MARK)
        self._publish = client.register_script(lua.PUBLISH)
        self.eviction_policy: str | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        epoch_key: str = "pgr:epoch",
        op_timeout: float = 0.25,
        connect_timeout: float = 0.25,
        breaker_seconds: float = 1.0,
    ) -> RedisBackend:
        """A backend for ``redis://host:port/db`` (not connected until used or `start`)."""
        client = Redis.from_url(
            url,
            socket_timeout=op_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        return cls(
            client,
            epoch_key=epoch_key,
            op_timeout=op_timeout,
            connect_timeout=connect_timeout,
            breaker_seconds=breaker_seconds,
        )

    # --- lifecycle and health -----------------------------------------------------------

    @property
    def epoch_key(self) -> str:
        return self._epoch_key

    @property
    def available(self) -> bool:
        return self._available

    @property
    def client(self) -> Redis:
        """The underlying client (for tests and admin tools; not for cache operations)."""
        return self._client

    async def start(self) -> None:
        """Check the eviction policy and load the scripts; never raises for Redis.

        A process that starts has missed no invalidation of its own, so a reachable Redis
        is available at once (no epoch bump: restarting one instance must not empty the
        cache of all); an unreachable one is healed, with the epoch bump, when it returns.
        """
        await self._check_policy()
        try:
            async with asyncio.timeout(self._deadline * 4):
                for script in (self._lookup, self._fill, self._bump, self._mark, self._publish):
                    await self._client.script_load(script.script)
        except (RedisError, *_TRANSPORT_ERRORS) as exc:
            log.warning("redis unavailable at start: %s", exc)
            self._trip(exc)
            return
        self._available = True

    async def close(self) -> None:
        for resp in (self._fast, self._patient):
            if resp is not None:
                resp.close()
        await self._client.aclose()

    async def healthy(self) -> bool:
        if not self._available:
            return await self._try_heal()
        ok = await self._call(self._client.ping, trip_on_reply_error=True)
        return not isinstance(ok, _Failed) and self._available

    async def _check_policy(self) -> None:
        try:
            async with asyncio.timeout(self._deadline):
                reply: Any = await self._client.config_get("maxmemory-policy")
        except (RedisError, *_TRANSPORT_ERRORS) as exc:  # CONFIG may be renamed or disabled
            log.info("could not read redis maxmemory-policy: %s", exc)
            return
        raw = reply.get("maxmemory-policy", reply.get(b"maxmemory-policy"))
        policy = raw.decode() if isinstance(raw, bytes) else raw
        self.eviction_policy = policy
        if isinstance(policy, str) and policy.startswith("allkeys-"):
            log.warning(
                "redis maxmemory-policy is %s: generation counters may be evicted (entries are"
                " then lost, never stale); use a volatile-* policy or noeviction",
                policy,
            )

    # --- the breaker ----------------------------------------------------------------------

    async def _call(
        self, op: Callable[[], Awaitable[T]], *, trip_on_reply_error: bool
    ) -> T | _Failed:
        """Run one Redis operation under the breaker and the deadline; never raises for Redis."""
        if not self._available and not await self._try_heal():
            self.skipped += 1
            return _FAILED
        try:
            async with asyncio.timeout(self._deadline):
                return await op()
        except _TRANSPORT_ERRORS as exc:
            self._trip(exc)
        except RedisError as exc:
            if trip_on_reply_error:
                self._trip(exc)
            else:
                self.errors += 1
                log.debug("redis reply error: %s", exc)
        return _FAILED

    def _trip(self, exc: BaseException) -> None:
        self.errors += 1
        self._failures += 1
        self._open_until = self._clock() + self._breaker_seconds
        if self._available:
            log.warning("redis unavailable, serving nothing from cache: %r", exc)
        self._available = False

    async def _try_heal(self) -> bool:
        """While unavailable: one caller probes (by healing) once the breaker has cooled."""
        if self._healing or self._clock() < self._open_until:
            return False
        return await self._heal()

    async def _heal(self) -> bool:
        """Bump the epoch; become available only if nothing else failed meanwhile."""
        self._healing = True
        failures = self._failures
        try:
            async with asyncio.timeout(self._deadline):
                await self._bump(keys=[self._epoch_key])
        except (RedisError, *_TRANSPORT_ERRORS) as exc:
            self._trip(exc)
            return False
        finally:
            self._healing = False
        if self._failures != failures:
            return False
        self.heals += 1
        if self.heals == 1:
            log.info("redis available: epoch %s bumped", self._epoch_key)
        elif not self._available:
            log.warning("redis available again: epoch %s bumped", self._epoch_key)
        self._available = True
        return True

    # --- cache operations -----------------------------------------------------------------

    async def lookup(self, entry_key: str, gen_keys: Sequence[str]) -> Lookup | None:
        self.lookups += 1
        if self._fast is not None:
            reply = await self._fast_lookup(entry_key, gen_keys)
        else:
            reply = await self._call(
                lambda: self._lookup(keys=[entry_key, *gen_keys]), trip_on_reply_error=False
            )
        if isinstance(reply, _Failed):
            return None
        self._fast_ready = True  # the script is loaded (again)
        return self._outcome(reply)

    def lookup_now(
        self, entry_key: str, gen_keys: Sequence[str], callback: Callable[[Lookup | None], None]
    ) -> bool:
        """`lookup` without a task: if Redis is available and connected, send the lookup
        and return True; `callback` gets the outcome from the reply's data_received.
        False: nothing was sent, use `lookup`."""
        fast = self._fast
        if fast is None or not self._available or not self._fast_ready:
            return False

        def reply(value: Any) -> None:
            if isinstance(value, RespError):
                self._trip(value)
                callback(None)
            elif isinstance(value, hiredis.ReplyError):
                # NOSCRIPT (Redis lost its scripts, e.g. a restart or SCRIPT FLUSH) or an
                # error: this read goes uncached; the next `lookup` reloads the script.
                self.errors += 1
                self._fast_ready = False
                log.debug("redis reply error: %s", value)
                callback(None)
            else:
                callback(self._outcome(value))

        if not fast.send(reply, "EVALSHA", self._lookup.sha, 1 + len(gen_keys), entry_key,
                         *gen_keys):
            return False
        self.lookups += 1
        return True

    def _outcome(self, reply: Any) -> Lookup:
        gens_raw: bytes = reply[0]
        blob: bytes | None = None
        if len(reply) > 1:
            blob = reply[1][len(gens_raw) + 1 :]
            self.hits += 1
        return Lookup(gens=gens_raw.decode("ascii"), blob=blob)

    async def _fast_lookup(self, entry_key: str, gen_keys: Sequence[str]) -> Any:
        """The lookup script over the pipelined connection, under the same breaker."""
        assert self._fast is not None
        if not self._available and not await self._try_heal():
            self.skipped += 1
            return _FAILED
        return await self._fast_script(
            self._fast, self._lookup, lua.LOOKUP, 1 + len(gen_keys), entry_key, *gen_keys
        )

    async def _fast_script(
        self, client: RespClient, script: Any, source: str, *args: str | int
    ) -> Any:
        """One script call on a pipelined connection: its reply, or `_FAILED` (a failed
        connection opens the breaker; an error reply is counted)."""
        try:
            reply = await _run_script(client, script, source, *args)
        except RespError as exc:
            self._trip(exc)
            return _FAILED
        if isinstance(reply, hiredis.ReplyError):
            self.errors += 1
            log.debug("redis reply error: %s", reply)
            return _FAILED
        return reply

    async def fill(
        self,
        entry_key: str,
        gen_keys: Sequence[str],
        expected_gens: str,
        blob: bytes,
        ttl_ms: int,
    ) -> bool:
        gens = expected_gens.encode("ascii")
        entry = b"".join((gens, b"\n", blob))
        keys = [entry_key, *gen_keys, *map(inflight_key, gen_keys)]
        reply = await self._call(
            lambda: self._fill(keys=keys, args=[gens, entry, int(ttl_ms)]),
            trip_on_reply_error=False,
        )
        if isinstance(reply, _Failed):
            return False
        if reply == 1:
            self.fills_stored += 1
            return True
        self.fills_refused += 1
        return False

    async def bump(self, gen_keys: Sequence[str], tokens: Sequence[str] = ()) -> bool:
        """Invalidate (and end the marks ``tokens``): the writer waits for this."""
        if not gen_keys:
            return True
        keys = [*gen_keys, *map(inflight_key, gen_keys)] if tokens else list(gen_keys)
        if not await self._invalidation(self._bump, lua.BUMP, keys, list(tokens)):
            self.bump_failures += 1
            return False
        self.bumps += 1
        return True

    async def mark(self, gen_keys: Sequence[str], token: str, ttl_ms: int) -> bool:
        """Before a commit: bump and mark in flight (see `cache.backend`); patient like a
        bump, and like a failed bump a failed mark opens the breaker (the cache then serves
        nothing until it has healed), so a write it could not mark never lets a read go
        backwards."""
        if not gen_keys:
            return True
        keys = [*gen_keys, *map(inflight_key, gen_keys)]
        if not await self._invalidation(self._mark, lua.MARK, keys, [token, int(ttl_ms)]):
            self.bump_failures += 1
            return False
        self.marks += 1
        return True

    async def _invalidation(
        self, script: Any, source: str, keys: list[str], args: list[str | int]
    ) -> bool:
        """Run a bump or mark script: the writer waits for it, so it is patient where
        lookups are not.

        A bump that is lost lets other instances serve entries its write made stale, so it
        is tried even while the breaker is open, with long timeouts, and retried for up to
        `BUMP_DEADLINE` seconds while Redis is believed up (a slow Redis under load is not an
        outage).  Only then does it fail (and the breaker opens; healing bumps the epoch).
        """
        if self._patient is None:
            reply = await self._call(
                lambda: script(keys=keys, args=args), trip_on_reply_error=True
            )
            return not isinstance(reply, _Failed)
        deadline = self._clock() + (BUMP_DEADLINE if self._available else 0.0)
        while True:
            try:
                reply = await _run_script(self._patient, script, source, len(keys), *keys, *args)
                if isinstance(reply, hiredis.ReplyError):
                    raise RespError(f"bump refused: {reply}")
                return True
            except RespError as exc:
                if self._clock() >= deadline:
                    self._trip(exc)
                    return False
            await asyncio.sleep(0.05)

    # --- events ---------------------------------------------------------------------------

    async def publish(
        self, channel: str, payload: str, stream_maxlen: int, once: tuple[str, str] | None = None
    ) -> str | None:
        check_template(payload)
        keys = [channel, once[0]] if once else [channel]
        args: list[str | int] = [payload, int(stream_maxlen), EVENT_ID]
        if once:
            args.append(once[1])
        fast = self._fast
        if fast is not None and self._available:
            # The writer waits for this (its ReadyForQuery follows the events): one round
            # trip on the pipelined connection, under the lookups' short timeout.
            reply = await self._fast_script(
                fast, self._publish, lua.PUBLISH, len(keys), *keys, *args
            )
        else:
            reply = await self._call(
                lambda: self._publish(keys=keys, args=args), trip_on_reply_error=False
            )
        if isinstance(reply, _Failed):
            return None
        if reply in (b"", ""):
            return ""  # that position was published before
        self.published += 1
        return reply.decode("ascii") if isinstance(reply, bytes) else str(reply)

    async def replay(self, channel: str, after_id: str, count: int) -> list[tuple[str, str]] | None:
        reply: Any = await self._call(
            lambda: self._client.xrange(channel, min=f"({after_id}", count=count),
            trip_on_reply_error=False,
        )
        if isinstance(reply, _Failed):
            return None
        return [(sid.decode("ascii"), fields[b"event"].decode()) for sid, fields in reply]

    # --- two-phase commit -----------------------------------------------------------------

    async def save_prepared(self, gid_key: str, gen_keys: Sequence[str]) -> bool:
        value = json.dumps(list(gen_keys))
        reply = await self._call(
            lambda: self._client.set(gid_key, value), trip_on_reply_error=False
        )
        return not isinstance(reply, _Failed)

    async def take_prepared(self, gid_key: str) -> list[str] | None:
        return await self._prepared(lambda: self._client.getdel(gid_key))

    async def load_prepared(self, gid_key: str) -> list[str] | None:
        return await self._prepared(lambda: self._client.get(gid_key))

    async def _prepared(self, op: Callable[[], Awaitable[Any]]) -> list[str] | None:
        reply: Any = await self._call(op, trip_on_reply_error=False)
        if isinstance(reply, _Failed) or reply is None:
            return None
        keys = json.loads(reply)
        return [str(k) for k in keys]


async def _run_script(client: RespClient, script: Any, source: str, *args: str | int) -> Any:
    """EVALSHA on `client`, and EVAL when Redis has lost the script (NOSCRIPT: a restart or
    SCRIPT FLUSH); the reply (a `hiredis.ReplyError` for an error), RespError if it failed."""
    reply = await client.call("EVALSHA", script.sha, *args)
    if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
        reply = await client.call("EVAL", source, *args)
    return reply
