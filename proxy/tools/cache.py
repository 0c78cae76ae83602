"""``pgreactive cache flush``: invalidate cached reads through the path writes use.

A flush is an invalidation like the one a committed write makes: it builds a `CacheService`
on the server's Redis (`RedisBackend`) and calls `CacheService.invalidate` with a
`WritePlan`, so the same counters are bumped, the same checks run (a catalog that DDL made
stale widens the flush to the database) and one event per flushed table is published, with
operation ``FLUSH`` and source ``pgreactive cache flush``.

* ``--database D --table T`` bumps what an unscoped write to T bumps (`write_generations`
  with no scope value: ``g:T`` and ``g:T#COLUMN:-`` for every scope column, which every
  read of T depends on, pinned or not), for T and, with a catalog connection configured
  (``catalog.user``), for every table such a write reaches (`Catalog.write_targets`:
  partitions, parents, FK actions), plus the dependents `relations` names.  A read of a
  view over T depends on T's counters through the catalog.  Triggers do not widen a flush
  to the database, as they do for writes: a flush changes no row, so no trigger fires.
* ``--database D`` alone: the database's epoch, which every read of it depends on, and its
  ``ddl`` counter, so every instance also reloads the database's catalog (the way to make
  them see DDL that bypassed every proxy).
* ``--all`` bumps the namespace's epoch (`keys.global_epoch`): every database of every
  instance of the deployment; its event names database ``*``.

Keys are named by the server's namespace and its upstream *as the server spells it*, so the
tool does not compute them from its own configuration: it takes them from the registration
the server wrote into its Redis database at start (`proxy.registry.choose`).  It needs only
the server's Redis (and ``--namespace`` when several deployments share that database).

A flush that would match nothing fails instead of saying it worked: a table the catalog
does not know, or counters that do not exist in Redis (no read or write of that database or
table ever went through a server of the namespace).

Exit codes: 0 when the counters were bumped; 1 with one line when Redis is not configured or
unreachable, no server registered the namespace, nothing matched or the catalog cannot be
read; 2 for a bad flag or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cache.catalog import Catalog
from cache.keys import Namespace, bare, global_epoch, write_generations
from cache.planner import CachePolicy, WritePlan
from cache.service import CacheService
from cache.store import RedisBackend
from proxy.config import Config, ConfigError, cache_settings, events_channel, namespace
from proxy.metrics import Stats
from proxy.pgclient import CatalogLogin
from proxy.registry import (
    NotRegistered,
    Registration,
    adopt,
    channel_note,
    choose,
    registrations,
)
from proxy.tools import EXIT_CONFIG, Subcommands, redacted, tool_command, tool_config

PROG = "pgreactive cache flush"
SOURCE = "pgreactive cache flush"
OPERATION = "FLUSH"
EXIT_FAILED = 1
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


def global_plan(root: str) -> WritePlan:
    """Every read of every database of namespace `root`."""
    return WritePlan(
        frozenset({global_epoch(root)}), "*", frozenset({"*"}), OPERATION, None, True
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
    ns = service.context(database).namespace
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
        missing = [table for table in tables if not catalog.resolve(table)]
        if missing:
            raise FlushError(
                f"nothing flushed: database {database} has no relation {', '.join(missing)}"
            )
    return [table_plan(ns, table, catalog, service.policy) for table in tables]


def _notes(config: Config, record: Registration, plans: Sequence[WritePlan]) -> list[str]:
    """What to say on stderr once the flush goes ahead (a failure is one line only)."""
    notes = []
    if any(not p.whole_database for p in plans) and not config.catalog.user:
        notes.append(
            "note: no catalog configured (catalog.user): cached reads of views, parents or"
            " partitions of the table are not reached; flush the database for them"
        )
    channel = channel_note(config, record)
    if channel is not None:
        notes.append(channel)
    return notes


async def server_registration(config: Config) -> Registration:
    """The registration of the server `config` means (raises FlushError)."""
    assert config.redis_url is not None
    where = redacted(config.redis_url)
    client = Redis.from_url(
        config.redis_url, socket_timeout=_REDIS_TIMEOUT, socket_connect_timeout=_REDIS_TIMEOUT
    )
    try:
        registered = await registrations(client)
    except (RedisError, OSError) as exc:
        raise FlushError(f"cannot reach Redis at {where} ({exc})") from None
    finally:
        await client.aclose()
    try:
        return choose(config, registered)
    except NotRegistered as exc:
        raise FlushError(f"nothing flushed: {exc} (Redis at {where})") from None


async def flush(
    config: Config, database: str | None, tables: Sequence[str]
) -> None:
    """Bump the counters of the registered server and publish the events (`database`
    None: every database); raises FlushError."""
    record = await server_registration(config)
    config = adopt(config, record)
    assert config.redis_url is not None
    where = redacted(config.redis_url)
    warnings = _Warnings()
    logging.getLogger().addHandler(warnings)
    backend = RedisBackend.from_url(
        config.redis_url,
        epoch_key=global_epoch(namespace(config)),
        op_timeout=_REDIS_TIMEOUT,
        connect_timeout=_REDIS_TIMEOUT,
    )
    login = CatalogLogin.from_config(config)
    stats = Stats()
    service = CacheService(cache_settings(config), backend, stats, catalog_source=login)
    plans: list[WritePlan] = []
    try:
        await service.start()
        if not backend.available:
            raise FlushError(f"cannot reach Redis at {where}{warnings.reason()}")
        if database is None:
            plans = [global_plan(service.root)]
        else:
            plans = await _plans(service, database, tables, warnings)
        await _check_matches(backend, plans, database, config)
        for note in _notes(config, record, plans):
            print(f"{PROG}: {note}", file=sys.stderr)
        if not await service.invalidate(database or "*", plans, source=SOURCE):
            raise FlushError(f"Redis at {where} failed during the flush{warnings.reason()}")
        for plan in plans:
            print(f"{_what(plan, database, config)}: bumped {' '.join(sorted(plan.bumps))}")
    finally:
        await service.close()  # waits for the events to be published
        logging.getLogger().removeHandler(warnings)
    published = stats.events_published
    channel = events_channel(config)
    if published == len(plans):
        print(f"published {published} event{'s' * (published != 1)} on {channel}")
    else:
        missing = f"{PROG}: only {published} of {len(plans)} events published on {channel}"
        print(missing, file=sys.stderr)


async def _check_matches(
    backend: RedisBackend, plans: Sequence[WritePlan], database: str | None, config: Config
) -> None:
    """Raise FlushError when no plan's counters exist: every read looked up and every
    write bumped them, so nothing cached (or ever invalidated) depends on them."""
    try:
        for plan in plans:
            if await backend.client.exists(*plan.bumps):
                return
    except (RedisError, OSError) as exc:
        raise FlushError(f"cannot read from Redis ({exc})") from None
    what = f"database {database}" if database is not None else "any database"
    if database is not None and plans and not plans[0].whole_database:
        what = f"table {', '.join(p.table for p in plans)} of {what}"
    raise FlushError(
        f"nothing flushed: no server of namespace {namespace(config)} (upstream"
        f" {config.upstream.host}:{config.upstream.port}) ever cached or invalidated {what}"
    )


def _what(plan: WritePlan, database: str | None, config: Config) -> str:
    where = f"namespace {namespace(config)}, upstream {config.upstream.host}:{config.upstream.port}"
    if database is None:
        return f"flushed every database ({where})"
    if plan.whole_database:
        return f"flushed database {database} ({where})"
    also = sorted(plan.tables - {plan.table})
    reach = f" (and {', '.join(also)})" if also else ""
    return f"flushed table {plan.table}{reach} of database {database} ({where})"


def add_commands(subparsers: Subcommands) -> None:
    cache = subparsers.add_parser(
        "cache", help="act on the cache of running servers", description="The cache."
    )
    actions = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = tool_command(
        actions,
        "flush",
        "invalidate cached reads, as a committed write would",
        "Invalidate cached reads of one database (or some of its tables), or of every"
        " database, through the path committed writes use; exits 1 when nothing matched.",
    )
    p.add_argument(
        "--upstream",
        metavar="postgresql://HOST:PORT",
        help="the server's upstream: picks its namespace when several servers registered in"
        " the same Redis database (keys are then named as that server registered them)",
    )
    p.add_argument(
        "--table", action="append", default=[], metavar="T", help="flush table T (repeatable)"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--database", metavar="D", help="the database; without --table, all of it"
    )
    which.add_argument("--all", action="store_true", help="flush every database")
    p.set_defaults(run=_flush, parser=p)


def _flush(args: argparse.Namespace) -> int:
    if args.all and args.table:
        args.parser.error("--all flushes every database: give it without --table")
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
    try:
        asyncio.run(flush(config, None if args.all else args.database, args.table))
    except FlushError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0
