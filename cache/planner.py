"""The planner: may this read be served or filled, and what must this write invalidate?

Theory of operation.  The session hands the planner the analyzer's verdict on a statement,
the facts of the session (transaction status, whether its settings are fully known), the
database's catalog (what the SQL text does not show), the configuration and the bound
parameters.  It answers with a `ReadPlan` (the generation counters the result depends on,
its TTL, its shape name) or a bypass reason, and for writes with a `WritePlan` (the counters
a commit must bump).  Every rule "when in doubt, don't cache / invalidate more" lives here;
the shell only executes plans.

Pure: no I/O.  The catalog is reached through the small `CatalogView` protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from analyzer import Kind, StatementAnalysis
from cache.keys import Namespace, bare, read_generations, write_generations


class Bypass(StrEnum):
    """Why a read is forwarded instead of served from (or stored in) the cache.

    The analyzer's own reasons (`analyzer.Reason`) are reported as they are; these are the
    ones only the session, the catalog or the configuration can know.
    """

    IN_TRANSACTION = "in_transaction"
    SESSION_STATE = "session_state"  # temporary objects, a client_encoding other than UTF8
    SESSION_STATE_UNKNOWN = "session_state_unknown"  # changed out of sight: being read back
    CACHE_UNAVAILABLE = "cache_unavailable"
    CATALOG_UNKNOWN = "catalog_unknown"
    RELATION_KIND = "relation_kind"  # sequence, foreign, unlogged, RLS, unknown relation
    EXCLUDED_TABLE = "excluded_table"
    REQUEST_SHAPE = "request_shape"  # a pipeline mixing cacheable and other requests
    REPLICATION_BEHIND = "replication_behind"  # the stream's reader may be behind (fence)


class CatalogView(Protocol):
    """What the planner needs from one database's catalog (see `cache.catalog`)."""

    def read_dependencies(self, tables: Iterable[str]) -> frozenset[str]: ...

    def write_targets(self, tables: Iterable[str]) -> tuple[frozenset[str], bool]: ...

    def cacheable_relations(self, tables: Iterable[str]) -> str | None: ...


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The configuration the planner applies (from `cache` and `relations`)."""

    default_ttl: int = 60
    ttl: Mapping[str, int] | None = None
    exclude: frozenset[str] = frozenset()
    scope_columns: tuple[str, ...] = ("organization_id",)
    relations: Mapping[str, tuple[str, ...]] | None = None
    use_catalog: bool = True  # False: no catalog connection configured (see plan_read)


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """A cacheable read: the counters it depends on, its TTL and its shape name."""

    gen_keys: tuple[str, ...]
    ttl_ms: int
    tables: frozenset[str]  # bare names of every table the result depends on


@dataclass(frozen=True, slots=True)
class WritePlan:
    """What one successful write statement must invalidate when its transaction commits."""

    bumps: frozenset[str]
    table: str  # the (bare) table written first, "*" for a whole-database invalidation
    tables: frozenset[str]  # bare names of every table invalidated
    operation: str
    scope: str | None  # the value of the first scope column the write is confined to
    whole_database: bool = False
    catalog_changed: bool = False  # DDL (or what may run DDL): reload the catalog
    catalog_id: int = 0  # id() of the catalog the plan was made with (0: none)


def plan_read(
    analysis: StatementAnalysis,
    ns: Namespace,
    catalog: CatalogView | None,
    policy: CachePolicy,
    params: Sequence[str | None] = (),
) -> ReadPlan | str:
    """A `ReadPlan`, or the reason (a `Bypass` or analyzer `Reason` value) not to cache.

    Without a catalog connection configured (`policy.use_catalog` False) a read depends on
    the tables it names only; that is safe because every write then invalidates the whole
    database (`plan_write` with no catalog).  With one configured but not loaded (yet), reads
    are not cached: an entry filled without the view/partition graph would not be reached by
    the table-level bumps that writes make once the catalog is there.
    """
    if not analysis.cacheable:
        return str(analysis.reason)
    tables = analysis.tables_read
    bare_tables = frozenset(bare(t) for t in tables)
    if bare_tables & policy.exclude:
        return Bypass.EXCLUDED_TABLE
    if catalog is None:
        if policy.use_catalog:
            return Bypass.CATALOG_UNKNOWN
        dependencies = bare_tables
    else:
        if catalog.cacheable_relations(tables) is not None:
            return Bypass.RELATION_KIND
        dependencies = catalog.read_dependencies(tables)
    if dependencies & policy.exclude:
        return Bypass.EXCLUDED_TABLE
    pinned = _pinned(analysis, params, policy.scope_columns, dependencies, catalog)
    gen_keys = read_generations(ns, dependencies, pinned)
    return ReadPlan(tuple(gen_keys), _ttl(policy, dependencies) * 1000, dependencies)


def _pinned(
    analysis: StatementAnalysis,
    params: Sequence[str | None],
    scope_columns: Sequence[str],
    dependencies: frozenset[str],
    catalog: CatalogView | None,
) -> dict[str, dict[str, str]]:
    """Scope values pinned per (bare) base table.

    A table is pinned only where every row the read can see of it is pinned: not when it
    is read under a second spelling (`t` and `public.t`, or `s1.t` and `s2.t`: counters are
    per bare name), nor when another relation read (a view) also reads it, nor for a view
    itself (its base tables are read unscoped).
    """
    spellings: dict[str, int] = {}
    for table in analysis.tables_read:
        spellings[bare(table)] = spellings.get(bare(table), 0) + 1
    pinned: dict[str, dict[str, str]] = {}
    for table, columns in analysis.scope.pinned.items():
        name = bare(table)
        if name not in dependencies or spellings.get(name, 0) != 1:
            continue
        others = [t for t in analysis.tables_read if t != table]
        if catalog is not None and others and name in catalog.read_dependencies(others):
            continue  # also read, unpinned, through a view
        values: dict[str, str] = {}
        for column, key_value in columns.items():
            if column in scope_columns:
                value = key_value.resolve(params)
                if value is not None:
                    values[column] = value
        if values:
            pinned[name] = values
    return pinned


def _ttl(policy: CachePolicy, tables: Iterable[str]) -> int:
    ttls = [policy.ttl[t] for t in tables if policy.ttl and t in policy.ttl]
    return min(ttls, default=policy.default_ttl)


def plan_write(
    analysis: StatementAnalysis,
    ns: Namespace,
    catalog: CatalogView | None,
    policy: CachePolicy,
    params: Sequence[str | None] = (),
) -> WritePlan | None:
    """What a successful statement invalidates at commit; None if it writes nothing."""
    operation = analysis.kind.value.upper()
    written = analysis.tables_written
    if analysis.ddl or analysis.kind in _MAY_CHANGE_CATALOG:
        return whole_database(ns, operation, written, catalog_changed=True)
    if analysis.writes_unknown:
        return whole_database(ns, operation, written)
    if not written:
        return None
    if catalog is None:
        return whole_database(ns, operation, written)
    targets, unknown_reach = catalog.write_targets(written)
    if unknown_reach:
        return whole_database(ns, operation, written)
    first = bare(sorted(written)[0])
    confined = _confined(analysis, params, policy.scope_columns) if len(written) == 1 else {}
    bumps: set[str] = set()
    for table in targets | {bare(t) for t in written}:
        bumps.update(
            write_generations(
                ns, table, confined if table == first else None, policy.scope_columns
            )
        )
    related = _related(ns, policy, written, analysis, params)
    bumps.update(related[0])
    scope = next(iter(confined.values()), None) if confined else None
    tables = frozenset(targets) | related[1]
    return WritePlan(frozenset(bumps), first, tables, operation, scope, catalog_id=id(catalog))


# Statements that may change the catalog (directly, or by running arbitrary code).
_MAY_CHANGE_CATALOG = frozenset({Kind.DDL, Kind.GRANT, Kind.CALL, Kind.EXECUTE, Kind.UNKNOWN})


def whole_database(
    ns: Namespace, operation: str, written: Iterable[str] = (), *, catalog_changed: bool = False
) -> WritePlan:
    """A write whose reach is unknown: the database's epoch (and its `ddl` counter when the
    catalog may have changed) is bumped, which every read of the database depends on."""
    tables = frozenset(bare(t) for t in written) or frozenset({"*"})
    bumps = frozenset({ns.epoch, ns.ddl} if catalog_changed else {ns.epoch})
    return WritePlan(bumps, "*", tables, operation, None, True, catalog_changed)


def _confined(
    analysis: StatementAnalysis, params: Sequence[str | None], scope_columns: Sequence[str]
) -> dict[str, str]:
    """Scope column → value when the write is provably confined to it (else empty)."""
    if not analysis.scope.confined:
        return {}
    out: dict[str, str] = {}
    for column, key_value in analysis.scope.confined_to.items():
        value = key_value.resolve(params)
        if column not in scope_columns or value is None:
            return {}  # cannot name the value: treat the write as unscoped
        out[column] = value
    return out


def _related(
    ns: Namespace,
    policy: CachePolicy,
    written: Iterable[str],
    analysis: StatementAnalysis,
    params: Sequence[str | None],
) -> tuple[set[str], frozenset[str]]:
    """Bumps from the `relations` config: a write to T invalidates its listed dependents.

    The scope is carried over when the related column is itself a scope column and the
    write pins T's `id` to one value (`organizations: [agents.organization_id]` and
    ``UPDATE organizations ... WHERE id = 'X'`` bump only agents of organization X).
    """
    bumps: set[str] = set()
    tables: set[str] = set()
    for table in written:
        for target in (policy.relations or {}).get(bare(table), ()):
            other, _, column = target.rpartition(".")
            other = bare(other)
            tables.add(other)
            value = _pinned_id(analysis, table, params) if column in policy.scope_columns else None
            confined = {column: value} if value else None
            bumps.update(write_generations(ns, other, confined, policy.scope_columns))
    return bumps, frozenset(tables)


def _pinned_id(analysis: StatementAnalysis, table: str, params: Sequence[str | None]) -> str | None:
    for key in analysis.where_keys.get(table, ()):
        if key.column == "id" and key.op == "=" and len(key.values) == 1:
            return key.values[0].resolve(params)
    return None
