"""``pgreactive replication install|uninstall``: the DDL event trigger (docs/replication.md).

DDL that bypasses the proxy changes no row, so the replication stream shows nothing of it:
a catalog would see it only after ``catalog.max_age``, and a cached ``SELECT *`` keeps its
old shape.  ``install`` creates, in the followed database (``replication.database``, or
``--database``), a function and two event triggers (``ddl_command_end`` and ``sql_drop``)
that write a transactional logical message with the prefix ``pgreactive.ddl``
(`cache.changes.DDL_PREFIX`) in the DDL's own transaction.  The stream then carries it at
the DDL's commit, and the reader invalidates the database and reloads its catalog
(`cache.changes.plan_transaction`, on every instance through the ``ddl`` counter).

* The function is ``SECURITY DEFINER`` (owned by the installing role) with a fixed
  ``search_path``: ``pg_logical_emit_message`` may be executed only by superusers by
  default, and DDL run by any other role must not fail on it.
* Creating event triggers needs a superuser (``rds_superuser`` on RDS): the tool connects
  as ``--user`` (default ``catalog.user``), with ``catalog.password`` or ``PGPASSWORD``.
* ``install`` is idempotent (one transaction: drop if present, create); ``uninstall``
  drops what ``install`` created, and the schema ``pgreactive`` when nothing else is in it.

Exit codes: 0 done; 1 Postgres refused or could not be reached (one line); 2 bad flag or
configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Final

from cache.changes import DDL_PREFIX
from proxy.codec import TxnStatus
from proxy.config import Config, ConfigError
from proxy.pgclient import PgClient, PgError
from proxy.tls import UpstreamTLS
from proxy.tools import EXIT_CONFIG, Subcommands, tool_command, tool_config

EXIT_FAILED: Final = 1
SCHEMA: Final = "pgreactive"
FUNCTION: Final = f"{SCHEMA}.emit_ddl_message()"
TRIGGERS: Final = {
    "pgreactive_ddl_command_end": "ddl_command_end",
    "pgreactive_sql_drop": "sql_drop",
}

_TRIGGERS_SQL: Final = "".join(
    f"drop event trigger if exists {name};\n"
    f"create event trigger {name} on {event} execute function {FUNCTION};\n"
    for name, event in TRIGGERS.items()
)
INSTALL: Final = f"""
begin;
create schema if not exists {SCHEMA};
create or replace function {FUNCTION} returns event_trigger
  language plpgsql security definer set search_path = pg_catalog as $pgreactive$
begin
  -- Transactional: decoded at the DDL's commit, in its place in the stream.
  perform pg_catalog.pg_logical_emit_message(true, '{DDL_PREFIX}', tg_event || ' ' || tg_tag);
end
$pgreactive$;
revoke all on function {FUNCTION} from public;
{_TRIGGERS_SQL}commit;
"""
_DROP_TRIGGERS: Final = "".join(f"drop event trigger if exists {name};\n" for name in TRIGGERS)
UNINSTALL: Final = f"""
begin;
{_DROP_TRIGGERS}drop function if exists {FUNCTION};
commit;
"""

_DROP_SCHEMA: Final = f"drop schema if exists {SCHEMA}"  # RESTRICT: only when empty


class ToolError(Exception):
    """The command could not be done; the message is the one line to print."""


def add_commands(subparsers: Subcommands) -> None:
    replication = subparsers.add_parser(
        "replication",
        help="set Postgres up for the replication stream",
        description="What the replication stream needs in Postgres (docs/replication.md).",
    )
    actions = replication.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, summary in (
        ("install", "install the event trigger that announces DDL in the stream (idempotent)"),
        ("uninstall", "drop the event trigger that `install` created"),
    ):
        p = tool_command(actions, name, summary)
        p.add_argument("--upstream", metavar="postgresql://HOST:PORT", help="the Postgres server")
        p.add_argument(
            "--database", metavar="D", help="the database (default: replication.database)"
        )
        p.add_argument(
            "--user",
            metavar="U",
            help="a superuser to connect as (default: catalog.user, with catalog.password;"
            " another user takes its password from PGPASSWORD)",
        )
        p.set_defaults(run=_run, install=name == "install", prog=p.prog)


def _run(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    if args.upstream is not None:
        environ["PGREACTIVE_UPSTREAM"] = args.upstream  # below flags, above the file
    try:
        config = tool_config(args, environ)
        database = args.database or config.replication.database
        if not database:
            raise ConfigError("replication.database: not set; give --database")
        user = args.user or config.catalog.user
        if not user:
            raise ConfigError("catalog.user: not set; give --user (a superuser)")
    except ConfigError as exc:
        print(f"{args.prog}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    password = config.catalog.password if user == config.catalog.user else ""
    password = password or environ.get("PGPASSWORD", "")
    try:
        notes = asyncio.run(_apply(config, database, user, password or None, args.install))
    except ToolError as exc:
        print(f"{args.prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for note in notes:
        print(f"{args.prog}: note: {note}", file=sys.stderr)
    where = f"database {database} on {config.upstream.host}:{config.upstream.port}"
    names = ", ".join(TRIGGERS)
    if args.install:
        print(f"installed event triggers {names} (function {FUNCTION}) in {where}")
    else:
        print(f"uninstalled event triggers {names} (function {FUNCTION}) from {where}")
    return 0


async def _apply(
    config: Config, database: str, user: str, password: str | None, install: bool
) -> list[str]:
    """Run the install or uninstall script; return notes for stderr (raises ToolError)."""
    upstream = config.upstream
    where = f"{upstream.host}:{upstream.port}"
    try:
        client = await PgClient.connect(
            upstream.host, upstream.port, user, database, password, upstream.connect_timeout,
            application_name="pgreactive-replication-install",
            tls=UpstreamTLS.from_config(upstream),
        )  # fmt: skip
    except PgError as exc:
        raise ToolError(f"cannot connect to {where} as {user}: {exc}") from None
    notes = []
    try:
        await client.execute(INSTALL if install else UNINSTALL)
        if install:
            ((wal_level,),) = await client.query("show wal_level")
            if wal_level != "logical":
                notes.append(
                    f"wal_level is {wal_level!r}: the messages are written, but no stream"
                    " carries them until it is 'logical'"
                )
        else:
            try:
                await client.execute(_DROP_SCHEMA)
            except PgError as exc:
                if exc.sqlstate != "2BP01":  # dependent objects still exist
                    raise
                notes.append(f"schema {SCHEMA} kept: it holds other objects")
    except PgError as exc:
        if client.transaction_status != TxnStatus.IDLE and not client.closed:
            await client.execute("rollback")
        hint = " (creating event triggers needs a superuser)" if exc.sqlstate == "42501" else ""
        raise ToolError(f"{exc}{hint}") from None
    finally:
        await client.close()
    return notes
