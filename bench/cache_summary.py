"""Markdown tables and verdicts from a `bench/cache.sh` CSV (stdlib only).

Usage: python bench/cache_summary.py bench/results/cache-YYYY-MM-DD.csv [more.csv ...]

One row per (workload, clients, mode): median TPS over the reps per target with its median
average latency, pgreactive's cache outcomes summed over the reps (hits / misses / bypasses
from its metrics; "hits/xact" = hits per pgbench transaction, which also shows reads that
were never counted), then the ratios of the medians [range of the per-rep ratios: same rep =
same moment, the fairer comparison], and pgreactive's CPU per transaction.  Then the write
path of workload c (pgbench -r per-statement latencies) and the acceptance verdicts.
Several CSVs (separate runs) are read as one, their reps numbered on.
"""

# ruff: noqa: RUF001  (en dashes, minus and times signs in the printed markdown)
from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict

TARGETS = ("direct", "pgpool-memqcache", "pgreactive")
REQUIRED = 10.0  # heavy read: pgreactive hit TPS >= 10x direct in every mode

Key = tuple[str, int, str]  # workload, clients, mode


class Runs:
    def __init__(self, paths: list[str]) -> None:
        self.meta: list[str] = []
        self.tps: dict[tuple[Key, str], dict[int, float]] = defaultdict(dict)
        self.col: dict[tuple[Key, str, str], list[float]] = defaultdict(list)
        self.outcomes: dict[Key, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
        self.order: list[Key] = []
        self.failures: list[str] = []
        self.loads: list[float] = []
        self.other: list[float] = []
        offset = 0
        for path in paths:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            self.meta += [line[2:] for line in lines if line.startswith("# ")]
            rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
            for r in rows:
                self._add(r, offset)
            offset += max((int(r["rep"]) for r in rows), default=0)

    def _add(self, r: dict[str, str], offset: int) -> None:
        key: Key = (r["workload"], int(r["clients"]), r["mode"])
        if key not in self.order:
            self.order.append(key)
        self.loads.append(float(r["load1"] or 0))
        self.other.append(float(r["other_cpu_s"] or 0))
        target = r["target"]
        if r["status"] != "ok":
            self.failures.append(f"- rep {r['rep']} {key} {target}: {r['note']}")
            return
        self.tps[(key, target)][int(r["rep"]) + offset] = float(r["tps"])
        for name in ("lat_ms", "sel_ms", "upd_ms", "proxy_cpu_us"):
            if r.get(name):
                self.col[(key, target, name)].append(float(r[name]))
        if target == "pgreactive":
            counts = self.outcomes[key]
            for i, name in enumerate(("hits", "misses", "bypass", "xacts")):
                counts[i] += int(r[name] or 0)
            counts[4] += r.get("avail_end") == "0"  # the breaker was open at the cell's end

    def median(self, key: Key, target: str, name: str = "tps") -> float | None:
        values = (
            list(self.tps.get((key, target), {}).values())
            if name == "tps"
            else self.col.get((key, target, name), [])
        )
        return statistics.median(values) if values else None

    def ratio(self, key: Key, num: str, den: str) -> tuple[float, list[float]] | None:
        a, b = self.tps.get((key, num)), self.tps.get((key, den))
        if not a or not b:
            return None
        per_rep = [a[rep] / b[rep] for rep in a if rep in b]
        return statistics.median(a.values()) / statistics.median(b.values()), per_rep


def fmt_ratio(r: tuple[float, list[float]] | None) -> str:
    if r is None:
        return "—"
    text = f"{r[0]:.2f}" if r[0] < 10 else f"{r[0]:.1f}"
    if len(r[1]) > 1:
        text += f" [{min(r[1]):.2f}–{max(r[1]):.2f}]"
    return text


def verdict(median: float, low: float, bar: float, missed: str) -> str:
    """met (median and every rep), met on the median only, or `missed`."""
    if median < bar:
        return missed
    return "met" if low >= bar else "met on the median (not in every rep)"


def main(paths: list[str]) -> None:
    runs = Runs(paths)
    for line in runs.meta:
        print(f"    {line}")
    reps = max((len(v) for v in runs.tps.values()), default=0)
    print(
        f"\nMedian TPS over {reps} rep(s) [min–max] (median average latency, ms); pgreactive's "
        "cache outcomes summed over the reps; ratios of the medians [range of per-rep ratios]."
        "\n"
    )
    print(
        "| workload | clients | mode | direct | pgpool memqcache | pgreactive "
        "| pgreactive hits/xact (hit/miss/bypass) | pgreactive / direct | pgreactive / pgpool "
        "| pgpool / direct | pgreactive CPU µs/txn |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def cell(key: Key, target: str) -> str:
        by_rep = runs.tps.get((key, target))
        if not by_rep:
            return "FAIL" if any(f" {target}:" in x for x in runs.failures) else "—"
        med = statistics.median(by_rep.values())
        spread = (
            f" [{min(by_rep.values()):,.0f}–{max(by_rep.values()):,.0f}]" if len(by_rep) > 1 else ""
        )
        return f"{med:,.0f}{spread} ({runs.median(key, target, 'lat_ms'):.3f})"

    for key in runs.order:
        h, m, b, n, down = runs.outcomes[key]
        hit = f"{100 * h / n:.1f} % ({h:,}/{m:,}/{b:,})" if n else "—"
        if down:
            hit += f" ⚠ cache unavailable at the end of {down} cell(s)"
        cpu = runs.median(key, "pgreactive", "proxy_cpu_us")
        print(
            f"| {key[0]} | {key[1]} | {key[2]} | "
            + " | ".join(cell(key, t) for t in TARGETS)
            + f" | {hit} | {fmt_ratio(runs.ratio(key, 'pgreactive', 'direct'))} "
            f"| {fmt_ratio(runs.ratio(key, 'pgreactive', 'pgpool-memqcache'))} "
            f"| {fmt_ratio(runs.ratio(key, 'pgpool-memqcache', 'direct'))} "
            f"| {'—' if cpu is None else f'{cpu:.0f}'} |"
        )

    writes = [k for k in runs.order if k[0] == "c"]
    if writes:
        print(
            "\nWrite path, workload c (95 % heavy read, 5 % UPDATE), pgbench -r per-statement "
            "average latency in ms (median over reps):\n"
        )
        print(
            "| clients | mode | UPDATE direct | UPDATE pgpool | UPDATE pgreactive "
            "| pgreactive − direct (UPDATE) | SELECT direct | SELECT pgreactive |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for key in writes:
            u = [runs.median(key, t, "upd_ms") for t in TARGETS]
            s = [runs.median(key, t, "sel_ms") for t in ("direct", "pgreactive")]
            diff = f"{u[2] - u[0]:+.3f}" if u[0] is not None and u[2] is not None else "—"
            print(
                f"| {key[1]} | {key[2]} | "
                + " | ".join("—" if v is None else f"{v:.3f}" for v in u)
                + f" | {diff} | "
                + " | ".join("—" if v is None else f"{v:.3f}" for v in s)
                + " |"
            )

    print()
    for key in runs.order:
        workload, clients, mode = key
        if workload == "b":
            r = runs.ratio(key, "pgreactive", "direct")
            p = runs.ratio(key, "pgreactive", "pgpool-memqcache")
            if r is not None:
                low = min(r[1]) if r[1] else r[0]
                print(
                    f"- b c={clients} {mode}: pgreactive/direct {fmt_ratio(r)} → "
                    f"{verdict(r[0], low, REQUIRED, 'NOT met')} (≥ {REQUIRED:.0f}×); "
                    f"vs pgpool memqcache {fmt_ratio(p)} → goal "
                    + (verdict(p[0], min(p[1] or [p[0]]), 1.0, "not met") if p else "—")
                )
        if workload == "a_hot" and clients == 1:
            d, x = runs.median(key, "direct", "lat_ms"), runs.median(key, "pgreactive", "lat_ms")
            if d is not None and x is not None:
                print(
                    f"- a_hot c=1 {mode}: hit latency {x:.3f} ms vs direct {d:.3f} ms "
                    f"({1000 * (x - d):+.0f} µs) → goal {'met' if x <= d else 'not met'}"
                )
    if runs.loads:
        print(
            f"\nload1 before each cell: min {min(runs.loads):.2f}, max {max(runs.loads):.2f} "
            f"(2 CPUs); CPU s used outside the benchmark per cell: max {max(runs.other):.1f}"
        )
    if runs.failures:
        print("\nFailures:")
        print("\n".join(runs.failures))


if __name__ == "__main__":
    main(sys.argv[1:])
