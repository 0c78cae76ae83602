"""What reading a session's state back costs (issue 9 §2): the proxy's query itself, on the
server (`REREAD_SQL` against `SELECT 1`, directly), connection set-up (read once at start) and
a `DO` followed by a read (read again after the DO), through a caching proxy, a relaying
proxy (--no-cache) and directly, interleaved in one run.

    PYTHONPATH=. .venv/bin/python bench/session_state.py [ROUNDS]

Starts its own two proxies (memory backend) against 127.0.0.1:5432, database `test`.
Prints the median latency of one operation over ROUNDS rounds of 200 operations per target.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import psycopg

from proxy.state import REREAD_SQL
from tests.conftest import PG_HOST, PG_PORT, dsn, start_proxy

OPS = 200


def _connect_query(conninfo: str) -> Callable[[], None]:
    def run() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SELECT 1").fetchall()

    return run


Conn = psycopg.Connection[tuple[object, ...]]


def _do_then_read(conninfo: str) -> tuple[Callable[[], None], Conn]:
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.execute("CREATE TABLE IF NOT EXISTS bench_state (id int primary key, v text)")
    conn.execute("INSERT INTO bench_state VALUES (1, 'x') ON CONFLICT DO NOTHING")

    def run() -> None:
        conn.execute("DO $$ BEGIN END $$")
        conn.execute("SELECT v FROM bench_state WHERE id = 1").fetchall()

    return run, conn


def _time(run: Callable[[], None]) -> list[float]:
    out = []
    for _ in range(OPS):
        start = time.perf_counter()
        run()
        out.append((time.perf_counter() - start) * 1e6)
    return out


def _server_cost(rounds: int) -> None:
    with psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True) as conn:
        times: dict[str, list[float]] = {"SELECT 1": [], "REREAD_SQL": []}
        for _ in range(rounds):
            for label, sql in (("SELECT 1", "SELECT 1"), ("REREAD_SQL", REREAD_SQL)):
                times[label] += _time(lambda sql=sql: conn.execute(sql).fetchall())
    for label, values in times.items():
        print(f"direct round trip of {label}: {statistics.median(values):.0f} µs")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    caching = start_proxy(env={"PGREACTIVE_CATALOG_USER": "postgres"})
    relaying = start_proxy("--no-cache")
    try:
        targets = {
            "direct": dsn(PG_HOST, PG_PORT),
            "--no-cache": relaying.dsn(),
            "cache on": caching.dsn(),
        }
        connect = {name: _connect_query(conninfo) for name, conninfo in targets.items()}
        do_read = {name: _do_then_read(conninfo) for name, conninfo in targets.items()}
        results: dict[str, dict[str, list[float]]] = {"connect": {}, "do+read": {}}
        for _ in range(rounds):
            for name in targets:
                results["connect"].setdefault(name, []).extend(_time(connect[name]))
                results["do+read"].setdefault(name, []).extend(_time(do_read[name][0]))
        _server_cost(rounds)
        print("| operation | " + " | ".join(targets) + " |")
        print("|---|" + "---:|" * len(targets))
        labels = {"connect": "connect + SELECT 1 + close", "do+read": "DO, then a cacheable read"}
        for op, per_target in results.items():
            cells = [f"{statistics.median(per_target[name]):.0f} µs" for name in targets]
            print(f"| {labels[op]} | " + " | ".join(cells) + " |")
        for _, conn in do_read.values():
            conn.close()
    finally:
        caching.stop()
        relaying.stop()


if __name__ == "__main__":
    main()
