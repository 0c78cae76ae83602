"""Command-line tools beside the server: ``pgreactive COMMAND ...``.

Each tool module offers ``add_commands(subparsers)``: it adds its argparse subcommand(s),
each with its help and ``run(args) -> int`` as the ``run`` default (see `proxy.cli`).  Every
tool that talks to a server takes the server's ``--config FILE`` and the ``--redis URL`` /
``--metrics HOST:PORT`` / ``--namespace NS`` flags, with the same precedence as the server
(defaults, file, `PGREACTIVE_*` environment, flags), so it finds the Redis and the metrics
endpoint the server uses.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn
from urllib.parse import urlsplit

from proxy.config import Config, load, read_config_file

EXIT_CONFIG = 2


class ToolParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


Subcommands = Any  # argparse's _SubParsersAction (private, so not named in annotations)


def tool_command(
    subparsers: Subcommands, name: str, summary: str, description: str = ""
) -> ToolParser:
    """A subcommand with the flags every tool shares."""
    p: ToolParser = subparsers.add_parser(
        name, help=summary, description=description or summary
    )
    p.add_argument("--config", metavar="FILE", help="the server's YAML configuration file")
    p.add_argument("--redis", metavar="redis://HOST:PORT/DB", help="the server's Redis")
    p.add_argument("--metrics", metavar="HOST:PORT", help="the server's metrics address")
    p.add_argument(
        "--namespace",
        metavar="NS",
        help="the server's namespace (default: the one registered in its Redis database)",
    )
    return p


def tool_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """The configuration the server would run with, for `args` of a `tool_command`
    (raises ConfigError)."""
    text = read_config_file(args.config)
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("redis", "redis.url"),
        ("metrics", "metrics.listen"),
        ("namespace", "namespace"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    environ = dict(os.environ) if environ is None else environ
    return load(text, environ, overrides, source=args.config or "config file")


def redacted(url: str) -> str:
    """`url` without its user and password, for messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
