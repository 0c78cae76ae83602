"""Markdown table from a `bench/passthrough.sh` CSV (stdlib only).

Usage: python bench/summarize.py bench/results/passthrough-YYYY-MM-DD.csv [--update RESULTS.md]

With --update, the table also replaces the block between the two `passthrough.sh` markers
in that file (see MARK_BEGIN/MARK_END; the prose around it is left alone).  A CSV from a
``TLS=1`` run (its header says so) goes between the `passthrough.sh TLS table` markers.

One row per (clients, mode): median TPS over the reps for each target with its median
latency, then pgreactive/pgbouncer and pgreactive/direct as ratios of the medians, with the
range of the per-rep ratios (same rep = same moment, so these are the fairer comparison).
The `# ...` lines at the top of the CSV (date, versions, settings) are repeated above it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import statistics
import sys
from collections import defaultdict

TARGET_RATIO = 0.7  # acceptance: pgreactive >= 0.7x pgbouncer at 16 clients
MARK_BEGIN = "<!-- passthrough.sh {}: begin (generated, replaced by each run) -->"
MARK_END = "<!-- passthrough.sh {}: end -->"
TLS_META = "TLS=1"  # a meta line starting so marks a run with TLS on the client leg


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    meta = [line[2:] for line in lines if line.startswith("# ")]
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    tps: dict[tuple[int, str, str], dict[int, float]] = defaultdict(dict)
    lat: dict[tuple[int, str, str], list[float]] = defaultdict(list)
    order: list[tuple[int, str]] = []
    failures = []
    loads = []
    for r in rows:
        key = (int(r["clients"]), r["mode"])
        if key not in order:
            order.append(key)
        loads.append(float(r["load1"] or 0))
        if r["status"] != "ok":
            failures.append(
                f"- rep {r['rep']} c={r['clients']} {r['mode']} {r['target']}: {r['note']}"
            )
            continue
        tps[(*key, r["target"])][int(r["rep"])] = float(r["tps"])
        lat[(*key, r["target"])].append(float(r["lat_ms"]))

    def cell(key: tuple[int, str], target: str) -> str:
        by_rep = tps.get((*key, target))
        if not by_rep:
            return "FAIL"
        med = statistics.median(by_rep.values())
        spread = (
            f" [{min(by_rep.values()):,.0f}-{max(by_rep.values()):,.0f}]" if len(by_rep) > 1 else ""
        )
        return f"{med:,.0f}{spread} ({statistics.median(lat[(*key, target)]):.3f} ms)"

    def ratio(key: tuple[int, str], num: str, den: str) -> str:
        a, b = tps.get((*key, num)), tps.get((*key, den))
        if not a or not b:
            return "—"
        text = f"{statistics.median(a.values()) / statistics.median(b.values()):.2f}"
        per_rep = [a[rep] / b[rep] for rep in a if rep in b]
        if len(per_rep) > 1:
            text += f" [{min(per_rep):.2f}-{max(per_rep):.2f}]"
        return text

    for line in meta:
        print(f"    {line}")
    reps = max((len(v) for v in tps.values()), default=0)
    print()
    print(
        f"Median TPS over {reps} rep(s) [min-max], median average latency in ms; "
        "ratios of the medians [range of per-rep ratios]."
    )
    print()
    floor = any(r["target"] == "bare-relay" for r in rows)  # FLOOR=1
    print(
        "| clients | mode | direct | pgbouncer (session) | pgreactive (--no-cache) "
        + ("| bare-relay " if floor else "")
        + "| pgreactive / pgbouncer | pgreactive / direct | pgbouncer / direct |"
        + (" bare-relay / pgbouncer |" if floor else "")
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if floor else ""))
    for key in order:
        print(
            f"| {key[0]} | {key[1]} | {cell(key, 'direct')} | {cell(key, 'pgbouncer')} "
            f"| {cell(key, 'pgreactive')} "
            + (f"| {cell(key, 'bare-relay')} " if floor else "")
            + f"| {ratio(key, 'pgreactive', 'pgbouncer')} "
            f"| {ratio(key, 'pgreactive', 'direct')} | {ratio(key, 'pgbouncer', 'direct')} |"
            + (f" {ratio(key, 'bare-relay', 'pgbouncer')} |" if floor else "")
        )
    print()
    verdicts = []
    for key in order:
        if key[0] < 16:
            continue
        a, b = tps.get((*key, "pgreactive")), tps.get((*key, "pgbouncer"))
        if a and b:
            q = statistics.median(a.values()) / statistics.median(b.values())
            verdicts.append(
                f"{key[1]} c={key[0]}: {q:.3f}x ({'met' if q >= TARGET_RATIO else 'NOT met'})"
            )
    if verdicts:
        print(
            f"Target pgreactive >= {TARGET_RATIO}x pgbouncer at 16 clients: " + "; ".join(verdicts)
        )
    if loads:
        print(f"load1 before each cell: min {min(loads):.2f}, max {max(loads):.2f} (2 CPUs)")
    if failures:
        print("\nFailures:")
        print("\n".join(failures))


def update(path: str, table: str) -> None:
    """Replace the text between the markers in `path` with `table`."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    name = "TLS table" if f"    {TLS_META}" in table else "table"
    mark_begin, mark_end = MARK_BEGIN.format(name), MARK_END.format(name)
    begin, end = text.find(mark_begin), text.find(mark_end)
    if begin < 0 or end < begin:
        sys.exit(
            f"{path}: markers not found; add them where the table goes:\n{mark_begin}\n{mark_end}"
        )
    text = text[: begin + len(mark_begin)] + "\n" + table.strip("\n") + "\n" + text[end:]
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(sys.argv[1])
    print(out.getvalue(), end="")
    if len(sys.argv) == 4 and sys.argv[2] == "--update":
        update(sys.argv[3], out.getvalue())
