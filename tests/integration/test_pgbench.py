"""pgbench through the proxy: short runs in every query mode must finish with zero errors.

A scratch database is created through the proxy and initialised with `pgbench -i -s 1`
through the proxy (COPY, VACUUM, DDL); it is dropped at the end.  Each run lasts a few
seconds with 4 clients on 2 threads; nothing here measures speed.  After a read-write run,
the number of rows pgbench_history gained must equal the number of transactions pgbench
says it processed: every transaction committed exactly once.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ProxyProcess
from tests.integration.conftest import DIRECT, Target, proxied

RUN_SECONDS = "3"
TIMEOUT = 120  # hang guard only

PIPELINE_SCRIPT = """\
\\set aid random(1, 100000 * :scale)
\\set delta random(-5000, 5000)
\\startpipeline
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :delta, now());
END;
\\endpipeline
"""


def pgbench(target: Target, dbname: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return subprocess.run(
        ["pgbench", "-h", target.host, "-p", str(target.port), "-U", "postgres", *args, dbname],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def bench_db(proxy: ProxyProcess) -> Iterator[str]:
    """A scratch database created and initialised through the proxy."""
    name = f"pgr_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(proxied(proxy).dsn(dbname="postgres"), autocommit=True) as conn:
        conn.execute(f"create database {name}")
    try:
        init = pgbench(proxied(proxy), name, "-i", "-s", "1", "-q")
        assert init.returncode == 0, init.stdout + init.stderr
        assert "done in" in init.stderr
        yield name
    finally:
        with psycopg.connect(DIRECT.dsn(dbname="postgres"), autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")


def _history_rows(dbname: str) -> int:
    with psycopg.connect(DIRECT.dsn(dbname=dbname)) as conn:
        row = conn.execute("select count(*) from pgbench_history").fetchone()
    assert row is not None
    return int(row[0])


def _check(run: subprocess.CompletedProcess[str], proxy: ProxyProcess) -> int:
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{output}\nproxy log:\n{proxy.log[-3000:]}"
    assert "number of failed transactions: 0 " in output, output
    assert "aborted" not in output, output
    processed = re.search(r"number of transactions actually processed: (\d+)", output)
    assert processed is not None, output
    assert int(processed.group(1)) > 0
    return int(processed.group(1))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
@pytest.mark.parametrize(
    ("script", "writes"), [("-S", False), ("-N", True)], ids=["select-only", "simple-update"]
)
def test_builtin_scripts(
    proxy: ProxyProcess, bench_db: str, mode: str, script: str, writes: bool
) -> None:
    before = _history_rows(bench_db)
    run = pgbench(
        proxied(proxy),
        bench_db,
        "-n",  # no vacuum: it would also truncate pgbench_history
        script,
        "-M",
        mode,
        "-T",
        RUN_SECONDS,
        "-c",
        "4",
        "-j",
        "2",
    )
    processed = _check(run, proxy)
    assert f"query mode: {mode}" in run.stdout
    grew = _history_rows(bench_db) - before
    assert grew == (processed if writes else 0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["extended", "prepared"])
def test_pipelined_custom_script(
    proxy: ProxyProcess, bench_db: str, mode: str, tmp_path: Path
) -> None:
    script = tmp_path / "pipeline.sql"
    script.write_text(PIPELINE_SCRIPT)
    before = _history_rows(bench_db)
    run = pgbench(
        proxied(proxy),
        bench_db,
        "-n",
        "-f",
        str(script),
        "-M",
        mode,
        "-T",
        RUN_SECONDS,
        "-c",
        "4",
        "-j",
        "2",
    )
    processed = _check(run, proxy)
    assert _history_rows(bench_db) - before == processed
