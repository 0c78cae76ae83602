"""What an in-flight mark costs a committing write (issue 9, point 3): not a test.

1. Backend: the Redis scripts alone, interleaved — today's confirm (``bump``) versus the
   whole in-flight protocol (``mark`` before the commit + ``bump`` with the token after).
2. End to end (with ``--base DIR``, a checkout of the code before the marks): one client's
   sequential autocommit ``UPDATE ... WHERE id = $1`` through a caching proxy started from
   this tree and one started from DIR, alternating in rounds.

    .venv/bin/python bench/inflight.py [--base /tmp/pgr-base] [--n 2000]

Redis db 3 is flushed first; Postgres and Redis on their standard local ports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

from cache.store import RedisBackend

REDIS = "redis://127.0.0.1:6379/3"
PG = "postgresql://postgres@127.0.0.1:5432/postgres"
KEYS = ["pgr:{b}:g:t", "pgr:{b}:g:t#organization_id:-"]


def _us(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9)]
    return f"median {statistics.median(ordered) * 1e6:.0f} µs, p90 {p90 * 1e6:.0f} µs"


async def backend(n: int) -> None:
    b = RedisBackend.from_url(REDIS, op_timeout=2.0, connect_timeout=2.0)
    await b.client.flushdb()
    await b.start()
    bump: list[float] = []
    marked: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        await b.bump(KEYS)
        t1 = time.perf_counter()
        await b.mark(KEYS, f"bench-{i}", 30_000)
        await b.bump(KEYS, [f"bench-{i}"])
        t2 = time.perf_counter()
        bump.append(t1 - t0)
        marked.append(t2 - t1)
    await b.close()
    print(f"backend, {n} each: bump alone {_us(bump)}; mark + bump(token) {_us(marked)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proxy(source: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    argv = [sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}", "--upstream",
            "postgresql://127.0.0.1:5432", "--redis", REDIS, "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(source), "PGREACTIVE_CATALOG_USER": "postgres"}
    process = subprocess.Popen(argv, cwd=source, env=env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"proxy from {source} did not start")


def end_to_end(base: Path, n: int) -> None:
    table = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v bigint NOT NULL)")
        conn.execute(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(0, 9) g")
    targets = {"with marks": Path(__file__).resolve().parent.parent, "before": base}
    procs = {name: _proxy(src) for name, src in targets.items()}
    try:
        conns = {
            name: psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres",
                                  autocommit=True)
            for name, (_, port) in procs.items()
        }
        samples: dict[str, list[float]] = {name: [] for name in conns}
        sql = f"UPDATE {table} SET v = v + 1 WHERE id = %s"
        for conn in conns.values():  # warm-up (catalog load, prepared statements)
            for i in range(50):
                conn.execute(sql, (i % 10,))
        for round_ in range(n // 100):
            for name, conn in conns.items():
                for i in range(100):
                    t0 = time.perf_counter()
                    conn.execute(sql, ((round_ + i) % 10,))
                    samples[name].append(time.perf_counter() - t0)
        for name, values in samples.items():
            print(f"end to end, {len(values)} autocommit UPDATEs, {name}: {_us(values)}")
        for conn in conns.values():
            conn.close()
    finally:
        for process, _ in procs.values():
            process.terminate()
            process.wait()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, help="a checkout of the code before the marks")
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(backend(args.n))
    if args.base is not None:
        end_to_end(args.base, args.n)


if __name__ == "__main__":
    main()
