"""``pgreactive cache flush``: invalidate cached reads through the path writes use.

A flush is an invalidation like the one a committed write makes: it builds a `CacheService`
on the server's Redis (`RedisBackend`) and calls `CacheService.invalidate` with a
`WritePlan`, so the same counters are bumped, the same checks run (a catalog that DDL made
stale widens the flush to the database) and one event per flushed table is published, with
operation ``FLUSH`` and source ``pgreactive cache flush``.

* ``--table T`` bumps what an unscoped write to T bumps (`write_generations` with no scope
  value: ``g:T`` and ``g:T#COLUMN:-`` for every scope column, which every read of T
  depends on, pinned or not), for T and, with a catalog connection configured
  (``catalog.user``), for every table such a write reaches (`Catalog.write_targets`:
  partitions, parents, FK actions), plus the dependents `relations` names.  A read of a
  view over T depends on T's counters through the catalog.  Triggers do not widen a flush
  to the database, as they do for writes: a flush changes no row, so no trigger fires.
* Without ``--table``, the database: its epoch, which every read of it depends on, and its
  ``ddl`` counter, so every instance also reloads the database's catalog (the way to make
  them see DDL that bypassed every proxy).
* ``--all`` bumps the global epoch `keys.GLOBAL_EPOCH`: every database of every instance
  sharing that Redis database; its event names database ``*``.

Keys are named per upstream and database (`Namespace.of("HOST:PORT", database)`), so the
tool must be given the server's configuration -- the same ``upstream`` exactly as the
server spells it (``localhost`` and ``127.0.0.1`` are different namespaces) and the same
Redis -- through ``--config``, the ``PGREACTIVE_*`` environment or the flags.

Exit codes: 0 when the counters were bumped, 1 with one line when Redis is not configured or
unreachable or the catalog cannot be read, 2 for a bad flag or configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from cache.catalog import Catalog
from cache.keys import GLOBAL_EPOCH, Namespace, bare, write_generations
from cache.planner import CachePolicy, WritePlan
from cache.service import CacheService
from cache.store import RedisBackend
from proxy.config import Config, ConfigError
from proxy.metrics import Stats
from proxy.tools import EXIT_CONFIG, ToolParser, redacted, tool_config, tool_parser

PROG = "pgreactive cache flush"
SOURCE = "pgreactive cache flush"
OPERATION = "FLUSH"
EXIT_FAILED = 1
# The configuration names no database (clients bring their own; `upstream.url` refuses a
# path), so a flush without --database is of the database Postgres always has.
DEFAULT_DATABASE = "postgres"
_REDIS_TIMEOUT = 2.0  # seconds: a command-line tool may wait longer than a lookup


class FlushError(Exception):
    """The flush could not be done; the message is the one line to print."""


def table_plan(
    ns: Namespace, table: str, catalog: Catalog | None, policy: CachePolicy
) -> WritePlan:
    """What flushing `table` bumps: an unscoped write to it, without widening for triggers."""
    names = {bare(table)}
    if catalog is not None:
        names |= catalog.write_targets([table])[0]
    related = {bare(t.rpartition(".")[0]) for t in (policy.relations or {}).get(bare(table), ())}
    bumps: set[str] = set()
    for name in names | related:
        bumps.update(write_generations(ns, name, None, policy.scope_columns))
    catalog_id = id(catalog) if catalog is not None else 0
    tables = frozenset(names | related)
    return WritePlan(frozenset(bumps), bare(table), tables, OPERATION, None, catalog_id=catalog_id)


def database_plan(ns: Namespace) -> WritePlan:
    """Every read of one database, and its catalog on every instance."""
    bumps = frozenset({ns.epoch, ns.ddl})
    return WritePlan(bumps, "*", frozenset({"*"}), OPERATION, None, True, catalog_changed=True)


def global_plan() -> WritePlan:
    """Every read of every database."""
    return WritePlan(
        frozenset({GLOBAL_EPOCH}), "*", frozenset({"*"}), OPERATION, None, whole_database=True
    )


class _Warnings(logging.Handler):
    """Keeps the cache layer's warnings (not printed: the tool prints one line of its own,
    which quotes the last one as the reason)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def reason(self) -> str:
        return f" ({self.messages[-1]})" if self.messages else ""


async def _plans(
    service: CacheService, database: str, tables: Sequence[str], warnings: _Warnings
) -> list[WritePlan]:
    """The plans for `tables` of `database` (the database itself without tables)."""
    ns = Namespace.of(service.upstream_id, database)  # as `service.context` names it
    if not tables:
        return [database_plan(ns)]
    catalog = None
    if service.catalogs is not None:
        catalog = await service.catalogs.load(database)
        if catalog is None:
            raise FlushError(
                f"cannot read the catalog of database {database}{warnings.reason()}; without"
                " --table the whole database is flushed, which needs no catalog"
            )
        for table in tables:
            if not catalog.resolve(table):
                print(f"{PROG}: note: {database} has no relation {table}", file=sys.stderr)
    else:
        print(
            f"{PROG}: note: no catalog configured (catalog.user): cached reads of views,"
            " parents or partitions of the table are not reached; flush the database for them",
            file=sys.stderr,
        )
    return [table_plan(ns, table, catalog, service.policy) for table in tables]


async def flush(config: Config, database: str, tables: Sequence[str], everything: bool) -> None:
    """Bump the counters and publish the events; raises FlushError."""
    assert config.redis_url is not None
    where = redacted(config.redis_url)
    warnings = _Warnings()
    logging.getLogger().addHandler(warnings)
    backend = RedisBackend.from_url(
        config.redis_url, op_timeout=_REDIS_TIMEOUT, connect_timeout=_REDIS_TIMEOUT
    )
    service = CacheService(config, backend, Stats())
    plans: list[WritePlan] = []
    try:
        await service.start()
        if not backend.available:
            raise FlushError(f"cannot reach Redis at {where}{warnings.reason()}")
        if everything:
            database, plans = "*", [global_plan()]
        else:
            plans = await _plans(service, database, tables, warnings)
        if not await service.invalidate(database, plans, source=SOURCE):
            raise FlushError(f"Redis at {where} failed during the flush{warnings.reason()}")
        for plan in plans:
            print(f"{_what(plan, database, config)}: bumped {' '.join(sorted(plan.bumps))}")
    finally:
        await service.close()  # waits for the events to be published
        logging.getLogger().removeHandler(warnings)
    published = service.stats.events_published
    channel = config.events.channel
    if published == len(plans):
        print(f"published {published} event{'s' * (published != 1)} on {channel}")
    else:
        missing = f"{PROG}: only {published} of {len(plans)} events published on {channel}"
        print(missing, file=sys.stderr)


def _what(plan: WritePlan, database: str, config: Config) -> str:
    if plan.bumps == {GLOBAL_EPOCH}:
        return "flushed every database"
    upstream = f"upstream {config.upstream.host}:{config.upstream.port}"
    if plan.whole_database:
        return f"flushed database {database} ({upstream})"
    also = sorted(plan.tables - {plan.table})
    reach = f" (and {', '.join(also)})" if also else ""
    return f"flushed table {plan.table}{reach} of database {database} ({upstream})"


def _parser() -> ToolParser:
    p = tool_parser("cache flush", "Invalidate cached reads, as a committed write would.")
    p.add_argument(
        "--upstream",
        metavar="postgresql://HOST:PORT",
        help="the server's upstream, exactly as the server is given it (keys depend on it)",
    )
    p.add_argument(
        "--table", action="append", default=[], metavar="T", help="flush table T (repeatable)"
    )
    p.add_argument(
        "--database",
        metavar="D",
        help=f"the database (default: {DEFAULT_DATABASE}); without --table, all of it",
    )
    p.add_argument("--all", action="store_true", help="flush every database (global epoch)")
    return p


def _flush(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(list(argv))
    if args.all and (args.table or args.database):
        parser.error("--all flushes every database: give it without --table or --database")
    environ = dict(os.environ)
    if args.upstream is not None:
        environ["PGREACTIVE_UPSTREAM"] = args.upstream  # below flags, above the file
    try:
        config = tool_config(args, environ)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.redis_url is None:
        print(
            f"{PROG}: no Redis configured (--redis, redis.url or PGREACTIVE_REDIS): a server"
            " without Redis keeps its cache in its own memory, out of this tool's reach",
            file=sys.stderr,
        )
        return EXIT_FAILED
    database = args.database or DEFAULT_DATABASE
    try:
        asyncio.run(flush(config, database, args.table, args.all))
    except FlushError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


_COMMANDS = {"flush": _flush}


def main(argv: Sequence[str]) -> int:
    """``pgreactive cache flush [--table T] [--database D] [--all] [--config FILE] ...``."""
    if not argv or argv[0] not in _COMMANDS:
        print(
            "usage: pgreactive cache flush [--table T] [--database D] [--all]"
            " [--config FILE] [--redis URL] [--upstream URL]",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return _COMMANDS[argv[0]](argv[1:])
