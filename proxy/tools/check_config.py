"""``pgreactive check-config FILE``: validate a configuration file before a start or a SIGHUP.

It loads FILE exactly as the server does, with the `PGREACTIVE_*` environment variables
applied on top (so it checks the configuration the server would really run with), and
prints ``FILE: ok`` (exit 0) or one line naming the key and the problem (exit 2).  It reads
nothing but the file, the environment and the TLS certificate files named (so a rotated
certificate can be checked before the SIGHUP that loads it): no Postgres, no Redis.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from proxy.config import ENVIRONMENT, ConfigError, load
from proxy.tls import contexts
from proxy.tools import EXIT_CONFIG, Subcommands


def add_commands(subparsers: Subcommands) -> None:
    p = subparsers.add_parser(
        "check-config",
        help="validate a configuration file (exit 0 or 2)",
        description="Check a pgreactive configuration file: unknown keys, wrong types, bad values.",
        epilog=(
            "The PGREACTIVE_* environment variables are applied on top of FILE, as the server "
            "applies them (a bad one is reported too); flags are not. Prints 'FILE: ok' and "
            "exits 0, or prints one line naming the key and the problem and exits 2."
        ),
    )
    p.add_argument("file", metavar="FILE", help="the YAML configuration file")
    p.set_defaults(run=run)


def check(path: str, environ: Mapping[str, str]) -> str | None:
    """None if the server would accept `path` under `environ`, else the one-line problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    except UnicodeDecodeError:
        return "cannot read: not UTF-8 text"
    try:
        contexts(load(text, environ, {}, source=""))  # the caller names the file
    except ConfigError as exc:
        return _blame(str(exc), environ)
    return None


def _blame(message: str, environ: Mapping[str, str]) -> str:
    """Say so when the bad value came from an environment variable, not from the file."""
    key = message.split(":", 1)[0]
    for variable, dotted in ENVIRONMENT.items():
        if variable in environ and dotted == key:
            return f"{message} (from {variable})"
    return message


def run(args: argparse.Namespace) -> int:
    problem = check(args.file, os.environ)
    if problem is not None:
        print(f"{args.file}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.file}: ok")
    return 0
