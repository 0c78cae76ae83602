"""Following Postgres's logical replication stream: invalidation for writes that bypass
the proxy, and the events of every committed transaction (docs/replication.md).

Shell module.  One `Replication` per process, started by `CacheService` when
``replication.enabled``:

* **Can it run?**  ``SHOW wal_level`` on a walsender connection (``catalog.user``, which needs
  the REPLICATION attribute).  Anything else than ``logical`` (or a role that may not
  replicate) is logged once, with the reason, and the proxy behaves as without replication.
  Until that check succeeded nothing changes either.
* **One reader across instances**: a lease in the backend (Redis ``SET ... PX`` through a
  compare-and-set script; in memory for a single process).  The holder renews it every
  `RENEW_SECONDS`; it lives ``failover_seconds * 2/3``, and the others try to take it every
  ``failover_seconds / 6``, so a dead holder is replaced within ``failover_seconds``.
* **The reader** (the holder) connects with ``replication=database``, creates the
  publication and the slot when missing (a slot created — first start, or one that vanished —
  bumps the database's epoch: changes before it were not followed), asks the server's
  position (IDENTIFY_SYSTEM), streams from the slot's confirmed position, folds messages
  into transactions (`cache.changes`) and hands each committed transaction to
  `CacheService.invalidate` — the path proxied writes use — with its plans.  Only after
  that succeeded is its end LSN confirmed in a standby status update: a crash replays, it
  never loses.  A failed invalidation ends the stream; it restarts from the confirmed LSN.
* **The fence** (every instance): the lease's value says whether its holder has caught up
  with the position the server had when it connected, and the lease's remaining time says
  how long ago it was renewed.  Reads of the replicated database are served from the cache
  only while a caught-up holder renewed within `FENCE_SECONDS`; otherwise they go upstream
  (bypass ``replication_behind``), so a dead or lagging reader cannot leave stale entries
  served for longer than about the fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

from cache.changes import TransactionAssembler, plan_transaction
from cache.pgoutput import (
    PrimaryKeepalive,
    XLogData,
    decode_copy_data,
    decode_pgoutput,
    encode_standby_status,
    format_lsn,
    parse_lsn,
    pg_time_us,
    unix_seconds,
)
from cache.planner import whole_database
from proxy.pgclient import PgError
from proxy.walsender import WalSender

if TYPE_CHECKING:
    from cache.catalog import Catalog
    from cache.changes import Transaction
    from cache.service import CacheService
    from proxy.config import Config

log = logging.getLogger("pgreactive.replication")

RENEW_SECONDS: Final = 0.1  # lease renewal, status updates (with a reply asked for)
FENCE_SECONDS: Final = 0.5  # serve from cache only if a caught-up holder renewed this recently
SILENCE_SECONDS: Final = 3.0  # no byte from the server for this long: reconnect
RETRY_SECONDS: Final = 0.5
SLOT_STATS_SECONDS: Final = 5.0

_CLAIM = """
-- KEYS = {lease}; ARGV = {holder, value, ttl_ms}: take or renew the lease if free or ours.
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. '|' then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
_READ = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"


class Lease(Protocol):
    """Where the lease lives: `claim` takes or renews it, `read` gives (value, ms left)."""

    async def claim(self, key: str, holder: str, value: str, ttl_ms: int) -> bool: ...

    async def read(self, key: str) -> tuple[str | None, int]: ...


class RedisLease:
    def __init__(self, client: Any) -> None:
        self._claim = client.register_script(_CLAIM)
        self._read = client.register_script(_READ)

    async def claim(self, key: str, holder: str, value: str, ttl_ms: int) -> bool:
        return bool(await self._claim(keys=[key], args=[holder, value, ttl_ms]))

    async def read(self, key: str) -> tuple[str | None, int]:
        value, ttl = await self._read(keys=[key])
        return (value.decode() if isinstance(value, bytes) else value), int(ttl)


class LocalLease:
    """One process on an in-memory cache: the lease is always its own."""

    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}

    async def claim(self, key: str, holder: str, value: str, ttl_ms: int) -> bool:
        current = self._leases.get(key)
        if current and current[1] > time.monotonic() and not current[0].startswith(holder + "|"):
            return False
        self._leases[key] = (value, time.monotonic() + ttl_ms / 1000)
        return True

    async def read(self, key: str) -> tuple[str | None, int]:
        value, until = self._leases.get(key, (None, 0.0))
        left = int((until - time.monotonic()) * 1000)
        return (value, left) if left > 0 else (None, -2)


class Replication:
    """The replication reader of one process (see the module docstring)."""

    def __init__(self, service: CacheService, config: Config) -> None:
        self.service = service
        self.config = config.replication
        self._upstream, self._catalog = config.upstream, config.catalog
        self.database = self.config.database
        self.slot = self.config.slot
        ns = service.context(self.database).namespace
        self.lease_key = ns.prefix + "repl:lease"
        self.lease_ms = max(1, int(self.config.failover_seconds * 2000 / 3))
        backend = getattr(service.backend, "inner", service.backend)  # under a TimedBackend
        client = getattr(backend, "client", None)
        self.lease: Lease = RedisLease(client) if client is not None else LocalLease()
        self.holder = uuid.uuid4().hex[:12]
        self.state = "starting"  # starting | unavailable | standby | syncing | streaming
        self.reason = ""  # why unavailable
        self.lease_holder = ""  # the holder seen by the last fence check
        self.lag_seconds: float | None = None  # commit → invalidation done, last transaction
        self.retained_wal_bytes: int | None = None
        self.confirmed_lsn = 0
        self.transactions = 0
        # Per transaction, its lag (a histogram's observer, set by whoever exposes metrics).
        self.observe_lag: Callable[[float], None] | None = None
        self._fresh_until = 0.0
        self._synced = False
        self._last_received = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._stream: WalSender | None = None
        self._logged: set[str] = set()
        self._without_identity = ""  # the tables last warned about

    # --- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._run()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._stream is not None:
            self._stream.abort()

    def fresh(self, database: str) -> bool:
        if database != self.database or not self.service.replication_events:
            return True
        return time.monotonic() < self._fresh_until

    def detail(self) -> dict[str, object]:
        """What /readyz reports."""
        return {
            "state": self.state if not self.reason else f"{self.state}: {self.reason}",
            "database": self.database,
            "lease_holder": self.lease_holder,
            "this_instance": self.holder,
            "confirmed_lsn": format_lsn(self.confirmed_lsn),
            "lag_seconds": self.lag_seconds,
            "retained_wal_bytes": self.retained_wal_bytes,
        }

    def _once(self, level: int, message: str, *args: object) -> None:
        """Log a condition once until it changes (a retry loop must not flood the log)."""
        text = message % args
        if text not in self._logged:
            self._logged = {text}
            log.log(level, "%s", text)

    # --- can it run? -----------------------------------------------------------------

    async def _connect(self) -> WalSender:
        upstream, catalog = self._upstream, self._catalog
        return await WalSender.open(
            upstream.host, upstream.port, catalog.user, self.database,
            catalog.password or None, upstream.connect_timeout,
        )  # fmt: skip

    async def _check(self) -> bool:
        """True: the stream can be read.  False: it cannot, logged once (and stays off)."""
        while True:
            try:
                conn = await self._connect()
                try:
                    ((wal_level,),) = await conn.query("SHOW wal_level")
                finally:
                    await conn.close()
            except PgError as exc:
                if exc.sqlstate in ("28000", "42501", "3D000"):  # may not replicate, no db
                    return self._unavailable(f"cannot open a replication connection: {exc}")
                self._once(logging.WARNING, "replication: waiting for Postgres: %s", exc)
                await asyncio.sleep(RETRY_SECONDS * 4)
                continue
            if wal_level != "logical":
                return self._unavailable(f"wal_level is {wal_level!r}, it needs 'logical'")
            return True

    def _unavailable(self, reason: str) -> bool:
        self.state, self.reason = "unavailable", reason
        log.warning(
            "replication disabled: %s; writes that bypass the proxy are seen only when entries"
            " expire, and events come from the proxy's own writes",
            reason,
        )
        return False

    # --- the lease -------------------------------------------------------------------

    async def _run(self) -> None:
        if not await self._check():
            return
        self.service.replication_events = True
        log.info("replication: following database %s (slot %s, publication %s)",
                 self.database, self.config.slot, self.config.publication)  # fmt: skip
        self.state = "standby"
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch()))
        poll = self.config.failover_seconds / 6
        while True:
            if await self._claim():
                await self._lead()
                self.state = "standby"
            await asyncio.sleep(poll)

    async def _claim(self) -> bool:
        value = f"{self.holder}|{'synced' if self._synced else 'syncing'}"
        try:
            return await self.lease.claim(self.lease_key, self.holder, value, self.lease_ms)
        except Exception as exc:  # Redis unavailable: nobody can be sure to hold it
            self._once(logging.WARNING, "replication: lease not renewed: %s", exc)
            return False

    async def _watch(self) -> None:
        """The fence: how recently a caught-up holder renewed the lease."""
        while True:
            try:
                value, left_ms = await self.lease.read(self.lease_key)
            except Exception:
                value, left_ms = None, -2
            holder, _, status = (value or "").partition("|")
            self.lease_holder = holder
            age = (self.lease_ms - left_ms) / 1000 if left_ms > 0 else FENCE_SECONDS
            if status == "synced" and age < FENCE_SECONDS:
                self._fresh_until = time.monotonic() + FENCE_SECONDS - age
            await asyncio.sleep(RENEW_SECONDS)

    async def _lead(self) -> None:
        """Hold the lease and read the stream until either fails."""
        self._synced = False
        stream = asyncio.get_running_loop().create_task(self._follow())
        try:
            while not stream.done():
                await asyncio.sleep(RENEW_SECONDS)
                healthy = time.monotonic() - self._last_received < SILENCE_SECONDS
                if not healthy and self._stream is not None:
                    self._stream.abort()  # silent server: the reader sees the close
                if not await self._claim():
                    log.warning("replication: lease lost; another instance reads the stream")
                    break
        finally:
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await stream
            if self._stream is not None:
                self._stream.abort()
                self._stream = None
            self._synced = False
            self.retained_wal_bytes = None  # read by the holder only

    # --- the reader ------------------------------------------------------------------

    async def _follow(self) -> None:
        try:
            await self._stream_once()
        except (PgError, OSError, TimeoutError) as exc:
            self._once(logging.WARNING, "replication stream ended: %s", exc)
        except Exception:
            log.exception("replication stream failed")
        await asyncio.sleep(RETRY_SECONDS)

    async def _stream_once(self) -> None:
        conn = self._stream = await self._connect()
        self._last_received = time.monotonic()
        await self._prepare(conn)
        ((_, _, xlogpos, _),) = await conn.query("IDENTIFY_SYSTEM")
        target = parse_lsn(xlogpos or "0/0")
        options = (
            f"proto_version '1', publication_names '{self.config.publication}', "
            "messages 'true'"
        )
        await conn.start_copy_both(
            f"START_REPLICATION SLOT {self.config.slot} LOGICAL 0/0 ({options})"
        )
        self.state = "syncing"
        self._logged = set()
        assembler = TransactionAssembler(self.service.policy.scope_columns)
        ticker = asyncio.get_running_loop().create_task(self._tick(conn))
        try:
            while (payload := await conn.read_copy()) is not None:
                self._last_received = time.monotonic()
                message = decode_copy_data(payload)
                position = await self._handle(conn, message, assembler)
                if not self._synced and position >= target:
                    self._synced, self.state = True, "streaming"
                    await self._claim()  # tell the fence at once
        finally:
            ticker.cancel()

    async def _handle(
        self, conn: WalSender, message: XLogData | PrimaryKeepalive, assembler: TransactionAssembler
    ) -> int:
        """Act on one message; return the position up to which everything is done."""
        if isinstance(message, PrimaryKeepalive):
            if not assembler.in_transaction:
                self.confirmed_lsn = max(self.confirmed_lsn, message.wal_end)
            if message.reply_requested:
                self._status(conn)
            return self.confirmed_lsn
        txn = assembler.feed(decode_pgoutput(message.data))
        if txn is None:
            return self.confirmed_lsn
        if not txn.empty:
            await self._invalidate(self.service.context(self.database).catalog, txn)
        self.confirmed_lsn = max(self.confirmed_lsn, txn.end_lsn)
        self.transactions += 1
        return self.confirmed_lsn

    async def _invalidate(self, catalog: Catalog | None, txn: Transaction) -> None:
        service = self.service
        ns = service.context(self.database).namespace
        plans = plan_transaction(txn, ns, catalog, service.policy)
        ok = await service.invalidate(self.database, plans, source="replication", transaction=txn)
        if not ok:
            raise PgError("58000", "invalidation could not be written; replaying")
        if txn.commit_time:
            self.lag_seconds = max(0.0, time.time() - unix_seconds(txn.commit_time))
            if self.observe_lag is not None:
                self.observe_lag(self.lag_seconds)

    def _status(self, conn: WalSender) -> None:
        conn.send_copy(
            encode_standby_status(
                self.confirmed_lsn, pg_time_us(time.time()), reply_requested=True
            )
        )

    async def _tick(self, conn: WalSender) -> None:
        """Confirm what is done, and ask for a keepalive (liveness and position), every
        `RENEW_SECONDS`; now and then read the slot's retained WAL."""
        next_stats = 0.0
        while True:
            self._status(conn)
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + SLOT_STATS_SECONDS
                self._spawn(self._slot_stats())
            await asyncio.sleep(RENEW_SECONDS)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _slot_stats(self) -> None:
        with contextlib.suppress(PgError, OSError):
            conn = await self._connect()
            try:
                rows = await conn.query(
                    "select pg_current_wal_lsn() - restart_lsn from pg_replication_slots"
                    f" where slot_name = '{self.config.slot}'"
                )
            finally:
                await conn.close()
            self.retained_wal_bytes = int(float(rows[0][0] or 0)) if rows else None

    # --- the slot and the publication ----------------------------------------------

    async def _publication_target(self, conn: WalSender) -> str:
        """``all tables``, or ``table`` and every table named in ``replication.tables``, in
        any schema (bare names, as everywhere in the configuration), quoted by Postgres.
        (The names were checked strictly by the configuration: letters, digits, _ and $.)"""
        names = self.config.tables
        if not names:
            return "all tables"
        literals = ", ".join(f"'{name}'" for name in names)
        rows = await conn.query(
            "select format('%I.%I', n.nspname, c.relname), c.relname from pg_class c"
            " join pg_namespace n on n.oid = c.relnamespace"
            f" where c.relkind in ('r', 'p') and c.relname in ({literals})"
            " and n.nspname <> 'information_schema' and n.nspname !~ '^pg_'"
            " order by 1"
        )
        missing = sorted(set(names) - {row[1] for row in rows})
        if missing:
            raise PgError(
                "42P01", f"replication.tables: no table {', '.join(missing)} in {self.database}"
            )
        return "table " + ", ".join(str(row[0]) for row in rows)

    async def _warn_without_replica_identity(self, conn: WalSender) -> None:
        """Say which published tables Postgres now refuses UPDATE and DELETE on: without a
        replica identity (no primary key, or REPLICA IDENTITY NOTHING) a table in a
        publication that publishes updates and deletes fails them with SQLSTATE 55000."""
        rows = await conn.query(
            "select format('%I.%I', t.schemaname, t.tablename)"
            " from pg_publication_tables t"
            " join pg_namespace n on n.nspname = t.schemaname"
            " join pg_class c on c.relnamespace = n.oid and c.relname = t.tablename"
            " join pg_publication p on p.pubname = t.pubname"
            f" where t.pubname = '{self.config.publication}' and (p.pubupdate or p.pubdelete)"
            " and (c.relreplident = 'n'"
            "  or (c.relreplident = 'd' and not exists (select 1 from pg_index i"
            "      where i.indrelid = c.oid and i.indisprimary))"
            "  or (c.relreplident = 'i' and not exists (select 1 from pg_index i"
            "      where i.indrelid = c.oid and i.indisreplident)))"
            " order by 1"
        )
        names = [str(row[0]) for row in rows]
        if not names:
            self._without_identity = ""
            return
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        if shown != self._without_identity:  # once per reader, again when the list changes
            self._without_identity = shown
            log.warning(
                "replication: Postgres refuses UPDATE and DELETE on %d table(s) of publication"
                " %s: they have no replica identity: %s. Give each a primary key, or REPLICA"
                " IDENTITY FULL (docs/replication.md)",
                len(names), self.config.publication, shown,
            )  # fmt: skip

    async def _prepare(self, conn: WalSender) -> None:
        """Create the publication and the slot if missing (and allowed)."""
        slot, publication = self.config.slot, self.config.publication
        if not await conn.query(f"select 1 from pg_publication where pubname = '{publication}'"):
            if not self.config.create_if_missing:
                raise PgError("42704", f"publication {publication!r} does not exist")
            target = await self._publication_target(conn)
            await conn.execute(f"create publication {publication} for {target}")
            log.info("replication: created publication %s for %s", publication, target)
        await self._warn_without_replica_identity(conn)
        found = await conn.query(
            f"select database from pg_replication_slots where slot_name = '{slot}'"
        )
        if found:
            return
        if not self.config.create_if_missing:
            raise PgError("42704", f"replication slot {slot!r} does not exist")
        await conn.execute(f"CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput NOEXPORT_SNAPSHOT")
        # Changes before the slot existed were not followed: forget what was cached.
        ns = self.service.context(self.database).namespace
        plan = whole_database(ns, "RESYNC")
        await self.service.invalidate(self.database, [plan], source="replication")
        log.warning("replication: created slot %s; cached results of %s invalidated",
                    slot, self.database)  # fmt: skip


def reader_of(service: CacheService | None) -> Replication | None:
    """The replication reader attached to `service`, if it follows a stream."""
    reader = service.replication if service is not None else None
    return reader if isinstance(reader, Replication) else None
