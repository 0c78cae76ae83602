"""Writes that bypass the proxy, seen through the replication stream (issue 12): not a test.

1. ``visible``: per kind of the replication test (UPDATE, INSERT, DELETE, TRUNCATE, a
   trigger-written table, a cascade delete, a partition read through its parent), N trials
   of "cache a read through the proxy (until it is a hit), write directly on Postgres
   (autocommit), read through the proxy until it shows the write"; the time from the write's
   return to the first read that shows it, p50/p99/max (acceptance 1: p99 <= 100 ms over
   1,000 trials).
2. ``load``: direct single-row UPDATEs paced at RATE per second for SECONDS (two writer
   threads); the reader's lag per transaction (commit on Postgres to invalidation done, from
   its `pgreactive_replication_lag_seconds` histogram, so quantiles are bucket bounds, and
   the `last_lag` gauge sampled every 100 ms), and the slot's retained WAL
   (``pg_current_wal_lsn() - restart_lsn``, read from Postgres each second) before, at its
   peak and after (acceptance 4).

A throwaway ``wal_level = logical`` cluster, a Redis of its own and two proxies, as in
tests/integration/test_replication.py: reads go through the instance that does *not* read
the stream, so each invalidation crosses Redis.  Needs root (initdb runs as postgres).

    PYTHONPATH=. .venv/bin/python bench/replication.py [--trials 1000] [--rate 1000]
        [--seconds 60] [--only visible|load]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import psycopg

from tests.conftest import ProxyProcess, scrape
from tests.integration.cluster import Cluster
from tests.integration.logical import direct, logical_cluster, replicating_proxy, wait_streaming
from tests.integration.test_cache_hits import throwaway_redis
from tests.integration.test_replication import KINDS, SETUP, visible_after


def _ms(values: list[float]) -> str:
    s = sorted(values)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    return (
        f"p50 {statistics.median(s) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms,"
        f" max {s[-1] * 1000:.1f} ms"
    )


def visible(cluster: Cluster, proxy: ProxyProcess, trials: int) -> None:
    """Each kind of direct write of the replication test (tests/integration/
    test_replication.py), `trials` times, timed as the test times them."""
    with psycopg.connect(proxy.dsn(dbname="postgres"), autocommit=True,
                         prepare_threshold=None) as conn:  # fmt: skip
        for kind, spec in KINDS.items():
            delays = [visible_after(proxy, cluster, spec, i, conn) for i in range(trials)]
            print(f"visible {kind}: {_ms(delays)} over {trials} trials", flush=True)


def _slot_bytes(cluster: Cluster) -> tuple[int, int]:
    """(restart_lsn, confirmed_flush_lsn) behind the current WAL position, in bytes."""
    with direct(cluster) as conn:
        row = conn.execute(
            "select (pg_current_wal_lsn() - restart_lsn)::bigint,"
            " (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint"
            " from pg_replication_slots where slot_name = 'pgreactive'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _histogram(values: dict[str, float]) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of the lag histogram."""
    out = []
    for sample, count in values.items():
        if sample.startswith("pgreactive_replication_lag_seconds_bucket{"):
            le = sample.split('le="')[1].split('"')[0]
            out.append((float("inf") if le == "+Inf" else float(le), count))
    return sorted(out)


def _quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> str:
    counts = [(bound, a - b) for (bound, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1]
    for bound, count in counts:
        if count >= q * total:
            return f"<= {bound * 1000:g} ms"
    return "?"


def load(cluster: Cluster, reader: ProxyProcess, rate: int, seconds: int) -> None:
    print(f"slot before: retained {_slot_bytes(cluster)[0]} bytes", flush=True)
    before = scrape(reader)
    stop = threading.Event()
    done = [0, 0]
    lags: list[float] = []
    retained: list[tuple[float, int, int]] = []
    started = time.monotonic()

    def writer(n: int, writers: int) -> None:
        with direct(cluster) as conn:
            i = n
            while not stop.is_set():
                due = started + i / rate
                if (ahead := due - time.monotonic()) > 0:
                    time.sleep(ahead)
                conn.execute("update items set v = %s where id = %s", (str(i), i % 2 + 1))
                done[n] += 1
                i += writers

    threads = [threading.Thread(target=writer, args=(n, 2)) for n in range(2)]
    for t in threads:
        t.start()
    next_slot = 0.0
    while (elapsed := time.monotonic() - started) < seconds:
        last = scrape(reader).get('pgreactive_replication_last_lag_seconds{database="postgres"}')
        if last is not None:
            lags.append(last)
        if elapsed >= next_slot:
            next_slot += 1.0
            retained.append((elapsed, *_slot_bytes(cluster)))
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    writes, took = sum(done), time.monotonic() - started
    time.sleep(2.0)  # the reader drains what is left
    after = scrape(reader)
    hb, ha = _histogram(before), _histogram(after)
    observed = ha[-1][1] - hb[-1][1]
    print(f"load: {writes} direct writes in {took:.1f} s = {writes / took:.0f}/s (target {rate}/s)")
    print(f"lag histogram: {observed:.0f} transactions; p50 {_quantile(hb, ha, 0.5)},"
          f" p99 {_quantile(hb, ha, 0.99)}, max {_quantile(hb, ha, 1.0)}")  # fmt: skip
    print(f"last-lag gauge sampled every 100 ms ({len(lags)} samples): {_ms(lags)}")
    peak = max(retained, key=lambda r: r[1])
    print(f"slot: retained at the peak {peak[1]} bytes (t={peak[0]:.0f} s),"
          f" confirmed-behind at the peak {max(r[2] for r in retained)} bytes;"
          f" every 10 s: {[r[1] for r in retained[::10]]}")  # fmt: skip
    print(f"slot after: retained {_slot_bytes(cluster)[0]} bytes", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--only", choices=["visible", "load"])
    args = p.parse_args()
    with logical_cluster() as cluster, throwaway_redis() as redis_url:
        with direct(cluster) as conn:
            conn.execute(SETUP)
        reader = replicating_proxy(cluster, redis_url)
        other = None
        try:
            wait_streaming(reader)
            other = replicating_proxy(cluster, redis_url)
            if args.only in (None, "visible"):
                visible(cluster, other, args.trials)
            if args.only in (None, "load"):
                load(cluster, reader, args.rate, args.seconds)
        finally:
            if other is not None:
                other.stop()
            reader.stop()


if __name__ == "__main__":
    main()
