"""``pgreactive stats``: which query shapes a running server caches, and why the rest not.

Reads ``/stats`` from the server's metrics address (``--metrics HOST:PORT``, else the
config file or ``PGREACTIVE_METRICS``, else `DEFAULT_METRICS`, the address of ``make run``
and of the Docker image) and prints one line per shape, most called first:
name, calls, hits, misses, hit %, mean latency, the most frequent bypass reason and the
first SQL seen.  ``--json`` prints the server's JSON as it came.

Exit codes: 0 printed (also when the reader of stdout goes away); 1 server unreachable or
a reply that is not ``/stats``; 2 bad flags or configuration.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from proxy.config import Address, ConfigError
from proxy.tools import EXIT_CONFIG, Subcommands, tool_command, tool_config

PROG = "pgreactive stats"
EXIT_UNAVAILABLE = 1
TIMEOUT = 5.0  # seconds to connect and read: the endpoint answers from memory
# Where `make run` and the Docker image serve /stats: the address asked when neither a flag,
# nor the config file, nor PGREACTIVE_METRICS gives one.
DEFAULT_METRICS = Address("127.0.0.1", 9187)
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
_COLUMNS = ("NAME", "CALLS", "HITS", "MISSES", "HIT%", "MEAN_MS", "TOP_BYPASS", "SQL")
_NUMERIC = frozenset({"CALLS", "HITS", "MISSES", "HIT%", "MEAN_MS"})


class Unavailable(Exception):
    """The statistics cannot be had; the message is the one line to print."""


def add_commands(subparsers: Subcommands) -> None:
    p = tool_command(
        subparsers,
        "stats",
        "per-query-shape cache statistics of a running server",
        "Per-query-shape cache statistics of a running pgreactive (its /stats).",
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON of /stats")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = tool_config(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    address = config.metrics or DEFAULT_METRICS
    try:
        body = fetch(stats_url(address), config.metrics is None)
        document = parse(body)
    except Unavailable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(body.decode().rstrip("\n") if args.json else render(document))
    return 0


def stats_url(address: Address) -> str:
    """The URL of ``/stats`` at a metrics listen address (a wildcard means this host)."""
    host = _WILDCARDS.get(address.host, address.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{address.port}/stats"


def fetch(url: str, defaulted: bool = False) -> bytes:
    """GET `url` directly (never through an HTTP proxy from the environment); `defaulted`:
    the address is `DEFAULT_METRICS`, not one the user gave (a failure says so)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT) as response:
            body: bytes = response.read()
    except urllib.error.HTTPError as exc:
        raise Unavailable(f"{url} answered {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        hint = (
            " (the default: give --metrics HOST:PORT, or --config FILE, as the server has it)"
            if defaulted
            else ""
        )
        raise Unavailable(f"cannot reach {url}: {exc.reason}{hint}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"cannot read {url}: {exc or type(exc).__name__}") from None
    return body


def parse(body: bytes) -> dict[str, Any]:
    """The ``/stats`` document, checked for the one field everything needs."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("shapes"), list):
        raise Unavailable("the reply is not pgreactive /stats JSON (is this the metrics port?)")
    return document


def render(document: dict[str, Any]) -> str:
    """An aligned text table of the shapes, with a one-line footer."""
    if document.get("cache") == "off":
        return "the cache is off on this server: no query shapes are counted"
    shapes: list[dict[str, Any]] = document["shapes"]
    rows = [_COLUMNS, *(_row(shape) for shape in shapes)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column in _NUMERIC else cell.ljust(width)
            for column, cell, width in zip(_COLUMNS, row, widths, strict=False)
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    bound = document.get("bound")
    kept = f" (the server keeps the {bound} most recently seen)" if bound else ""
    lines.append(f"{len(shapes)} shape{'' if len(shapes) == 1 else 's'}{kept}")
    return "\n".join(lines)


def _row(shape: dict[str, Any]) -> tuple[str, ...]:
    calls, hits = int(shape.get("calls", 0)), int(shape.get("hits", 0))
    mean = shape.get("mean_latency_ms")
    bypass: dict[str, int] = shape.get("bypass") or {}
    top = max(bypass.items(), key=lambda item: (item[1], item[0]), default=None)
    return (
        str(shape.get("name", "")),
        str(calls),
        str(hits),
        str(shape.get("misses", 0)),
        f"{100 * hits / calls:.1f}" if calls else "-",
        f"{mean:.3f}" if isinstance(mean, int | float) else "-",
        f"{top[0]} ({top[1]})" if top is not None else "-",
        str(shape.get("sql", "")),
    )
