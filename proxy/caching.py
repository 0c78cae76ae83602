"""The cache path of one session: serve, capture and fill reads; invalidate committed writes.

Shell module, driven by `ClientSession` only when caching is on.

Reads.  A read may be answered from the cache only when the session is idle outside a
transaction, so nothing else is in flight and every byte of the answer is ours:
* a simple Query holding one cacheable SELECT;
* an extended-protocol segment that is exactly one unit ``[Parse] Bind [Describe portal]
  Execute`` of a cacheable SELECT followed by Sync, or by Flush (pipeline mode: the segment
  goes on, and its Sync is answered here if nothing else went upstream).  An Execute with a
  row limit is answered as Postgres would (PortalSuspended after N rows; on a miss the
  upstream is asked for N+1 rows, so a whole result can still be filled).  Extended
  messages are collected until the Sync/Flush; anything else (another unit, a Describe of a
  statement, Close, ...) sends what was collected upstream unchanged.
While the lookup runs, later client messages are held, so requests stay in order.  A hit is
answered with exactly the messages Postgres would have sent (ParseComplete and BindComplete
only for a Parse and Bind that were sent, RowDescription only when it was described) and a
ReadyForQuery with the session's status.  A Parse answered from the cache is *deferred*: it
is sent upstream (its ParseComplete hidden) before the first message that needs it there.
A miss is forwarded with a `Capture` that copies RowDescription, DataRows and
CommandComplete as they stream through; at ReadyForQuery (status I, no error, no notice,
under `max_result_bytes`) it is filled with the generations read before the query ran.

Writes.  Each successful statement's `WritePlan` is collected; at COMMIT (or at the
ReadyForQuery closing an implicit transaction) the session pauses the upstream stream just
before the message that tells the client, awaits `CacheService.invalidate`, then goes on
(invariant 2).  ROLLBACK discards; PREPARE TRANSACTION saves the set for COMMIT PREPARED.

In-flight marks (invariant 9).  Before a message that may commit writes goes upstream — a
Query or Execute of a write outside an explicit transaction block, a COMMIT with writes
collected or in flight, COMMIT PREPARED, a FunctionCall — it (and what follows it) is held
until `CacheService.mark` has marked what the commit will bump (planned from the SQL and
Bind parameters; the database epoch when unknown).  Each mark is due at the ReadyForQuery
that ends its message's transaction (counted from the pending requests); the invalidation
there (or at a COMMIT's CommandComplete, when nothing of that ReadyForQuery's group follows
the COMMIT) ends it, with a second bump.  Marks of transactions that did not commit are
ended in the background at their ReadyForQuery; those of a session that ends expire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from analyzer import Analysis, AnalyzerOptions, Kind, StatementAnalysis, TxnCommand, analyze
from cache import entry
from cache.backend import Lookup
from cache.eligibility import CACHED_ENCODING, SessionFacts, bypass, relayed_read_reason
from cache.keys import entry_digest, settings_digest, unit_digest, unit_prefix
from cache.planner import Bypass, ReadPlan, WritePlan, plan_write, whole_database
from cache.service import CacheService, DatabaseContext, Invalidate, Marked
from proxy import codec
from proxy.assembly import Unit, read_unit
from proxy.capture import Capture
from proxy.codec import BackendTag, FrontendTag, TxnStatus
from proxy.errors import InternalError, ProxyError
from proxy.metrics import Latency, Stats
from proxy.state import REREAD_SQL, STARTUP_SQL, Settings, decode_reread
from proxy.tracker import SYNC_ENTRY, Pending, Request, Tracker, pending_for

log = logging.getLogger("pgreactive.cache")

_FAILED = object()  # a lookup that raised (or was cancelled)
_MEMO_SIZE = 1024  # statements per session memo (emptied when full)
_HOLD_BYTES = 256 * 1024  # client bytes held behind a lookup before the socket is paused
PARSE_COMPLETE = codec.message(BackendTag.PARSE_COMPLETE)
BIND_COMPLETE = codec.message(BackendTag.BIND_COMPLETE)
_EXTENDED = frozenset(b"PBDE")
_WRITE_TAGS = (b"INSERT ", b"UPDATE ", b"DELETE ", b"MERGE ")
_UNPARSED = "(unparsed)"  # the shape of a read without a name or a fingerprint
_READIES = (Request.QUERY, Request.SYNC, Request.FUNCTION_CALL)  # answered by ReadyForQuery
_STATEMENTS = (Request.QUERY, Request.EXECUTE)
_MARKED = (Request.EXECUTE, Request.FUNCTION_CALL)  # (and Query) may commit writes
_WRITE_KINDS = frozenset({Kind.INSERT, Kind.UPDATE, Kind.DELETE, Kind.MERGE})
_CLOSE_UNNAMED_STATEMENT = codec.message(FrontendTag.CLOSE, b"S\x00")
_SYNC = codec.message(FrontendTag.SYNC)
_QUIET = object()  # a hidden request whose ErrorResponse the client does not see
_REREAD_QUERY = codec.message(FrontendTag.QUERY, REREAD_SQL.encode() + b"\x00")
_STARTUP_QUERY = codec.message(FrontendTag.QUERY, STARTUP_SQL.encode() + b"\x00")


def _cstring(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\x00"


@dataclass(slots=True)
class SettingsReread:
    """The proxy's own query reading a session's state back (see `proxy.state`)."""

    at_start: bool
    row: bytes | None = None
    failed: bool = False


class CacheSession(Protocol):
    """What the cache path needs of its session (`proxy.session.ClientSession`): a port,
    so that this module knows no session class."""

    id: int
    tracker: Tracker  # what is in flight, what exists upstream
    settings: Settings
    parameters: dict[str, str]  # from ParameterStatus
    invalidating: bool  # a commit waits for its invalidation

    @property
    def database(self) -> str: ...

    @property
    def connected(self) -> bool: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def latency(self) -> Latency: ...

    def send_upstream(self, data: bytes) -> None: ...

    def write_client(self, data: bytes) -> None: ...

    def client_messages(self, messages: list[tuple[int, bytes]]) -> None: ...

    def capture_all(self, on: bool) -> None: ...

    def pause_client(self, reason: str = ...) -> None: ...

    def resume_client(self, reason: str = ...) -> None: ...

    def terminate(self) -> None: ...

    def close(self, error: ProxyError | None = None) -> None: ...

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None: ...


class SessionCache:
    """Per-session cache state; see the module docstring."""

    def __init__(self, session: CacheSession, service: CacheService) -> None:
        self.session = session
        self.service = service
        self.held: list[tuple[int, bytes]] | None = None  # client messages behind a lookup
        self.held_bytes = 0
        self.segment: list[tuple[int, bytes]] | None = None  # extended messages before Sync
        self.executed = False  # an Execute of this segment went upstream: relay until Sync
        self.local_segment = False  # this segment was answered from the cache so far
        self.deferred: dict[str, tuple[bytes, str, tuple[int, ...]]] = {}
        self.undeferring: set[str] = set()  # deferred Parses sent, not yet confirmed
        self.client_statements: dict[str, str] = {}  # the client's view: name → SQL
        self.client_portals: dict[str, tuple[str, tuple[str | None, ...]]] = {}
        self.captures: list[Capture] = []
        self.writes: list[WritePlan] = []
        # Upstream state the client could not see (invariant 8): extended messages went up
        # since the last Sync (so a Sync the cache answers must still go up); the unnamed
        # statement a simple-Query hit destroyed in the client's view; portals of hits
        # answered before a Flush, which exist only in the client's view.
        self.unsynced = False
        self.unnamed_dropped = False
        self.virtual_portals: dict[str, tuple[bytes, str]] = {}  # name → (Bind, statement)
        # Session state (invariant 3): `unknown` after something changed it out of sight
        # (and at start, for per-role/database defaults) until `SettingsReread` has read it
        # back; `temporary` while the session has temporary relations.
        self.unknown = True
        self.reread: SettingsReread | None = None
        self._first_reread = True
        self.temporary = False
        self.marks: list[tuple[int, Marked]] = []  # in-flight marks, by due ReadyForQuery
        self._readies = 0  # ReadyForQuery messages seen
        self._catalog_waited = False  # this session already waited once for its catalog
        self._digest: tuple[int, bytes] = (-1, b"")
        # Per-statement memos under the current settings (`_settings` clears them): a
        # simple Query's entry key, an extended read's hash state before its Bind.
        self._keys: dict[str, str] = {}
        self._prefixes: dict[tuple[bool, str, tuple[int, ...]], hashlib.blake2b] = {}

    # --- client → upstream -----------------------------------------------------------

    def client_messages(self, messages: list[tuple[int, bytes]]) -> None:
        """Route client messages: hold, collect into a segment, or forward."""
        out: list[bytes] = []
        for index, (tag, raw) in enumerate(messages):
            if self.held is not None:
                rest = messages[index:]
                self.held.extend(rest)
                self.held_bytes += sum(len(raw) for _, raw in rest)
                if self.held_bytes > _HOLD_BYTES:
                    self.session.pause_client("lookup")  # enough waits: stop reading
                break
            if tag == FrontendTag.TERMINATE:
                self._send(out)
                self.session.terminate()
                return
            if (
                self.segment is None
                and tag in _EXTENDED
                and not self.executed
                and self._eligible() is None
            ):
                self.segment = []
            if tag == FrontendTag.SYNC and self.segment is None and self._local_sync():
                continue
            if self.segment is not None and self._collect(tag, raw, out):
                continue
            self._forward(tag, raw, out)
        self._send(out)

    def _send(self, out: list[bytes]) -> None:
        if out:
            self.session.send_upstream(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _forward(self, tag: int, raw: bytes, out: list[bytes], planned: bool = False) -> None:
        """Relay one message upstream, recording what it expects (and what it is)."""
        entry_ = pending_for(tag, raw[5:])
        self.local_segment = False  # the segment is no longer answered by the cache alone
        if tag == FrontendTag.QUERY:
            assert entry_ is not None
            self.deferred.pop("", None)  # a simple Query destroys the unnamed statement
            if self._query(entry_, raw, out):
                return
            self._query_sent()
            if self._mark_first(entry_, raw, out):
                return
        elif tag == FrontendTag.SYNC:
            self.executed = self.local_segment = self.unsynced = False
        elif entry_ is not None:
            self._annotate(entry_, raw, out, planned)
            self.unsynced = entry_.request is not Request.FUNCTION_CALL  # (Flush alone: no)
            if entry_.request in _MARKED and self._mark_first(entry_, raw, out):
                return
        if entry_ is not None:
            self.session.tracker.push(entry_)
        out.append(raw)

    def _annotate(self, entry_: Pending, raw: bytes, out: list[bytes], planned: bool) -> None:
        """Extended messages: keep the client's view, send deferred Parses first."""
        request = entry_.request
        if request is Request.PARSE:
            if entry_.name:
                self._undefer(entry_.name, out)  # so a duplicate name fails as it should
                # A second Parse of a name fails (42P05): the statement keeps its first SQL.
                self.client_statements.setdefault(entry_.name, entry_.sql)
            else:
                self.deferred.pop("", None)
                self.unnamed_dropped = False  # replaced anyway
                self.client_statements[""] = entry_.sql
        elif request is Request.BIND:
            if entry_.name:
                self._need_portal(entry_.name, out)  # so a duplicate name fails as it should
            else:
                self.virtual_portals.pop("", None)  # replaced
            self._need_statement(entry_.statement, out)
            bind = codec.decode_bind(raw[5:])
            self.client_portals[entry_.name] = (entry_.statement, _text_params(bind))
        elif request in (Request.DESCRIBE, Request.CLOSE) and entry_.kind == "S":
            self._need_statement(entry_.name, out)
            if request is Request.CLOSE:
                self.client_statements.pop(entry_.name, None)
        elif request is Request.CLOSE:
            self._need_portal(entry_.name, out)
            self.client_portals.pop(entry_.name, None)
        elif request is Request.DESCRIBE:
            self._need_portal(entry_.name, out)
        elif request is Request.EXECUTE:
            self._need_portal(entry_.name, out)
            self.executed = True
            statement, params = self.client_portals.get(entry_.name, ("", ()))
            entry_.sql = self.client_statements.get(statement, "")
            entry_.params = params
            if entry_.sql:  # (memoised; the session's CommandComplete reuses it)
                entry_.analysis = analyze(entry_.sql, options=self._options(self._context()))
            if not planned:
                self._count_bypass(entry_.sql)
        elif request is Request.FUNCTION_CALL:
            self.writes.append(self._unknown_write())  # any function, any effect
            self.unknown = True  # on the session's state too

    def _query_sent(self) -> None:
        """A simple Query goes upstream: it ends the implicit transaction of any extended
        messages before it and destroys the unnamed statement, in Postgres and in the
        client's view alike (portals end with the transaction)."""
        self.unsynced = self.unnamed_dropped = False
        self.virtual_portals.clear()

    def _need_statement(self, name: str, out: list[bytes]) -> None:
        """Before a message that uses statement `name` upstream: make the upstream's
        statement the one the client believes exists (or does not)."""
        if not name and self.unnamed_dropped:
            # A simple-Query hit destroyed it in the client's view: destroy it upstream too,
            # so a Bind of it fails as Postgres would have it fail.
            self.unnamed_dropped = False
            self._push_hidden(Pending(Request.CLOSE, kind="S", hidden=True))
            out.append(_CLOSE_UNNAMED_STATEMENT)
        self._undefer(name, out)

    def _need_portal(self, name: str, out: list[bytes]) -> None:
        """Before a message that uses portal `name` upstream: a portal that a hit answered
        before a Flush exists only in the client's view; create it upstream and run it to
        its end (hidden), so the client's message finds it as Postgres would."""
        virtual = self.virtual_portals.pop(name, None)
        if virtual is None:
            return
        bind, statement = virtual
        self._need_statement(statement, out)
        self._push_hidden(Pending(Request.BIND, name=name, statement=statement, hidden=True))
        self._push_hidden(Pending(Request.EXECUTE, name=name, hidden=True))
        out.append(bind)
        out.append(codec.message(FrontendTag.EXECUTE, _cstring(name) + b"\x00\x00\x00\x00"))

    def _push_hidden(self, pending: Pending) -> None:
        """Record a request the proxy sends on the client's behalf; its replies are cut out
        of the stream (`hidden_reply`), which needs every message decoded."""
        self.session.tracker.push(pending)
        self.session.capture_all(True)

    def _undefer(self, name: str, out: list[bytes], *, synced: bool = False) -> None:
        """Send a Parse answered from the cache before the first message that needs it.

        It stays deferred until its (hidden) ParseComplete arrives: if it fails or is
        skipped after an error, the next use sends it again.  `synced`: before a simple
        Query, it is closed by a Sync of the proxy's own, and its error is not relayed (a
        failed Parse would otherwise make Postgres skip that Query, waiting for a Sync).
        """
        deferred = self.deferred.get(name)
        if deferred is not None and name not in self.undeferring:
            self.undeferring.add(name)
            raw, sql, oids = deferred
            self._push_hidden(
                Pending(Request.PARSE, name=name, sql=sql, param_oids=oids, hidden=True,
                        capture=_QUIET if synced else None)
            )
            out.append(raw)
            if synced:
                self._push_hidden(Pending(Request.SYNC, hidden=True))
                out.append(_SYNC)

    # --- reads: simple Query -----------------------------------------------------------

    def _query(self, pending: Pending, raw: bytes, out: list[bytes]) -> bool:
        """Start a lookup for a cacheable Query (True: it is held), else annotate it."""
        context = self._context()
        analysis = analyze(pending.sql, options=self._options(context))
        pending.analysis = analysis
        if analysis.kind is not Kind.SELECT:
            for statement in analysis.statements:
                if statement.kind is Kind.DEALLOCATE and statement.statement_name:
                    # It must exist upstream (unless the client's own extended messages
                    # are open: then their Sync is the client's to send).
                    self._undefer(statement.statement_name, out, synced=not self.unsynced)
            return False
        if self.unsynced:
            # Extended messages went up without a Sync: this Query must go up to end their
            # implicit transaction, as it would without the proxy.
            self._bypassed(analysis, Bypass.REQUEST_SHAPE)
            return False
        if self._wait_for_catalog(context, [raw], out):
            return True
        plan = self._plan(analysis, context, ())
        if plan is None:
            return False
        settings = self._settings()  # (clears the memos when the settings changed)
        key = self._keys.get(pending.sql)
        if key is None:
            if len(self._keys) >= _MEMO_SIZE:
                self._keys.clear()
            key = self._keys[pending.sql] = context.namespace.entry(
                entry_digest(settings, b"Q", pending.sql)
            )
        self._start_lookup(key, plan, context, analysis, [raw], pending, out)
        return True

    def _wait_for_catalog(
        self, context: DatabaseContext, messages: list[bytes], out: list[bytes]
    ) -> bool:
        """The first read of a session whose database catalog is still loading waits for it
        (once, bounded), instead of going uncached; True if `messages` are now held."""
        catalogs = self.service.catalogs
        if catalogs is None or context.catalog is not None or self._catalog_waited:
            return False
        self._catalog_waited = True
        self._hold(out)
        self.session.spawn(self._catalog_loaded(messages))
        return True

    async def _catalog_loaded(self, messages: list[bytes]) -> None:
        catalogs = self.service.catalogs
        assert catalogs is not None
        try:
            async with asyncio.timeout(self.service.settings.catalog_wait):
                await catalogs.load(self.session.database)
        except TimeoutError:
            pass
        finally:
            self._release([(raw[0], raw) for raw in messages])

    def _release(self, first: list[tuple[int, bytes]]) -> None:
        """End a hold: `first`, then the client messages that waited, go on their way."""
        held, self.held = self.held or [], None
        self.session.resume_client("lookup")  # (if it came to pausing)
        if first or held:
            self.session.client_messages(first + held)

    def _hold(self, out: list[bytes]) -> None:
        """A lookup starts: what came before goes out, what comes after waits for it."""
        self._send(out)
        self.held = []  # the client socket keeps being read, up to _HOLD_BYTES
        self.held_bytes = 0

    def _count_bypass(self, sql: str) -> None:
        """An extended-protocol read relayed without being considered for the cache (in a
        transaction, in a pipeline with other requests, ...): count it with its reason."""
        if not sql:
            return
        analysis = analyze(sql, options=self._options(self._context()))
        reason = relayed_read_reason(analysis, self._facts())
        if reason is not None:
            self._bypassed(analysis, reason)

    def _plan(
        self, analysis: Analysis, context: DatabaseContext, params: tuple[str | None, ...]
    ) -> ReadPlan | None:
        reason = self._eligible()
        if reason is None:
            planned = self.service.plan_read(analysis, context, params)
            if isinstance(planned, ReadPlan):
                return planned
            reason = planned
        self._bypassed(analysis, reason)
        return None

    def _bypassed(self, analysis: Analysis, reason: str) -> None:
        """Count a read that was forwarded, in the metric and under its shape."""
        self.session.stats.bypassed(reason)
        self.service.shapes.bypassed(
            shape_name(analysis), analysis.sql, reason, self.session.database
        )

    # --- reads: extended segments --------------------------------------------------------

    def _collect(self, tag: int, raw: bytes, out: list[bytes]) -> bool:
        """Add to the segment (True), or end it and let the caller forward `raw`.

        A Sync or Flush after exactly one read unit is a decision point: look it up.
        """
        segment = self.segment
        assert segment is not None
        if tag in _EXTENDED and len(segment) < 4:
            segment.append((tag, raw))
            return True
        self.segment = None
        planned = False
        if tag in (FrontendTag.SYNC, FrontendTag.FLUSH) and segment:
            unit = read_unit(segment, tag == FrontendTag.SYNC, self)
            if unit is not None:
                if self._start_unit(unit, segment, raw, out):
                    return True
                planned = True  # considered (and counted) already
        for index, (t, r) in enumerate(segment):
            self._forward(t, r, out, planned)
            if self.held is not None:  # a write's mark is being written: the rest waits
                self.held.extend([*segment[index + 1 :], (tag, raw)])
                return True
        return False

    def _local_sync(self) -> bool:
        """Sync closing a segment answered from the cache alone: answer it here."""
        if not self.local_segment or self.unsynced or not self.session.tracker.idle():
            return False  # (extended messages went up before the hit: the Sync goes too)
        self.local_segment = False
        self.session.write_client(codec.ready_for_query(self.session.tracker.status))
        return True

    def known(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        """`assembly.Statements`: a statement as the client sees it (one a hit deferred
        first; none for the unnamed one a simple-Query hit destroyed in its view)."""
        deferred = self.deferred.get(name)
        if deferred is not None:
            return deferred[1], deferred[2]
        if not name and self.unnamed_dropped:
            return None  # it exists upstream only: the client's Bind of it must fail
        known = self.session.tracker.statements.get(name)
        return (known.sql, known.param_oids) if known is not None else None

    def taken(self, name: str) -> bool:
        """`assembly.Statements`: a Parse of `name` would fail as a duplicate."""
        return name in self.session.tracker.statements or name in self.deferred

    def _start_unit(
        self, unit: Unit, segment: list[tuple[int, bytes]], sync: bytes, out: list[bytes]
    ) -> bool:
        context = self._context()
        analysis = analyze(unit.sql, options=self._options(context))
        if analysis.kind is not Kind.SELECT:
            return False
        if self._wait_for_catalog(context, [*(raw for _, raw in segment), sync], out):
            return True
        params = _text_params(codec.decode_bind(unit.bind)) if _uses_params(analysis) else ()
        plan = self._plan(analysis, context, params)
        if plan is None:
            return False
        settings = self._settings()
        memo = (unit.describe, unit.sql, unit.param_oids)
        prefix = self._prefixes.get(memo)
        if prefix is None:
            if len(self._prefixes) >= _MEMO_SIZE:
                self._prefixes.clear()
            prefix = self._prefixes[memo] = unit_prefix(
                settings, b"ET" if unit.describe else b"E", unit.sql, unit.param_oids
            )
        bind = unit.bind
        values = bind.index(b"\x00", bind.index(b"\x00") + 1) + 1  # past the two names
        key = context.namespace.entry(unit_digest(prefix, bind[values:]))
        messages = [*(raw for _, raw in segment), sync]
        self._start_lookup(key, plan, context, analysis, messages, unit, out)
        return True

    # --- lookups -----------------------------------------------------------------------

    def _start_lookup(
        self,
        key: str,
        plan: ReadPlan,
        context: DatabaseContext,
        analysis: Analysis,
        messages: list[bytes],
        request: Pending | Unit,
        out: list[bytes],
    ) -> None:
        """Hold what the client sends next, and look the read up: without a task when the
        backend can (the reply's callback answers), else in one."""
        self._hold(out)
        done = partial(
            self._looked_up, key, plan, context, analysis, messages, request, time.perf_counter()
        )
        if not self.service.lookup_now(key, plan.gen_keys, done):
            self.session.spawn(self._lookup(key, plan.gen_keys, done))

    async def _lookup(
        self, key: str, gen_keys: tuple[str, ...], done: Callable[[object], None]
    ) -> None:
        result: object = _FAILED
        try:
            result = await self.service.lookup(key, gen_keys)
        finally:
            done(result)

    def _looked_up(
        self,
        key: str,
        plan: ReadPlan,
        context: DatabaseContext,
        analysis: Analysis,
        messages: list[bytes],
        request: Pending | Unit,
        started: float,
        result: object,
    ) -> None:
        """A lookup's outcome (a `Lookup`, a leader's fresh body, None: no cache, or
        `_FAILED`): answer the read or send it upstream, then let the client go on.

        Also called from the Redis connection's data_received: it never raises."""
        done = False
        service = self.service
        session = self.session
        try:
            if not session.connected:
                if isinstance(result, Lookup) and not result.hit:
                    service.abandon(key)
                done = True
                return
            if result is _FAILED:
                return
            if isinstance(result, Lookup) and not service.catalog_current(
                session.database, context.catalog, plan.gen_keys, result.gens
            ):
                # The schema changed (DDL through another instance) since this catalog was
                # read: neither serve nor fill on its strength until it is reloaded.
                if not result.hit:
                    service.abandon(key)
                self._bypassed(analysis, Bypass.CATALOG_UNKNOWN)
                self._relay_read(messages, request, None)
                done = True
                return
            body = result if isinstance(result, bytes) else None
            if isinstance(result, Lookup) and result.blob is not None:
                body = entry.decode(result.blob)
            if body is not None:
                self._answer(request, body, messages[-1])
                session.stats.hits += 1
                elapsed = time.perf_counter() - started
                session.latency.hit(elapsed)
                service.shapes.hit(
                    shape_name(analysis), analysis.sql, elapsed, session.database
                )
            else:
                capture = None
                if isinstance(result, Lookup):
                    session.stats.misses += 1
                    shape = analysis.query_name or analysis.fingerprint
                    service.shapes.miss(shape or _UNPARSED, analysis.sql, session.database)
                    capture = Capture(
                        key, plan, result.gens, session.database, shape, started,
                        service.settings.max_result_bytes,
                    )
                else:
                    self._bypassed(analysis, Bypass.CACHE_UNAVAILABLE)
                self._relay_read(messages, request, capture)
            done = True
        except Exception:
            log.exception("conn=%d cache lookup failed; the read goes upstream", session.id)
        finally:
            try:
                if not done and session.connected:
                    service.abandon(key)
                    self._relay_read(messages, request, None)  # whatever failed: forward it
                self._release([])
            except Exception:
                log.exception("conn=%d cannot resume after a lookup", session.id)
                session.close(InternalError("internal error in pgreactive; see its log"))

    def _answer(self, request: Pending | Unit, body: bytes, last: bytes) -> None:
        """Reply to a read from the cache, exactly as Postgres would have, and leave the
        upstream as the client's messages would have left it (invariant 8); `last` is the
        Sync or Flush that ended the request."""
        parts: list[bytes] = []
        session = self.session
        if isinstance(request, Unit):
            parse = request.parse
            if parse is not None and request.parse_raw is not None:
                parts.append(PARSE_COMPLETE)
                self.deferred[parse.statement] = (request.parse_raw, parse.query, parse.param_oids)
                self.client_statements[parse.statement] = parse.query
            parts.append(BIND_COMPLETE)
            body = entry.limit_rows(body, request.max_rows)
            if not request.final:
                portal = codec.decode_bind_names(request.bind)[0]
                bind = codec.message(FrontendTag.BIND, request.bind)
                self.virtual_portals[portal] = (bind, request.statement)
        elif "" in session.tracker.statements:
            self.unnamed_dropped = True  # a simple Query destroys the unnamed statement
        parts.append(body)
        if isinstance(request, Unit) and not request.final:
            self.local_segment = True  # a Flush: the segment goes on, Sync is answered later
        elif self.unsynced:
            # The client's own extended messages before this read went up without a Sync:
            # its Sync goes up to end their implicit transaction, and answers the client.
            session.write_client(b"".join(parts))
            self.unsynced = False
            session.tracker.push(SYNC_ENTRY)
            session.send_upstream(last)
            return
        else:
            parts.append(codec.ready_for_query(session.tracker.status))
        session.write_client(b"".join(parts))

    def _relay_read(
        self, messages: list[bytes], request: Pending | Unit, capture: Capture | None
    ) -> None:
        """A miss (or no cache): send the held read upstream, capturing it if asked."""
        out: list[bytes] = []
        tracker = self.session.tracker
        if isinstance(request, Pending):
            request.capture = capture
            tracker.push(request)
            self._query_sent()
            out.extend(messages)
        else:
            for raw in messages:
                if raw[0] == FrontendTag.EXECUTE and request.max_rows and capture is not None:
                    # Ask for one row more, to know whether the result is whole.
                    capture.max_rows = request.max_rows
                    execute = codec.decode_execute(raw[5:])
                    body = execute.portal.encode() + b"\x00"
                    raw = codec.message(
                        FrontendTag.EXECUTE, body + (request.max_rows + 1).to_bytes(4, "big")
                    )
                before = len(tracker.pending)
                self._forward(raw[0], raw, out, planned=True)
                if capture is not None:
                    for pending in list(tracker.pending)[before:]:
                        if pending.request in (Request.DESCRIBE, Request.EXECUTE):
                            pending.capture = capture
        if capture is not None:
            self.captures.append(capture)
            self.session.capture_all(True)
        self._send(out)

    # --- upstream → client ---------------------------------------------------------------

    def observe(self, tag: int, payload: bytes, head: Pending | None) -> bytes | None:
        """A backend message for `head` (before the tracker accounts for it); returns what
        the client gets instead of it, or None to relay it as it is."""
        if head is not None and isinstance(head.capture, Capture):
            return head.capture.add(tag, payload)
        return None

    def ready(self) -> None:
        """ReadyForQuery: fill what was captured if the read ended cleanly outside a txn;
        end the marks due here that no commit ended (nothing committed: in the background)."""
        self._readies += 1
        leftover = self._due(self._readies)
        if leftover.tokens:
            database = self.session.database
            self.session.spawn(
                self._end_marks(self.service.invalidate(database, [], marked=leftover))
            )
        tracker = self.session.tracker
        if self.undeferring:  # those whose Parse failed or was skipped stay deferred
            self.undeferring = {
                p.name for p in tracker.pending if p.hidden and p.request is Request.PARSE
            }
        if tracker.status is TxnStatus.IDLE:
            self.client_portals.clear()  # portals end with their transaction
            self.virtual_portals.clear()
            if self.unknown and self.reread is None and not tracker.pending:
                self._start_reread()
        if not self.captures:
            self._decode_all_if_needed()
            return
        idle = self.session.tracker.status is TxnStatus.IDLE
        for capture in self.captures:
            if capture.ok and capture.complete and idle:
                self.service.fill(
                    capture.key, capture.plan.gen_keys, capture.gens, b"".join(capture.parts),
                    capture.plan.ttl_ms, capture.database, capture.plan.tables, capture.shape,
                )
                elapsed = time.perf_counter() - capture.started
                self.session.latency.miss(elapsed)
                if capture.shape is not None:
                    self.service.shapes.miss_latency(capture.shape, elapsed, capture.database)
            else:
                self.session.stats.fills_abandoned += 1
                self.service.abandon(capture.key)
        self.captures.clear()
        self._decode_all_if_needed()

    def _decode_all_if_needed(self, ending: Pending | None = None) -> None:
        """Back to header-only scanning once no capture and no hidden request (other than
        `ending`, whose last reply is being read) is in flight."""
        if not self.captures and not any(
            p.hidden and p is not ending for p in self.session.tracker.pending
        ):
            self.session.capture_all(False)

    # --- replies to the proxy's own requests and the session's state ---------------------

    def _apply_reread(self, reread: SettingsReread) -> bool:
        """Take what the session's backend said its state is (False: nothing usable)."""
        state = decode_reread(reread.row)
        if state is None:
            return False
        values, self.temporary = state
        reported = {name.lower() for name in self.session.parameters}
        self.session.settings.resync(values, reported, reread.at_start)
        return True

    def hidden_reply(self, head: Pending, tag: int, payload: bytes) -> bytes | None:
        """A backend message answering a request the proxy made (`head.hidden`): what the
        client gets instead of it (b"": nothing; None: the message itself)."""
        reread = head.capture
        if isinstance(reread, SettingsReread):
            if tag == BackendTag.DATA_ROW:
                reread.row = payload
            elif tag == BackendTag.ERROR_RESPONSE:
                reread.failed = True
            elif tag == BackendTag.READY_FOR_QUERY:
                self._reread_done(reread)
                self._decode_all_if_needed(ending=head)
            return b""
        if tag == BackendTag.ERROR_RESPONSE and head.capture is not _QUIET:
            return None  # it stands for the client's own request: the client learns why
        if tag == BackendTag.PARSE_COMPLETE:
            self.parse_confirmed(head.name)
        return b""

    def _start_reread(self) -> None:
        """Read the session's state back from its own backend, with a simple Query of the
        proxy's (hidden), while the client's next messages wait."""
        session = self.session
        tracker = session.tracker
        if self.unsynced or self.held is not None or not session.connected:
            return  # (at the next ReadyForQuery)
        unnamed = tracker.statements.get("")
        if unnamed is not None and "" not in self.deferred:
            # The Query destroys the unnamed statement: send it again before its next use.
            parse = codec.encode_parse("", unnamed.sql, unnamed.param_oids)
            self.deferred[""] = (parse, unnamed.sql, unnamed.param_oids)
        at_start, self._first_reread = self._first_reread, False
        self.reread = SettingsReread(at_start)
        self._hold([])
        sql, query = (STARTUP_SQL, _STARTUP_QUERY) if at_start else (REREAD_SQL, _REREAD_QUERY)
        self._push_hidden(Pending(Request.QUERY, sql=sql, hidden=True, capture=self.reread))
        session.send_upstream(query)

    def _reread_done(self, reread: SettingsReread) -> None:
        self.reread = None
        if not reread.failed and self._apply_reread(reread):
            self.unknown = False
        else:
            log.warning("conn=%d cannot read the session's state back; its reads will not "
                        "use the cache", self.session.id)
        asyncio.get_running_loop().call_soon(self._release, [])

    # --- writes ----------------------------------------------------------------------

    def completed(self, statement: StatementAnalysis | None, params: tuple[str | None, ...],
                  tag: bytes) -> Invalidate | None:
        """A statement completed (CommandComplete): collect its writes; at COMMIT, return
        the invalidation the session must await before the client sees this message."""
        session = self.session
        database = session.database
        if tag == b"COMMIT\x00":
            return self._flush_writes(self._commit_due(statement))
        txn = statement.transaction if statement is not None else None
        if tag == b"ROLLBACK\x00" and (txn is None or txn.command is not TxnCommand.ROLLBACK_TO):
            self.writes.clear()
            return None
        if tag == b"PREPARE TRANSACTION\x00" and txn is not None and txn.gid is not None:
            plans, self.writes = self.writes, []
            return Invalidate(database, tuple(plans), prepared=txn.gid)
        if txn is not None and txn.gid is not None and txn.command in (
            TxnCommand.COMMIT_PREPARED, TxnCommand.ROLLBACK_PREPARED
        ):
            return Invalidate(
                database,
                marked=self._due(self._commit_due(statement)),
                finished=txn.gid,
                committed=txn.command is TxnCommand.COMMIT_PREPARED,
            )
        if statement is None:
            self.writes.append(self._unknown_write())
            self.unknown = True
            return None
        if statement.creates_temp:
            self.temporary = True
            return None  # a session's own temporary objects change nobody's cached reads
        if statement.writes_unknown or statement.changes_session_unknown:
            # DO, CALL, EXECUTE, a volatile user function, set_config() of values the proxy
            # cannot read: what the session's settings and objects are now is read back.
            self.unknown = True
        for change in statement.session_changes:
            if change.action in ("discard_all", "discard_temp"):
                self.temporary = False
            elif change.action == "set" and change.value is None:
                self.unknown = True  # a value the proxy cannot read: read it back
            if change.action == "discard_all":  # (DISCARD PLANS keeps the statements)
                self.deferred.clear()
                self.client_statements.clear()
        if statement.kind is Kind.DEALLOCATE and statement.statement_name is None:
            self.deferred.clear()  # DEALLOCATE ALL
            self.client_statements.clear()
        if statement.kind is Kind.DEALLOCATE and statement.statement_name is not None:
            # Its tag is only "DEALLOCATE": forget the statement here, in every view.
            self.client_statements.pop(statement.statement_name, None)
            self.deferred.pop(statement.statement_name, None)
        if tag.startswith(_WRITE_TAGS) and not (
            statement.tables_written or statement.writes_unknown
        ):
            self.writes.append(self._unknown_write())  # Postgres says it wrote: trust that
        context = self._context()
        plan = plan_write(
            statement, context.namespace, context.catalog, self.service.policy, params
        )
        if plan is not None:
            self.writes.append(plan)
        return None

    async def _end_marks(self, invalidation: Awaitable[bool]) -> None:
        try:
            await invalidation
        except Exception:
            log.exception("conn=%d ending in-flight marks failed", self.session.id)

    def parse_confirmed(self, name: str) -> None:
        """The hidden ParseComplete of a deferred Parse: Postgres has the statement now."""
        self.deferred.pop(name, None)
        self.undeferring.discard(name)

    def close(self) -> None:
        """The session ends: release single-flight waiters of the misses it led."""
        for capture in self.captures:
            self.service.abandon(capture.key)
        self.captures.clear()

    def _unknown_write(self) -> WritePlan:
        ns = self._context().namespace
        return whole_database(ns, "UNKNOWN")

    def transaction_ended(self, committed: bool) -> Invalidate | None:
        """ReadyForQuery with status I: an implicit transaction committed or rolled back."""
        if not committed:
            self.writes.clear()
            return None  # (its marks are ended by `ready`)
        return self._flush_writes(self._readies + 1)

    def _flush_writes(self, due: int) -> Invalidate | None:
        """The invalidation of the collected writes, ending the marks due by `due`."""
        marked = self._due(due)
        if not self.writes and not marked.tokens:
            return None
        plans, self.writes = self.writes, []
        return Invalidate(self.session.database, tuple(plans), marked)

    async def settle(self, work: Invalidate) -> None:
        """Write `work` (the session holds the client's message meanwhile)."""
        await self.service.settle(work)

    # --- in-flight marks -----------------------------------------------------------------

    def _mark_first(self, pending: Pending, raw: bytes, out: list[bytes]) -> bool:
        """Before a message that may commit writes goes upstream: hold it, and what follows,
        until what its commit will bump is marked in flight (True: held)."""
        if not self.service.available:
            return False  # nothing is served until the backend heals (an epoch bump)
        keys, gids = self._to_mark(pending)
        if not keys and not gids:
            return False
        tracker = self.session.tracker
        due = self._readies + 1 + sum(
            1 for p in tracker.pending if p.request in _READIES and not p.hidden
        )  # (the ReadyForQuery of the proxy's own hidden Query is not counted)
        self._hold(out)
        self.session.spawn(self._mark(pending, raw, keys, gids, due))
        return True

    def _to_mark(self, pending: Pending) -> tuple[set[str], list[str]]:
        """The counters to mark before `pending` goes upstream, and the 2PC gids it commits.

        Writes outside an explicit transaction block commit with their statement (or at the
        Sync / end of Query after it); inside one (known when no ReadyForQuery is due)
        they are marked at COMMIT, with what was collected and what is still in flight."""
        tracker = self.session.tracker
        # The status is that of the last ReadyForQuery: current unless another is due.
        settled = not any(p.request in _READIES for p in tracker.pending)
        in_block = tracker.status is not TxnStatus.IDLE and settled
        if in_block and tracker.status is TxnStatus.IN_FAILED_TRANSACTION:
            return set(), []  # its COMMIT can only roll back
        context = self._context()
        analysis = pending.analysis
        if pending.request is Request.FUNCTION_CALL or not isinstance(analysis, Analysis):
            return (set() if in_block else {context.namespace.epoch}), []
        keys: set[str] = set()
        gids: list[str] = []
        commits = False
        for statement in analysis.statements:
            txn = statement.transaction
            if txn is not None and txn.command is TxnCommand.COMMIT:
                commits = True
            elif txn is not None and txn.command is TxnCommand.COMMIT_PREPARED and txn.gid:
                gids.append(txn.gid)
            else:
                keys |= self._bumps(statement, pending.params, context)
        if commits:
            keys.update(*(plan.bumps for plan in self.writes))
            for other in tracker.pending:
                if other.request in _STATEMENTS:
                    keys |= self._predicted(other, context)
        elif in_block:
            keys.clear()
        return keys, gids

    def _predicted(self, pending: Pending, context: DatabaseContext) -> frozenset[str]:
        """What a statement still in flight may bump (unknown: the database)."""
        analysis = pending.analysis
        if not isinstance(analysis, Analysis):
            return frozenset({context.namespace.epoch})
        return frozenset().union(
            *(self._bumps(s, pending.params, context) for s in analysis.statements)
        )

    def _bumps(
        self,
        statement: StatementAnalysis,
        params: tuple[str | None, ...],
        context: DatabaseContext,
    ) -> frozenset[str]:
        plan = plan_write(statement, context.namespace, context.catalog, self.service.policy,
                          params)
        if plan is None and statement.kind in _WRITE_KINDS:
            return frozenset({context.namespace.epoch})  # Postgres may say it wrote
        return plan.bumps if plan is not None else frozenset()

    async def _mark(
        self, pending: Pending, raw: bytes, keys: set[str], gids: list[str], due: int
    ) -> None:
        marked = Marked()
        try:
            if keys:
                marked = await self.service.mark(keys)
            for gid in gids:
                marked += await self.service.mark_prepared(self.session.database, gid)
        except Exception:  # the cache never fails a query
            log.exception("conn=%d in-flight mark failed", self.session.id)
        finally:
            self.marks.append((due, marked))
            if self.session.connected:
                self.session.tracker.push(pending)
                self.session.send_upstream(raw)
            self._release([])

    def _due(self, due: int) -> Marked:
        """Take the marks due by ReadyForQuery number `due`."""
        taken = Marked()
        kept: list[tuple[int, Marked]] = []
        for when, marked in self.marks:
            if when <= due:
                taken += marked
            else:
                kept.append((when, marked))
        self.marks = kept
        return taken

    def _commit_due(self, statement: StatementAnalysis | None) -> int:
        """Which marks a COMMIT's CommandComplete ends: those of earlier ReadyForQuery
        groups, and its own group's when nothing of that group follows the COMMIT (else
        that group's ReadyForQuery ends them)."""
        pending = self.session.tracker.pending
        head = pending[0] if pending else None
        if head is not None and head.request is Request.QUERY:
            analysis = head.analysis
            last = not isinstance(analysis, Analysis) or analysis.statements[-1] is statement
        else:
            last = len(pending) < 2 or pending[1].request is Request.SYNC
        return self._readies + (1 if last else 0)

    # --- session facts -----------------------------------------------------------------

    def _eligible(self) -> str | None:
        """None if a read may use the cache now, else the bypass reason (`eligibility`)."""
        return bypass(self._facts())

    def _facts(self) -> SessionFacts:
        """What `cache.eligibility` needs to know of this session now."""
        session = self.session
        tracker = session.tracker
        return SessionFacts(
            in_transaction=tracker.status is not TxnStatus.IDLE,
            awaiting_replies=not tracker.idle(),
            skipping=tracker.skipping,
            capturing=bool(self.captures),
            executed=self.executed,
            invalidating=session.invalidating,
            state_unknown=self.unknown,
            rereading=self.reread is not None,
            temporary=self.temporary,
            client_encoding=session.parameters.get("client_encoding", CACHED_ENCODING),
            replication_behind=not self.service.fresh(session.database),
        )

    def _context(self) -> DatabaseContext:
        return self.service.context(self.session.database)

    def options(self) -> AnalyzerOptions:
        """The analyzer options for this session's database and settings."""
        return self._options(self._context())

    def _options(self, context: DatabaseContext) -> AnalyzerOptions:
        if self.session.parameters.get("standard_conforming_strings", "on") == "off":
            return dataclasses.replace(context.options, standard_conforming_strings=False)
        return context.options

    def _settings(self) -> bytes:
        settings = self.session.settings
        if self._digest[0] != settings.version:
            self._digest = (settings.version, settings_digest(settings.effective()))
            self._keys.clear()
            self._prefixes.clear()
        return self._digest[1]


def shape_name(analysis: Analysis) -> str:
    """What a read is counted under in `/stats`: its sqlcommenter name, else its
    fingerprint (memoised by text; computed only here, on the cache path)."""
    return analysis.query_name or analysis.fingerprint or _UNPARSED


def _uses_params(analysis: StatementAnalysis) -> bool:
    """Whether the read's plan depends on its bound parameters (a scope pinned to `$n`)."""
    return any(
        value.param is not None
        for columns in analysis.scope.pinned.values()
        for value in columns.values()
    )


def _text_params(bind: codec.Bind) -> tuple[str | None, ...]:
    """Bound parameters as text where they were sent as text (None otherwise)."""
    formats = bind.param_formats
    out: list[str | None] = []
    for index, value in enumerate(bind.params):
        fmt = formats[0] if len(formats) == 1 else (formats[index] if formats else 0)
        out.append(value.decode("utf-8", "replace") if value is not None and fmt == 0 else None)
    return tuple(out)



