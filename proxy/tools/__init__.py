"""Command-line tools beside the server: ``pgreactive SUBCOMMAND ...``.

Each tool is a module with ``main(argv) -> int`` (see `proxy.cli.TOOLS`).  Every tool takes
the server's ``--config FILE`` and the ``--redis URL`` / ``--metrics HOST:PORT`` flags, with
the same precedence as the server (defaults, file, `PGREACTIVE_*` environment, flags), so it
finds the Redis and the metrics endpoint the server uses.
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


def tool_parser(prog: str, description: str) -> ToolParser:
    """A parser with the flags every tool shares."""
    p = ToolParser(prog=f"pgreactive {prog}", description=description)
    p.add_argument("--config", metavar="FILE", help="the server's YAML configuration file")
    p.add_argument("--redis", metavar="redis://HOST:PORT/DB", help="the server's Redis")
    p.add_argument("--metrics", metavar="HOST:PORT", help="the server's metrics address")
    return p


def tool_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """The configuration the server would run with, for `args` of a `tool_parser`
    (raises ConfigError)."""
    text = read_config_file(args.config)
    overrides: dict[str, Any] = {}
    if args.redis is not None:
        overrides["redis.url"] = args.redis
    if args.metrics is not None:
        overrides["metrics.listen"] = args.metrics
    return load(text, dict(os.environ) if environ is None else environ, overrides)


def redacted(url: str) -> str:
    """`url` without its user and password, for messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
