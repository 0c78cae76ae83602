"""``pgreactive stats``: which query shapes a running server caches, and why the rest not.

Reads ``/stats`` from the server's metrics address (``--metrics HOST:PORT``, else the
config file or ``PGREACTIVE_METRICS``, else `DEFAULT_METRICS`, the address of ``make run``
and of the Docker image; with the server's ``metrics.token`` as bearer token) and prints one
line per shape, most called first (``--sort``, ``--limit``): name, database, calls, hits,
misses, hit %, mean latency, the most frequent bypass reason and the first SQL seen without
its values, each line cut to `WIDTH` characters (``--wide``: not cut).  ``--json`` prints
the server's JSON as it came.

Exit codes: 0 printed (also when the reader of stdout goes away); 1 server unreachable or
a reply that is not ``/stats``; 2 bad flags or configuration.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cache.shapes import SORTS
from proxy.config import Address, ConfigError
from proxy.tools import EXIT_CONFIG, Subcommands, tool_command, tool_config

PROG = "pgreactive stats"
EXIT_UNAVAILABLE = 1
TIMEOUT = 5.0  # seconds to connect and read: the endpoint answers from memory
# Where `make run` and the Docker image serve /stats: the address asked when neither a flag,
# nor the config file, nor PGREACTIVE_METRICS gives one.
DEFAULT_METRICS = Address("127.0.0.1", 9187)
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
_COLUMNS = (
    "NAME", "DATABASE", "CALLS", "HITS", "MISSES", "HIT%", "MEAN_MS", "TOP_BYPASS", "SQL",
)  # fmt: skip
WIDTH = 120  # characters per table line unless --wide (the SQL is cut to fit)
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
    p.add_argument(
        "--sort", choices=list(SORTS), default="calls", help="order of the shapes (default: calls)"
    )
    p.add_argument("--limit", type=_count, metavar="N", help="print at most N shapes")
    p.add_argument(
        "--wide", action="store_true", help=f"do not cut table lines to {WIDTH} characters"
    )
    p.set_defaults(run=run)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    try:
        config = tool_config(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    address = config.metrics or DEFAULT_METRICS
    try:
        url = stats_url(address, args.sort, args.limit)
        body = fetch(url, config.metrics_token, defaulted=config.metrics is None)
        document = parse(body)
    except Unavailable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    width = None if args.wide else WIDTH
    print(body.decode().rstrip("\n") if args.json else render(document, width))
    return 0


def stats_url(address: Address, sort: str = "calls", limit: int | None = None) -> str:
    """The URL of ``/stats`` at a metrics listen address (a wildcard means this host)."""
    host = _WILDCARDS.get(address.host, address.host)
    if ":" in host:
        host = f"[{host}]"
    query = {
        **({"sort": sort} if sort != "calls" else {}),
        **({"limit": str(limit)} if limit is not None else {}),
    }
    url = f"http://{host}:{address.port}/stats"
    return f"{url}?{urllib.parse.urlencode(query)}" if query else url


def fetch(url: str, token: str = "", *, defaulted: bool = False) -> bytes:
    """GET `url` directly (never through an HTTP proxy from the environment), with `token`
    as the bearer token if given; `defaulted`: the address is `DEFAULT_METRICS`, not one
    the user gave (a failure says so)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            body: bytes = response.read()
    except urllib.error.HTTPError as exc:
        hint = " (give the server's metrics.token)" if exc.code == 401 else ""
        raise Unavailable(f"{url} answered {exc.code} {exc.reason}{hint}") from None
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


def render(document: dict[str, Any], width: int | None = WIDTH) -> str:
    """An aligned text table of the shapes, with a one-line footer; lines longer than
    `width` have their SQL cut (None: never cut)."""
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
        lines.append(_cut("  ".join([*cells, row[-1]]).rstrip(), width))
    bound, total = document.get("bound"), document.get("total")
    kept = f" (the server keeps the {bound} most recently seen)" if bound else ""
    shown = f" of {total}" if isinstance(total, int) and total != len(shapes) else ""
    plural = "" if len(shapes) == 1 and not shown else "s"
    lines.append(f"{len(shapes)}{shown} shape{plural}{kept}")
    return "\n".join(lines)


def _cut(line: str, width: int | None) -> str:
    if width is None or len(line) <= width:
        return line
    return line[: width - 3] + "..."


def _row(shape: dict[str, Any]) -> tuple[str, ...]:
    calls, hits = int(shape.get("calls", 0)), int(shape.get("hits", 0))
    mean = shape.get("mean_latency_ms")
    bypass: dict[str, int] = shape.get("bypass") or {}
    top = max(bypass.items(), key=lambda item: (item[1], item[0]), default=None)
    return (
        str(shape.get("name", "")),
        str(shape.get("database", "")) or "-",
        str(calls),
        str(hits),
        str(shape.get("misses", 0)),
        f"{100 * hits / calls:.1f}" if calls else "-",
        f"{mean:.3f}" if isinstance(mean, int | float) else "-",
        f"{top[0]} ({top[1]})" if top is not None else "-",
        str(shape.get("sql", "")),
    )
