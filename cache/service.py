"""The cache service: one per process, shared by every session.

Shell module.  It owns the storage backend (Redis or memory), the per-database catalogs and
the configuration, and offers sessions four things:

* `context(database)`: the namespace, catalog and analyzer options for a database;
* `lookup(...)`: one round trip for a read's entry and generations, joined to a running
  identical miss when there is one (single flight, bounded wait);
* `fill(...)`: store a captured result if its generations are still current, and release
  the single-flight waiters with it only when the store succeeded (so a waiter never gets
  a result read before a write that was acknowledged before the waiter asked);
* `mark(...)`: before a write's commit goes upstream, mark the generations it will bump as
  in flight (a bump, plus a mark that refuses fills until confirmed or expired), so that no
  read can go backwards while Postgres shows the commit and the cache does not yet know;
* `invalidate(...)`: the one way in for every invalidation — bump the generations (again,
  for those marked, ending the marks), then publish one event per written table; awaited by
  the session before the writer's commit is acknowledged (so both the bump and the events
  precede the writer's ReadyForQuery).

The backend never raises and fails open; this module never fails a query either.

Layering: the service sees the configuration as a `CacheSettings` value, counts through
the `CacheCounters` port and reads catalogs through a `cache.catalog.CatalogSource`; the
proxy provides all three (`proxy.config.cache_settings`, `proxy.metrics.Stats`,
`proxy.pgclient.CatalogLogin`), so nothing here imports `proxy/`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from analyzer import AnalyzerOptions, StatementAnalysis, analyze
from cache import entry
from cache.backend import Backend, Lookup, event_template
from cache.catalog import Catalog, CatalogCache, CatalogConnection, CatalogSource, load_catalog
from cache.keys import Namespace
from cache.pgoutput import format_lsn, unix_seconds
from cache.planner import CachePolicy, ReadPlan, WritePlan, plan_read
from cache.settings import CacheSettings
from cache.shapes import ShapeStats

if TYPE_CHECKING:
    from cache.changes import Transaction

log = logging.getLogger("pgreactive.cache")

_SHAPES_PER_TABLE = 64
_PLANS_MEMO = 4096  # memoised read plans (emptied when full)
# (analysis, catalog, policy, namespace, plan): the plan is reused only for these very objects
_PlanMemo = tuple[StatementAnalysis, Catalog | None, CachePolicy, Namespace, ReadPlan | str]
_SINGLE_FLIGHT_WAIT = 2.0
# Test hook: a random delay (up to this many ms) between a fill's lookup and its store, to
# widen the read-fill / invalidate race window in stress tests (PITFALLS E5).
_FILL_DELAY_MS = float(os.environ.get("PGREACTIVE_TEST_FILL_DELAY_MS", "0") or 0)
# Test hook: a random delay (up to this many ms) before a confirmed commit's bump, to widen
# the window in which Postgres shows the commit but the cache does not know it yet.
_INVALIDATE_DELAY_MS = float(os.environ.get("PGREACTIVE_TEST_INVALIDATE_DELAY_MS", "0") or 0)


@dataclass(frozen=True, slots=True)
class Marked:
    """In-flight marks written for a session's writes, ended by the invalidation that
    confirms (or abandons) them: their tokens, and the counters they marked."""

    tokens: tuple[str, ...] = ()
    keys: frozenset[str] = frozenset()

    def __add__(self, other: Marked) -> Marked:
        return Marked(self.tokens + other.tokens, self.keys | other.keys)


@dataclass(frozen=True, slots=True)
class Invalidate:
    """What the cache must write before a client learns that its transaction ended
    (invariant 2); the session holds that message until `CacheService.settle` is done."""

    database: str
    plans: tuple[WritePlan, ...] = ()
    marked: Marked = Marked()  # in-flight marks that this ends
    prepared: str | None = None  # PREPARE TRANSACTION gid: keep `plans` for its COMMIT
    finished: str | None = None  # COMMIT / ROLLBACK PREPARED gid
    committed: bool = True  # (with `finished`) COMMIT PREPARED, not ROLLBACK PREPARED


@dataclass(frozen=True, slots=True)
class DatabaseContext:
    """What a session needs to plan statements against one database."""

    namespace: Namespace
    catalog: Catalog | None
    options: AnalyzerOptions


class CacheCounters(Protocol):
    """What the service counts (`proxy.metrics.Stats` implements it, for /metrics)."""

    def fill_stored(self) -> None: ...

    def fill_refused(self) -> None: ...

    def invalidated(self, database: str, whole_database: bool) -> None: ...

    def invalidation_failed(self) -> None: ...

    def event_published(self) -> None: ...


def _policy(
    settings: CacheSettings, scope_columns: tuple[str, ...], use_catalog: bool
) -> CachePolicy:
    return CachePolicy(
        default_ttl=settings.default_ttl,
        ttl=dict(settings.ttl),
        exclude=settings.exclude,
        scope_columns=scope_columns,
        relations=dict(settings.relations),
        use_catalog=use_catalog,
    )


def _view_check(definition: str, volatility: object) -> str | None:
    """A view is cacheable only if its own query is (now(), catalogs, ...)."""
    options = AnalyzerOptions(function_volatility=volatility)  # type: ignore[arg-type]
    analysis = analyze(definition, options=options)
    return None if analysis.cacheable else str(analysis.reason)


class StreamReader(Protocol):
    """The replication reader the proxy attaches (`proxy.replication`), as the service
    sees it: started and closed with the service, and the fence reads ask."""

    def start(self) -> None: ...

    def fresh(self, database: str) -> bool: ...

    async def close(self) -> None: ...


class CacheService:
    """Process-wide cache state and the operations sessions call."""

    def __init__(
        self,
        settings: CacheSettings,
        backend: Backend,
        counters: CacheCounters,
        catalog_source: CatalogSource | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.counters = counters
        self.shapes = ShapeStats()  # per-query-shape counters behind /stats
        self.catalogs: CatalogCache | None = None
        self._catalog_source = catalog_source  # None: no catalog login (`catalog.user`)
        if catalog_source is not None:
            self.catalogs = CatalogCache(
                self._connect_catalog,
                loader=self._load_catalog,
                max_age=settings.catalog_max_age,
            )
        self.policy = _policy(settings, settings.scope_columns, self.catalogs is not None)
        self.upstream_id = settings.upstream_id
        self.root = settings.root  # every key, the channel and the stream start with it
        self.source = settings.source or f"{socket.gethostname()}:{settings.instance_port}"
        self._namespaces: dict[str, Namespace] = {}
        self._options: dict[tuple[str, int], AnalyzerOptions] = {}
        self._inflight: dict[str, asyncio.Future[bytes | None]] = {}
        self._shapes: dict[tuple[str, str], OrderedDict[str, None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._client_db: dict[int, str] = {}  # catalog connection → its database
        self._catalog_ddl: dict[int, str | None] = {}  # catalog → `ddl` counter it predates
        self._plans: dict[tuple[int, tuple[str | None, ...]], _PlanMemo] = {}
        self._marks = 0
        self._mark_prefix = uuid.uuid4().hex[:12]  # tokens unique across instances
        # The replication reader, when the proxy follows the stream (`proxy.replication`
        # attaches it); it sets `replication_events` once the stream can be read (wal_level
        # is logical): from then on events come from the stream only.
        self.replication: StreamReader | None = None
        self.replication_events = False

    async def start(self) -> None:
        await self.backend.start()
        if self.replication is not None:
            self.replication.start()

    def fresh(self, database: str) -> bool:
        """False while the replication stream of `database` may be behind by more than its
        fence (docs/replication.md): reads then go upstream, neither hit nor fill."""
        return self.replication is None or self.replication.fresh(database)

    async def close(self) -> None:
        if self.replication is not None:
            await self.replication.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self.catalogs is not None:
            await self.catalogs.aclose()
        await self.backend.close()

    async def _connect_catalog(self, database: str) -> CatalogConnection:
        assert self._catalog_source is not None
        client = await self._catalog_source.connect(database)
        self._client_db[id(client)] = database
        return client

    async def _load_catalog(self, client: CatalogConnection) -> Catalog:
        """Load a catalog, noting the database's `ddl` counter read just before: when the
        counter has moved (DDL through any instance), this catalog is out of date."""
        database = self._client_db.get(id(client), "")
        ns = self.context(database).namespace if database else None
        ddl = await self._counter(ns, ns.ddl) if ns is not None else None
        catalog = await load_catalog(client, view_check=_view_check)
        self._catalog_ddl[id(catalog)] = ddl
        return catalog

    async def _counter(self, ns: Namespace, key: str) -> str | None:
        """The current value of one counter (None if the backend is unavailable)."""
        result = await self.backend.lookup(ns.probe, [key])
        return result.gens if result is not None else None

    def catalog_current(
        self, database: str, catalog: Catalog | None, gen_keys: Sequence[str], gens: str
    ) -> bool:
        """Whether `catalog` still describes the schema, judged by the `ddl` counter a lookup
        just read; if not, it is dropped (and reloaded) and the read is not cached."""
        if catalog is None or self.catalogs is None:
            return True
        ns = self.context(database).namespace
        try:
            value = gens.split(",")[list(gen_keys).index(ns.ddl)]
        except (ValueError, IndexError):
            return False
        if value == self._catalog_ddl.get(id(catalog)):
            return True
        self.catalogs.invalidate(database)
        return False

    # --- planning context ------------------------------------------------------------

    def context(self, database: str) -> DatabaseContext:
        ns = self._namespaces.get(database)
        if ns is None:
            ns = self._namespaces[database] = Namespace.of(self.upstream_id, database, self.root)
        catalog = self.catalogs.get(database) if self.catalogs is not None else None
        scope = frozenset(self.settings.scope_columns)
        if catalog is None:
            options = self._options.get((database, 0))
            if options is None:
                options = self._options[(database, 0)] = AnalyzerOptions(scope_columns=scope)
        else:
            options = self._options.get((database, id(catalog)))
            if options is None:
                # A new catalog: new options, so memoised analyses see its volatilities.
                self._options = {k: v for k, v in self._options.items() if k[0] != database}
                options = AnalyzerOptions(
                    scope_columns=scope,
                    function_volatility=catalog.function_volatility,
                    version=id(catalog),
                )
                self._options[(database, id(catalog))] = options
        return DatabaseContext(ns, catalog, options)

    def plan_read(
        self, analysis: StatementAnalysis, context: DatabaseContext, params: tuple[str | None, ...]
    ) -> ReadPlan | str:
        """`planner.plan_read`, memoised: the same analysis object (the analyzer memoises
        them), catalog, policy and parameters always plan the same."""
        memo_key = (id(analysis), params)
        memo = self._plans.get(memo_key)
        if (
            memo is not None
            and memo[0] is analysis
            and memo[1] is context.catalog
            and memo[2] is self.policy
            and memo[3] is context.namespace
        ):
            return memo[4]
        plan = plan_read(analysis, context.namespace, context.catalog, self.policy, params)
        if len(self._plans) >= _PLANS_MEMO:
            self._plans.clear()
        self._plans[memo_key] = (analysis, context.catalog, self.policy, context.namespace, plan)
        return plan

    def reload(self, settings: CacheSettings) -> None:
        """SIGHUP: run with `settings` from now on (the caller, `proxy.config.plan_reload`,
        changes only settings that may change live: TTLs, exclusions, relations, result
        size).  The policy is a new object, never a mutated one: `plan_read` reuses a plan
        only for the very policy it was made with, so no plan of the old one survives.
        Scope columns and catalog use stay as they were (they need a restart)."""
        self.settings = settings
        self.policy = _policy(settings, self.policy.scope_columns, self.policy.use_catalog)

    # --- reads -----------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self.backend.available

    async def lookup(self, entry_key: str, gen_keys: Sequence[str]) -> Lookup | bytes | None:
        """The entry (a `Lookup`), a leader's freshly stored result (bytes), or None.

        None means "no cache now" (backend unavailable): forward without filling.
        """
        leader = self._inflight.get(entry_key)
        if leader is not None:
            try:
                async with asyncio.timeout(_SINGLE_FLIGHT_WAIT):
                    body = await asyncio.shield(leader)
            except TimeoutError:
                body = None
            if body is not None:
                return body
        result = await self.backend.lookup(entry_key, gen_keys)
        self._lead(entry_key, result)
        return result

    def _lead(self, entry_key: str, result: Lookup | None) -> None:
        """A miss makes its reader the leader: identical misses wait for its fill."""
        if result is not None and not result.hit and entry_key not in self._inflight:
            self._inflight[entry_key] = asyncio.get_running_loop().create_future()

    def lookup_now(
        self,
        entry_key: str,
        gen_keys: Sequence[str],
        callback: Callable[[Lookup | bytes | None], None],
    ) -> bool:
        """`lookup` without a task, when no identical miss is running here and the backend
        can (see `Backend.lookup_now`); False: nothing was started, use `lookup`."""
        if entry_key in self._inflight:
            return False  # join the leader: only `lookup` waits

        def looked_up(result: Lookup | None) -> None:
            self._lead(entry_key, result)
            callback(result)

        return self.backend.lookup_now(entry_key, gen_keys, looked_up)

    def abandon(self, entry_key: str) -> None:
        """The miss this session led will not fill: release its waiters empty-handed."""
        self._release(entry_key, None)

    def fill(
        self,
        entry_key: str,
        gen_keys: Sequence[str],
        gens: str,
        body: bytes,
        ttl_ms: int,
        database: str,
        tables: frozenset[str],
        shape: str | None,
    ) -> None:
        """Store a captured result in the background (compare-and-set on `gens`)."""
        self._spawn(self._fill(entry_key, gen_keys, gens, body, ttl_ms, database, tables, shape))

    async def _fill(
        self,
        entry_key: str,
        gen_keys: Sequence[str],
        gens: str,
        body: bytes,
        ttl_ms: int,
        database: str,
        tables: frozenset[str],
        shape: str | None,
    ) -> None:
        stored = False
        # No reader may join this miss once the fill is under way: one that started after
        # the fill was stored could otherwise get a result older than a write acknowledged
        # (on another instance) in between.  Those that joined before are safe.
        if _FILL_DELAY_MS:
            await asyncio.sleep(random.uniform(0, _FILL_DELAY_MS) / 1000)
        waiting = self._inflight.pop(entry_key, None)
        try:
            stored = await self.backend.fill(entry_key, gen_keys, gens, entry.encode(body), ttl_ms)
        finally:
            if waiting is not None and not waiting.done():
                waiting.set_result(body if stored else None)
        if stored:
            self.counters.fill_stored()
            if shape:
                for table in tables:
                    shapes = self._shapes.setdefault((database, table), OrderedDict())
                    shapes[shape] = None
                    shapes.move_to_end(shape)
                    while len(shapes) > _SHAPES_PER_TABLE:
                        shapes.popitem(last=False)
        else:
            self.counters.fill_refused()

    def _release(self, entry_key: str, body: bytes | None) -> None:
        future = self._inflight.pop(entry_key, None)
        if future is not None and not future.done():
            future.set_result(body)

    # --- writes ----------------------------------------------------------------------

    async def mark(self, keys: Iterable[str]) -> Marked:
        """Before a commit goes upstream: mark `keys` in flight (see `cache.backend`).

        A mark that could not be written leaves the backend unavailable (as a failed bump
        does) until it heals with an epoch bump, so reads cannot go backwards either way.
        """
        self._marks += 1
        token = f"{self._mark_prefix}-{self._marks}"
        ttl_ms = int(self.settings.inflight_ttl * 1000)
        await self.backend.mark(sorted(keys), token, ttl_ms)
        return Marked((token,), frozenset(keys))

    async def mark_prepared(self, database: str, gid: str) -> Marked:
        """Before COMMIT PREPARED: mark what PREPARE TRANSACTION saved.  An unknown gid is
        not marked: it was prepared in an aborted transaction (nothing commits; its cached
        reads stay) or out of the proxy's sight (writes it never saw, like any direct write;
        `finish_prepared` still invalidates the database after the commit)."""
        ns = self.context(database).namespace
        keys = await self.backend.load_prepared(ns.prepared(gid))
        return await self.mark(keys) if keys else Marked()

    async def settle(self, work: Invalidate) -> bool:
        """Write what a transaction's end requires (`Invalidate`); False when it could not
        be written (the backend then heals with an epoch bump, invariant 5)."""
        if work.prepared is not None:
            return await self.save_prepared(work.database, work.prepared, work.plans)
        if work.finished is not None:
            return await self.finish_prepared(
                work.database, work.finished, work.committed, work.marked
            )
        return await self.invalidate(work.database, work.plans, marked=work.marked)

    async def invalidate(
        self,
        database: str,
        plans: Sequence[WritePlan],
        *,
        source: str = "proxy",
        marked: Marked = Marked(),
        transaction: Transaction | None = None,
    ) -> bool:
        """Bump what `plans` invalidate and what `marked` marked, ending those marks, then
        publish one event per written table — or, for a `transaction` read from the
        replication stream, one event for the transaction (published once per commit LSN).
        Once the stream is followed, writes seen by the proxy publish nothing: the stream
        announces them.

        Returns False when the bump failed: the backend is then unavailable and heals by
        bumping the global epoch before it serves anything again (invariant 5).
        """
        if not plans and not marked.tokens:
            return True
        bumps = sorted(set(marked.keys).union(*(p.bumps for p in plans)))
        if _INVALIDATE_DELAY_MS:
            await asyncio.sleep(random.uniform(0, _INVALIDATE_DELAY_MS) / 1000)
        ok = await self.backend.bump(bumps, marked.tokens)
        if not plans:
            return ok  # marks of writes that did not commit: ended, nothing to announce
        if ok and self.catalogs is not None and not any(p.whole_database for p in plans):
            # Planned with a catalog that DDL (through another instance) has since made
            # stale? Then what the write reaches is unknown: invalidate the database.
            ns = self.context(database).namespace
            ddl = await self._counter(ns, ns.ddl)
            if ddl is None or any(self._catalog_ddl.get(p.catalog_id) != ddl for p in plans):
                ok = await self.backend.bump([ns.epoch])
                self.catalogs.invalidate(database)
        self.counters.invalidated(database, any(p.whole_database for p in plans))
        if self.catalogs is not None and any(p.catalog_changed for p in plans):
            self.catalogs.invalidate(database)  # DDL (or code that may run it): reload
        if not ok:
            self.counters.invalidation_failed()
            log.warning("invalidation of %s could not be written; cache paused", database)
            return False
        # The events go out after the bump and before the writer learns of its commit, so a
        # writer (or anyone it tells) that then waits for its event finds it published.
        if transaction is not None:
            await self._publish_transaction(database, plans, transaction)
        elif not self.replication_events:
            await self._publish(database, plans, source)
        return True

    async def _publish(self, database: str, plans: Sequence[WritePlan], source: str) -> None:
        groups: dict[str, list[WritePlan]] = {}
        for plan in plans:
            groups.setdefault(plan.table, []).append(plan)
        for table, group in groups.items():
            fields = self._event(
                database, table, group, self.source if source == "proxy" else source
            )
            await self._send(fields)

    async def _publish_transaction(
        self, database: str, plans: Sequence[WritePlan], txn: Transaction
    ) -> None:
        """One event for a replicated transaction, published once per commit LSN (a
        transaction replayed after a crash or a failover is not announced twice)."""
        if not plans:
            return
        fields = self._event(database, plans[0].table, plans, "replication")
        fields["operation"] = "DDL" if txn.ddl else plans[0].operation.split(",")[0]
        fields["operations"] = list(dict.fromkeys(
            op for p in plans for op in p.operation.split(",")))  # fmt: skip
        fields["lsn"] = format_lsn(txn.commit_lsn)
        if txn.commit_time:
            fields["commitTs"] = _iso(datetime.fromtimestamp(unix_seconds(txn.commit_time), UTC))
        ns = self.context(database).namespace
        await self._send(fields, (ns.prefix + "repl:published", f"{txn.end_lsn:016X}"))

    def _event(
        self, database: str, table: str, plans: Sequence[WritePlan], source: str
    ) -> dict[str, object]:
        tables = sorted(set().union(*(p.tables for p in plans)) | {table})
        scopes = {p.scope for p in plans}
        affected: dict[str, None] = {}
        for name in tables:
            affected.update(self._shapes.get((database, name), {}))
        return {
            "type": "invalidation",
            "ts": _iso(datetime.now(UTC)),
            "table": table,
            "tables": tables,
            "operation": plans[0].operation,
            "organizationId": scopes.pop() if len(scopes) == 1 else None,
            "affectedQueries": list(affected),
            "requiresAck": self.settings.requires_ack,
            "source": source,
            "database": database,
        }

    async def _send(self, fields: dict[str, object], once: tuple[str, str] | None = None) -> None:
        settings = self.settings
        payload = event_template(fields)
        channel = settings.channel
        if once is None:
            event_id = await self.backend.publish(channel, payload, settings.stream_maxlen)
        else:
            event_id = await self.backend.publish(channel, payload, settings.stream_maxlen, once)
        if event_id:
            self.counters.event_published()
            if settings.in_process:  # in-process only: make events visible
                log.info("event %s on %s: table %s", event_id, channel, fields["table"])

    async def save_prepared(self, database: str, gid: str, plans: Sequence[WritePlan]) -> bool:
        """PREPARE TRANSACTION: keep its invalidations for COMMIT PREPARED, from anywhere."""
        ns = self.context(database).namespace
        bumps = sorted(set().union(*(p.bumps for p in plans))) if plans else []
        return await self.backend.save_prepared(ns.prepared(gid), bumps)

    async def finish_prepared(
        self, database: str, gid: str, committed: bool, marked: Marked = Marked()
    ) -> bool:
        """COMMIT/ROLLBACK PREPARED: bump what PREPARE saved (unknown gid: the database)."""
        ns = self.context(database).namespace
        bumps = await self.backend.take_prepared(ns.prepared(gid))
        if not committed:
            return await self.invalidate(database, [], marked=marked)
        plan = WritePlan(
            frozenset(bumps) if bumps is not None else frozenset({ns.epoch}),
            "*",
            frozenset({"*"}),
            "COMMIT PREPARED",
            None,
            whole_database=bumps is None,
        )
        return await self.invalidate(database, [plan], marked=marked)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
