"""What the SQL text does not show: the catalog facts invalidation and cacheability need.

Theory of operation.  `load_catalog` reads, in one simple Query inside one REPEATABLE READ
READ ONLY transaction (so all answers come from one snapshot), every relation of the
non-system schemas with its kind, persistence and RLS flag; the relations each view and
materialized view reads (``pg_rewrite`` ``_RETURN`` rules joined to ``pg_depend``); the
user functions a view calls; ``pg_inherits``; foreign keys; enabled user triggers; rules;
the volatility of every user function; and each view's definition.  The answers are kept in
an immutable `Catalog`, indexed by OID internally and queried by *name*.

Names.  The analyzer reports relations as written (``agents``, ``public.agents``, quoted
names keeping their case).  The catalog indexes every relation under its bare name and
under ``schema.name``; a bare name present in several schemas resolves to all of them (the
union over-invalidates, which is safe).  Results are **bare table names**, because the
cache keys generations by bare name.  A name that resolves to nothing (a temporary table,
a system catalog, something created after the load) is *unknown*: never cacheable, and a
write to it has unknown reach.

Direction (partitions and inheritance): **writes fan out, reads stay put.**
`read_dependencies(T)` is T plus, for views, everything they read (recursively; a
materialized view counts as itself and as what it reads).  `write_targets(T)` is the set
of tables whose rows the write may change -- T, every descendant of T (an UPDATE/DELETE/
TRUNCATE on a parent without ONLY touches children; an INSERT into a partitioned table
lands in a partition), the base tables of a view written through, FK action targets --
closed under those rules, plus every *ancestor* of those tables (a parent's result includes
its children's rows).  So a read of a parent is invalidated by a write to a partition
(the write bumps the parent) and a read of a partition is invalidated by a write to its
parent (the write bumps the partitions), while a read only ever fetches the generations of
the names it mentions.  Siblings are not bumped by a write to one partition.

Unknown reach: when any table whose rows a write may change has an enabled user trigger
(any ``tgenabled`` but ``D``: ``R``/``A`` triggers fire under session_replication_role)
or a rewrite rule other than ``_RETURN``, or when a written name is unknown, the write's
reach is unknown and the caller bumps the whole database.  Tables inherit this from their
ancestors too (row triggers on a partitioned table are cloned to its partitions).

`CatalogCache` keeps one `Catalog` per database, loads it in the background on first use
(single flight), never blocks `get`, and discards a load that raced with `invalidate`.

The port.  This module asks its questions through `CatalogConnection` ("run this simple
Query on the database you are connected to") and opens connections through a
`CatalogSource`; the proxy implements both with its own client (`proxy.pgclient`), so the
cache layer knows no protocol and imports nothing from `proxy/`.  `PgError`, `Result` and
`Row` are the port's vocabulary: what an answer and a failure look like.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

# --- the port: what the catalog needs from a Postgres connection ------------------------

Row = tuple[str | None, ...]


class PgError(Exception):
    """An error reported by the server (ErrorResponse) or detected by the client."""

    def __init__(self, sqlstate: str, message: str, fields: Mapping[str, str] | None = None):
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate
        self.message = message
        self.fields: Mapping[str, str] = dict(fields or {})

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> PgError:
        return cls(fields.get("C", "XX000"), fields.get("M", "unknown error"), fields)


@dataclass(frozen=True, slots=True)
class Result:
    """One statement's outcome within a simple Query: its command tag and rows (text)."""

    tag: str
    rows: tuple[Row, ...]


class CatalogConnection(Protocol):
    """One connection to one database that runs simple Queries (`proxy.pgclient.PgClient`).

    `execute` and `query` raise `PgError`; after a failure that left the connection in an
    unknown state `closed` is True.
    """

    @property
    def closed(self) -> bool: ...

    @property
    def in_transaction(self) -> bool: ...

    async def execute(self, sql: str) -> list[Result]: ...

    async def query(self, sql: str) -> list[Row]: ...

    async def close(self) -> None: ...


class CatalogSource(Protocol):
    """Opens catalog connections (`proxy.pgclient.CatalogLogin`): raises `PgError`."""

    async def connect(self, database: str) -> CatalogConnection: ...


SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")

_SCHEMA_FILTER = (
    "n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') "
    "and n.nspname !~ '^pg_(toast_)?temp_'"
)

#: The statements of one load, sent as one simple Query (one round trip, one snapshot).
LOAD_SQL = f"""\
begin isolation level repeatable read read only;
set local search_path = pg_catalog;
select c.oid, n.nspname, c.relname, c.relkind, c.relpersistence, c.relrowsecurity
  from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where c.relkind not in ('i', 'I', 't') and {_SCHEMA_FILTER};
select distinct r.ev_class, d.refobjid
  from pg_catalog.pg_rewrite r
  join pg_catalog.pg_depend d on d.objid = r.oid
   and d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
   and d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
 where r.rulename = '_RETURN' and d.refobjid <> r.ev_class;
select distinct r.ev_class, p.provolatile
  from pg_catalog.pg_rewrite r
  join pg_catalog.pg_depend d on d.objid = r.oid
   and d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
   and d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
  join pg_catalog.pg_proc p on p.oid = d.refobjid
 where r.rulename = '_RETURN';
select inhrelid, inhparent from pg_catalog.pg_inherits;
select conrelid, confrelid, confdeltype, confupdtype
  from pg_catalog.pg_constraint where contype = 'f';
select distinct tgrelid from pg_catalog.pg_trigger where not tgisinternal and tgenabled <> 'D';
select distinct ev_class from pg_catalog.pg_rewrite where rulename <> '_RETURN';
select n.nspname, p.proname, p.provolatile
  from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
 where {_SCHEMA_FILTER};
select c.oid, pg_catalog.pg_get_viewdef(c.oid)
  from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where c.relkind in ('v', 'm') and {_SCHEMA_FILTER};
commit"""

#: FK actions that write the referencing table: CASCADE, SET NULL, SET DEFAULT.
_WRITING_ACTIONS = frozenset("cnd")
_VOLATILITY_RANK = {"i": 0, "s": 1, "v": 2}
_MEMO_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Relation:
    """One pg_class row of a non-system schema."""

    oid: int
    schema: str
    name: str
    kind: str  # relkind: r table, p partitioned, v view, m matview, f foreign, S sequence, c
    persistence: str  # p permanent, u unlogged, t temporary
    row_security: bool

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


def _least_safe(a: str | None, b: str) -> str:
    if a is None:
        return b
    return a if _VOLATILITY_RANK.get(a, 2) >= _VOLATILITY_RANK.get(b, 2) else b


def _closure(start: Iterable[int], edges: Mapping[int, frozenset[int]]) -> set[int]:
    """Everything reachable from `start` over `edges`, `start` included."""
    seen = set(start)
    stack = list(seen)
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _bare(name: str) -> str:
    return name.rpartition(".")[2]


@dataclass(frozen=True, slots=True, eq=False)
class Catalog:
    """An immutable snapshot of one database's catalog; see the module docstring."""

    relations: Mapping[int, Relation]
    by_name: Mapping[str, frozenset[int]]
    view_reads: Mapping[int, frozenset[int]]  # view/matview oid -> oids it reads directly
    view_volatility: Mapping[int, str]  # view oid -> least safe user function it calls
    view_sql: Mapping[int, str]
    view_reasons: Mapping[int, str]  # view oid -> why `view_check` refused its definition
    parents: Mapping[int, frozenset[int]]
    children: Mapping[int, frozenset[int]]
    fk_action_children: Mapping[int, frozenset[int]]  # referenced -> referencing (c/n/d)
    fk_children: Mapping[int, frozenset[int]]  # referenced -> referencing (any action)
    triggers: frozenset[int]
    rules: frozenset[int]
    functions: Mapping[str, str]  # bare and schema.name -> least safe provolatile
    loaded_at: float = field(default_factory=time.monotonic)
    _memo: dict[tuple[object, ...], object] = field(default_factory=dict, repr=False)

    # --- name resolution -------------------------------------------------------------

    def resolve(self, name: str) -> frozenset[int]:
        """OIDs of the relations `name` may denote (bare: every schema); empty if unknown.

        ``a.b.c`` (database.schema.table) falls back to ``b.c``.
        """
        found = self.by_name.get(name)
        if found is not None:
            return found
        parts = name.split(".")
        if len(parts) > 2:
            return self.by_name.get(".".join(parts[-2:]), frozenset())
        return frozenset()

    def lookup(self, name: str) -> tuple[Relation, ...]:
        """The relations `name` may denote, ordered by schema."""
        return tuple(
            sorted((self.relations[o] for o in self.resolve(name)), key=lambda r: r.schema)
        )

    def _names(self, oids: Iterable[int]) -> frozenset[str]:
        return frozenset(self.relations[o].name for o in oids if o in self.relations)

    def _any(self, name: str, test: Callable[[Relation], bool]) -> bool:
        return any(test(self.relations[o]) for o in self.resolve(name))

    # --- single-relation questions --------------------------------------------------

    def is_sequence(self, name: str) -> bool:
        return self._any(name, lambda r: r.kind == "S")

    def is_foreign(self, name: str) -> bool:
        return self._any(name, lambda r: r.kind == "f")

    def is_unlogged(self, name: str) -> bool:
        return self._any(name, lambda r: r.persistence == "u")

    def has_rls(self, name: str) -> bool:
        return self._any(name, lambda r: r.row_security)

    def is_view(self, name: str) -> bool:
        """A view or a materialized view."""
        return self._any(name, lambda r: r.kind in "vm")

    def has_user_triggers(self, name: str) -> bool:
        """An enabled, non-internal trigger (not FK machinery) on the relation itself."""
        return any(o in self.triggers for o in self.resolve(name))

    def has_rules(self, name: str) -> bool:
        """A rewrite rule other than a view's ``_RETURN``."""
        return any(o in self.rules for o in self.resolve(name))

    def view_definition(self, name: str) -> str | None:
        """``pg_get_viewdef`` of a view (first match), for the analyzer to inspect."""
        for oid in sorted(self.resolve(name)):
            if oid in self.view_sql:
                return self.view_sql[oid]
        return None

    def function_volatility(self, name: str) -> str | None:
        """'i' | 's' | 'v' of a user function (bare or ``schema.name``); least safe
        overload wins; None when no user function has that name."""
        return self.functions.get(name)

    # --- graph questions (bare names out) ------------------------------------------

    def base_tables(self, name: str) -> frozenset[str]:
        """The stored relations a view reads, recursively through views (a materialized
        view is both stored and expanded); for a table, the table itself."""
        reached = _closure(self.resolve(name), self.view_reads)
        return self._names(
            o for o in reached if o in self.relations and self.relations[o].kind != "v"
        )

    def ancestors(self, name: str) -> frozenset[str]:
        """Parents over pg_inherits, transitively (partitions and inheritance children)."""
        start = self.resolve(name)
        return self._names(_closure(start, self.parents) - start)

    def descendants(self, name: str) -> frozenset[str]:
        """Children over pg_inherits, transitively."""
        start = self.resolve(name)
        return self._names(_closure(start, self.children) - start)

    def cascade_targets(self, name: str) -> frozenset[str]:
        """Tables written by FK actions (CASCADE, SET NULL, SET DEFAULT) when `name` is
        written, transitively; RESTRICT / NO ACTION do not write and do not count."""
        start = self.resolve(name)
        reached = set()
        for oid in start:
            reached |= _closure(self.fk_action_children.get(oid, ()), self.fk_action_children)
        return self._names(reached)

    # --- what the proxy asks per statement -----------------------------------------

    def _read_oids(self, oids: Iterable[int]) -> set[int]:
        return _closure(oids, self.view_reads)

    def read_dependencies(self, tables: Iterable[str]) -> frozenset[str]:
        """Bare names whose generations a read of `tables` must depend on.

        The names themselves (unknown ones too, as their bare name) and everything views
        among them read, recursively.  Not descendants: writes to children bump their
        ancestors (see the module docstring).
        """
        key = ("read", frozenset(tables))
        cached = self._memo.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        names = {_bare(t) for t in key[1]}
        oids: set[int] = set()
        for t in key[1]:
            oids |= self.resolve(t)
        result = frozenset(names | self._names(self._read_oids(oids)))
        self._remember(key, result)
        return result

    def write_targets(
        self, tables: Iterable[str], *, truncate_cascade: bool = False
    ) -> tuple[frozenset[str], bool]:
        """(bare names whose generations a write to `tables` must bump, unknown_reach).

        Written rows: the tables, the base tables of views written through, descendants,
        FK action targets (with ``truncate_cascade``: every referencing table, whatever
        its action), closed under those rules; then every ancestor of a written table.
        `unknown_reach` is True when a written name is unknown or any involved table (or
        its ancestor) has a user trigger or rule: the caller then bumps the database.
        """
        key = ("write", frozenset(tables), truncate_cascade)
        cached = self._memo.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        names = {_bare(t) for t in key[1]}
        unknown = False
        start: set[int] = set()
        for t in key[1]:
            found = self.resolve(t)
            unknown = unknown or not found
            start |= found
        fk = self.fk_children if truncate_cascade else self.fk_action_children
        written = set(start)
        stack = list(start)
        while stack:
            oid = stack.pop()
            nxt: set[int] = set(self.children.get(oid, ()))
            nxt |= fk.get(oid, frozenset())
            rel = self.relations.get(oid)
            if rel is not None and rel.kind == "v":  # written through: its base relations
                nxt |= self.view_reads.get(oid, frozenset())
            for o in nxt - written:
                written.add(o)
                stack.append(o)
        affected = _closure(written, self.parents)
        unknown = unknown or any(o in self.triggers or o in self.rules for o in affected)
        result = (frozenset(names | self._names(affected)), unknown)
        self._remember(key, result)
        return result

    def cacheable_relations(self, tables: Iterable[str], *, allow_rls: bool = False) -> str | None:
        """Why a read of `tables` must not be cached, or None if the relations allow it.

        Checks every relation the read reaches: views expanded, and descendants of the
        relations reached (a parent's result includes its children's rows).
        """
        key = ("cacheable", frozenset(tables), allow_rls)
        if key in self._memo:
            return self._memo[key]  # type: ignore[return-value]
        result = self._not_cacheable(key[1], allow_rls)
        self._remember(key, result)
        return result

    def _not_cacheable(self, tables: frozenset[str], allow_rls: bool) -> str | None:
        oids: set[int] = set()
        for t in sorted(tables):
            found = self.resolve(t)
            if not found:
                return f"relation {t!r} is not in the catalog (temporary, system or new)"
            oids |= found
        reached = _closure(_closure(oids, self.view_reads), self.children)
        reached = _closure(reached, self.view_reads)
        for oid in sorted(reached):
            rel = self.relations.get(oid)
            if rel is None:
                return "a view reads a system catalog or a relation outside the catalog"
            what = rel.qualified
            if rel.kind == "S":
                return f"{what} is a sequence"
            if rel.kind == "f":
                return f"{what} is a foreign table"
            if rel.kind not in "rpvm":
                return f"{what} has relkind {rel.kind!r}"
            if rel.persistence == "u":
                return f"{what} is unlogged"
            if rel.persistence == "t":
                return f"{what} is temporary"
            if rel.row_security and not allow_rls:
                return f"{what} has row-level security"
            volatility = self.view_volatility.get(oid)
            if volatility is not None and volatility != "i":
                return f"view {what} calls a non-immutable user function"
            if oid in self.view_reasons:
                return f"view {what}: {self.view_reasons[oid]}"
        return None

    def _remember(self, key: tuple[object, ...], value: object) -> None:
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = value


# --- loading ---------------------------------------------------------------------------


def _group(pairs: Iterable[tuple[int, int]]) -> dict[int, frozenset[int]]:
    out: dict[int, set[int]] = {}
    for a, b in pairs:
        out.setdefault(a, set()).add(b)
    return {k: frozenset(v) for k, v in out.items()}


def _int(value: str | None) -> int:
    if value is None:
        raise PgError("XX000", "unexpected NULL in a catalog answer")
    return int(value)


def _text(value: str | None) -> str:
    if value is None:
        raise PgError("XX000", "unexpected NULL in a catalog answer")
    return value


VolatilityLookup = Callable[[str], str | None]
ViewCheck = Callable[[str, VolatilityLookup], str | None]


async def load_catalog(
    client: CatalogConnection, view_check: ViewCheck | None = None
) -> Catalog:
    """Read the catalog of the database `client` is connected to (one round trip).

    `view_check(definition, function_volatility)` -- typically the analyzer run on
    ``pg_get_viewdef`` with the user functions' volatility -- returns why a view's own text
    is not cacheable (built-in volatile or stable functions such as ``now()``, system
    catalogs: pg_depend records neither, because pinned objects have no entries) or None;
    its answers become `cacheable_relations` reasons.  The definitions are printed with
    ``search_path = pg_catalog``, so every user relation and function in them is
    schema-qualified.
    """
    try:
        results = await client.execute(LOAD_SQL)
    except PgError:
        if not client.closed and client.in_transaction:
            with contextlib.suppress(PgError):
                await client.query("rollback")
        raise
    if len(results) != 12:
        raise PgError("XX000", f"catalog load returned {len(results)} results, expected 12")
    (_, _, rels, view_deps, view_funcs, inherits, fks, trigs, rules, funcs, views, _) = results

    relations: dict[int, Relation] = {}
    by_name: dict[str, set[int]] = {}
    for oid_s, schema_s, name_s, kind, persistence, rls in rels.rows:
        oid, schema, name = _int(oid_s), _text(schema_s), _text(name_s)
        relations[oid] = Relation(oid, schema, name, _text(kind), _text(persistence), rls == "t")
        by_name.setdefault(name, set()).add(oid)
        by_name.setdefault(f"{schema}.{name}", set()).add(oid)

    view_volatility: dict[int, str] = {}
    for view_s, volatility in view_funcs.rows:
        view = _int(view_s)
        view_volatility[view] = _least_safe(view_volatility.get(view), _text(volatility))

    functions: dict[str, str] = {}
    for schema_s, name_s, volatility in funcs.rows:
        for key in (_text(name_s), f"{_text(schema_s)}.{_text(name_s)}"):
            functions[key] = _least_safe(functions.get(key), _text(volatility))

    fk_action: list[tuple[int, int]] = []
    fk_any: list[tuple[int, int]] = []
    for child, parent, on_delete, on_update in fks.rows:
        pair = (_int(parent), _int(child))
        fk_any.append(pair)
        if on_delete in _WRITING_ACTIONS or on_update in _WRITING_ACTIONS:
            fk_action.append(pair)

    view_sql = {_int(o): _text(d) for o, d in views.rows}
    view_reasons: dict[int, str] = {}
    if view_check is not None:
        for oid, definition in view_sql.items():
            reason = view_check(definition, functions.get)
            if reason is not None:
                view_reasons[oid] = reason

    inherit_pairs = [(_int(c), _int(p)) for c, p in inherits.rows]
    return Catalog(
        relations=relations,
        by_name={k: frozenset(v) for k, v in by_name.items()},
        view_reads=_group((_int(v), _int(r)) for v, r in view_deps.rows),
        view_volatility=view_volatility,
        view_sql=view_sql,
        view_reasons=view_reasons,
        parents=_group(inherit_pairs),
        children=_group((p, c) for c, p in inherit_pairs),
        fk_action_children=_group(fk_action),
        fk_children=_group(fk_any),
        triggers=frozenset(_int(r[0]) for r in trigs.rows),
        rules=frozenset(_int(r[0]) for r in rules.rows),
        functions=functions,
    )


# --- one catalog per database ----------------------------------------------------------

Connect = Callable[[str], Awaitable[CatalogConnection]]  # e.g. `CatalogSource.connect`
Loader = Callable[[CatalogConnection], Awaitable[Catalog]]


class CatalogCache:
    """One `Catalog` per database, loaded lazily in the background.

    `get` never blocks: it returns the loaded catalog, or None (and starts a load) when
    there is none yet, the last one was invalidated, or a load failed less than
    `retry_after` seconds ago.  `load` waits for the (shared) load.  `invalidate` drops
    the catalog and makes an in-flight load's result count as stale: a load keeps the
    result only if no invalidation happened since it started, else it reloads (up to
    `max_attempts` times, then gives up until the next `get`).  With `max_age`, an older
    catalog is still returned while a fresh one loads in the background.
    """

    def __init__(
        self,
        connect: Connect,
        *,
        loader: Loader = load_catalog,
        retry_after: float = 1.0,
        max_age: float | None = None,
        max_attempts: int = 3,
    ) -> None:
        self._connect = connect
        self._loader = loader
        self._retry_after = retry_after
        self._max_age = max_age
        self._max_attempts = max_attempts
        self._catalogs: dict[str, Catalog] = {}
        self._generation: dict[str, int] = {}
        self._loading: dict[str, asyncio.Task[Catalog | None]] = {}
        self._failed_at: dict[str, float] = {}
        self._clients: dict[str, CatalogConnection] = {}
        self.loads = 0  # completed loads, for metrics and tests

    def get(self, database: str) -> Catalog | None:
        """The catalog if loaded (starting a load if needed); never waits."""
        catalog = self._catalogs.get(database)
        now = time.monotonic()
        if catalog is None or (
            self._max_age is not None and now - catalog.loaded_at > self._max_age
        ):
            failed = self._failed_at.get(database)
            if failed is None or now - failed >= self._retry_after:
                self._start(database)
        return catalog

    async def load(self, database: str) -> Catalog | None:
        """Wait for a catalog (starting a load if none is running); None if it failed."""
        catalog = self._catalogs.get(database)
        if catalog is not None:
            return catalog
        return await asyncio.shield(self._start(database))

    def invalidate(self, database: str | None = None) -> None:
        """Forget `database`'s catalog (all with None), e.g. after DDL committed."""
        targets = list(self._generation) if database is None else [database]
        for db in targets:
            self._generation[db] = self._generation.get(db, 0) + 1
            self._catalogs.pop(db, None)
            self._failed_at.pop(db, None)

    async def aclose(self) -> None:
        """Cancel loads and close the catalog connections."""
        tasks = list(self._loading.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in list(self._clients.values()):
            await client.close()
        self._clients.clear()

    def _start(self, database: str) -> asyncio.Task[Catalog | None]:
        task = self._loading.get(database)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._run(database))
            self._loading[database] = task
        return task

    async def _run(self, database: str) -> Catalog | None:
        try:
            for _ in range(self._max_attempts):
                generation = self._generation.setdefault(database, 0)
                try:
                    catalog = await self._load_once(database)
                except Exception as exc:
                    log.warning("catalog load for database %r failed: %s", database, exc)
                    self._failed_at[database] = time.monotonic()
                    return None
                if self._generation.get(database) == generation:
                    self._catalogs[database] = catalog
                    self._failed_at.pop(database, None)
                    self.loads += 1
                    return catalog
                # invalidated while loading: this snapshot may predate the DDL
            return None
        finally:
            self._loading.pop(database, None)

    async def _load_once(self, database: str) -> Catalog:
        client = self._clients.get(database)
        if client is not None and not client.closed:
            try:
                return await self._loader(client)
            except PgError:
                if not client.closed:
                    raise
                # the kept connection went away (server restart, idle kill): reconnect once
        self._clients.pop(database, None)
        client = await self._connect(database)
        self._clients[database] = client
        try:
            return await self._loader(client)
        finally:
            if client.closed:
                self._clients.pop(database, None)
