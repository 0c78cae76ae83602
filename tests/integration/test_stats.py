"""Per-query-shape statistics through a running proxy: ``/stats`` and ``pgreactive stats``.

A named read (sqlcommenter ``/* name='...' */``) runs as a miss, then (once its fill is
stored) as a hit, then inside a transaction (a bypass counted on the extended-protocol
path); ``select now()`` is bypassed as ``stable_function`` and counted under its
fingerprint.  ``/stats`` must show exactly those counts, and ``pgreactive stats`` (run as
the user runs it) must print them; it must fail with one line and exit code 1 when it has
no server to ask.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from analyzer import analyze
from proxy.tools.stats import WIDTH, render
from tests.conftest import ProxyProcess, scrape, start_proxy
from tests.integration.cache_env import Env, cached, foreign_bump_retry, module_env, read

FILLS_STORED = 'pgreactive_cache_fills_total{result="stored"}'
NOW_SQL = "select now()"
SCHEMA = """
create table items (id int primary key, label text not null);
insert into items values (1, 'one'), (2, 'two');
"""


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    yield from module_env("pgr_stats", SCHEMA)


# --- helpers ----------------------------------------------------------------------------------


def get_stats(proxy: ProxyProcess) -> dict[str, Any]:
    assert proxy.metrics_url
    with urllib.request.urlopen(proxy.metrics_url + "/stats", timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        document: dict[str, Any] = json.loads(response.read())
    return document


def metrics_address(proxy: ProxyProcess) -> str:
    assert proxy.metrics_url
    return proxy.metrics_url.removeprefix("http://")


def run_stats(*args: str) -> subprocess.CompletedProcess[str]:
    """``pgreactive stats ARGS`` as a user runs it, with no PGREACTIVE_* from our env."""
    exe = Path(sys.executable).parent / "pgreactive"
    argv = [str(exe), "stats"] if exe.exists() else [sys.executable, "-m", "proxy", "stats"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PGREACTIVE_")}
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=60, env=environ, check=False
    )


def wait_for_fill(proxy: ProxyProcess, stored_before: float) -> None:
    """Fills are stored in the background: wait (bounded) until one more was stored."""
    deadline = time.monotonic() + 15
    while scrape(proxy).get(FILLS_STORED, 0.0) <= stored_before:
        assert time.monotonic() < deadline, "the miss was never stored"
        time.sleep(0.02)


def table_line(output: str, name: str) -> list[str]:
    """The whitespace-separated cells of the table line of shape `name`."""
    lines = [line for line in output.splitlines() if line.split()[:1] == [name]]
    assert len(lines) == 1, output
    return lines[0].split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- a caching proxy --------------------------------------------------------------------------


def test_stats_count_hits_misses_and_bypasses_per_shape(env: Env) -> None:
    now_runs = 0
    now_shape = analyze(NOW_SQL).fingerprint
    assert now_shape is not None

    def scenario() -> None:
        nonlocal now_runs
        name = f"stats_{uuid.uuid4().hex[:8]}"
        sql = f"select label from items where id = 1 /* name='{name}' */"
        shown = "select label from items where id = $1"
        with env.proxied() as conn:
            cached(env.proxy, conn, "select 'catalog loaded?' as probe")
            stored = scrape(env.proxy).get(FILLS_STORED, 0.0)
            decided = read(env.proxy, conn, sql)[1]
            wait_for_fill(env.proxy, stored)
            decided += read(env.proxy, conn, sql)[1]
            with conn.transaction():  # parameters: the extended protocol's bypass count
                param_sql = f"select label from items where id = %s /* name='{name}' */"
                decided += read(env.proxy, conn, param_sql, (1,))[1]
            now_runs += 1
            decided += read(env.proxy, conn, NOW_SQL)[1]
        assert decided == ["miss", "hit", "bypass:in_transaction", "bypass:stable_function"]

        document = get_stats(env.proxy)
        assert set(document) == {"shapes", "bound", "total"} and document["bound"] == 1000
        assert document["total"] == len(document["shapes"])
        calls = [shape["calls"] for shape in document["shapes"]]
        assert len(calls) >= 3 and calls == sorted(calls, reverse=True)  # probe, named, now
        shapes = {shape["name"]: shape for shape in document["shapes"]}
        named = shapes[name]
        mean = named.pop("mean_latency_ms")
        assert isinstance(mean, float) and mean > 0, named
        assert named == {
            "name": name,
            "database": env.db,
            "sql": shown,  # the first text seen, without its values and comments
            "calls": 3,
            "hits": 1,
            "misses": 1,
            "bypass": {"in_transaction": 1},
        }
        now = shapes[now_shape]
        assert (now["sql"], now["calls"], now["hits"], now["misses"]) == (NOW_SQL, now_runs, 0, 0)
        assert now["bypass"] == {"stable_function": now_runs}
        assert now["mean_latency_ms"] is None  # a bypass is not timed
        check_tool(env.proxy, name, shown, now_shape, now_runs, env.db)

    foreign_bump_retry(scenario)


def check_tool(
    proxy: ProxyProcess, name: str, sql: str, now_shape: str, now_runs: int, db: str
) -> None:
    """`pgreactive stats` prints what /stats holds: the table, and --json as it is."""
    done = run_stats("--metrics", metrics_address(proxy), "--wide")
    assert done.returncode == 0 and done.stderr == "", done
    header = done.stdout.splitlines()[0].split()
    assert header == [
        "NAME", "DATABASE", "CALLS", "HITS", "MISSES", "HIT%", "MEAN_MS", "TOP_BYPASS", "SQL",
    ]  # fmt: skip
    cells = table_line(done.stdout, name)
    assert cells[1:6] == [db, "3", "1", "1", "33.3"], done.stdout
    assert float(cells[6]) > 0
    assert cells[7:9] == ["in_transaction", "(1)"]
    assert " ".join(cells[9:]) == sql
    cells = table_line(done.stdout, now_shape)
    assert cells[2:9] == [str(now_runs), "0", "0", "0.0", "-", "stable_function", f"({now_runs})"]

    raw = run_stats("--metrics", metrics_address(proxy), "--json")
    assert raw.returncode == 0, raw
    assert json.loads(raw.stdout) == get_stats(proxy)  # nothing ran in between


# --- no cache, no server ----------------------------------------------------------------------


def test_stats_with_the_cache_off() -> None:
    proxy = start_proxy("--no-cache", "--metrics", "127.0.0.1:0")
    try:
        assert get_stats(proxy) == {"shapes": [], "cache": "off"}
        done = run_stats("--metrics", metrics_address(proxy))
        assert done.returncode == 0, done
        assert "cache is off" in done.stdout
    finally:
        proxy.stop()


def test_tool_without_a_server_says_so_in_one_line() -> None:
    port = free_port()
    done = run_stats("--metrics", f"127.0.0.1:{port}")
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.startswith(f"pgreactive stats: cannot reach http://127.0.0.1:{port}/stats")
    assert done.stderr.count("\n") == 1


def test_tool_without_metrics_configured_asks_the_default_address() -> None:
    """No flag, file or environment: the address of `make run` and the image, named in the
    one line it prints when nothing answers there."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 9187)) == 0:
            pytest.skip("something listens on 127.0.0.1:9187 (a `make run`?)")
    done = run_stats()
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.startswith("pgreactive stats: cannot reach http://127.0.0.1:9187/stats")
    assert "(the default: give --metrics HOST:PORT, or --config FILE" in done.stderr
    assert done.stderr.count("\n") == 1


def test_tool_pointed_at_something_else_says_so() -> None:
    """Postgres's port speaks no HTTP: one line, exit 1, no traceback."""
    done = run_stats("--metrics", "127.0.0.1:5432")
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.startswith("pgreactive stats: ") and done.stderr.count("\n") == 1


def test_tool_with_a_bad_flag_exits_2() -> None:
    done = run_stats("--metrics", "nonsense")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done


# --- the table (pure) -------------------------------------------------------------------------


def test_table_columns_are_aligned() -> None:
    document = {
        "bound": 1000,
        "shapes": [
            {"name": "a.very.long.query.name", "sql": "select 1", "calls": 1200, "hits": 1100,
             "misses": 100, "bypass": {}, "mean_latency_ms": 0.25},
            {"name": "b", "sql": "select now()", "calls": 7, "hits": 0, "misses": 0,
             "bypass": {"stable_function": 5, "in_transaction": 2}, "mean_latency_ms": None},
        ],
    }
    lines = render(document).splitlines()
    assert len(lines) == 4 and lines[-1].startswith("2 shapes")
    sql_at = lines[0].index("SQL")
    assert lines[1][sql_at:] == "select 1" and lines[2][sql_at:] == "select now()"
    calls_end = lines[0].index("CALLS") + len("CALLS")
    assert lines[1][:calls_end].endswith(" 1200") and lines[2][:calls_end].endswith("    7")
    assert lines[1].split()[5:8] == ["91.7", "0.250", "-"]  # "-": no database
    assert lines[2].split()[5:9] == ["0.0", "-", "stable_function", "(5)"]


def test_table_lines_are_cut_to_the_width_unless_wide() -> None:
    long_sql = "select " + ", ".join(f"column_{n}" for n in range(60)) + " from t"
    document = {"bound": 1000, "total": 5, "shapes": [
        {"name": "q", "database": "app", "sql": long_sql, "calls": 1, "hits": 0, "misses": 1,
         "bypass": {}, "mean_latency_ms": None},
    ]}  # fmt: skip
    lines = render(document).splitlines()
    assert max(len(line) for line in lines) == WIDTH and lines[1].endswith("...")
    assert lines[-1].startswith("1 of 5 shapes")
    assert render(document, None).splitlines()[1].endswith(long_sql)


# --- no values on the endpoint (issue 13) -----------------------------------------------------

PERSONAL = (
    "alice.smith@example.com", "Alice Smith", "Bob Jones", "4242424242", "jane.doe@example.org",
    "Carol Miller", "mallory@example.net", "dave@example.com", "Eve Adams", "frank@example.com",
    "+44 20 7946 0958", "1987-03-14",
)  # fmt: skip
PERSONAL_READS = (
    "select label from items where label = 'alice.smith@example.com'",
    "select label from items where label in ('Alice Smith', 'Bob Jones') and id < 4242424242",
    "select now(), 'jane.doe@example.org'",  # bypassed: stable function
    "selec 'mallory@example.net'",  # unparseable (Postgres answers with an error)
    "/* user='dave@example.com' */ select 1 as x, 'Eve Adams' as who",
    "select label from items where label = 'frank@example.com' /* name='find.by.email' */",
    "select label from items where label = $$+44 20 7946 0958$$ or label = '1987-03-14'",
)


def test_stats_shows_no_literal_values(env: Env) -> None:
    """Reads full of personal-looking values, hits, misses and bypasses (in a transaction,
    unparseable, a stable function): neither /stats nor `pgreactive stats` shows a value."""
    with env.proxied() as conn:
        for sql in PERSONAL_READS:
            try:
                for _ in range(2):
                    conn.execute(sql).fetchall()
            except psycopg.Error:
                conn.rollback()
        with conn.transaction():
            conn.execute("select label from items where label = 'Carol Miller'").fetchall()
    outputs = {
        "/stats": json.dumps(get_stats(env.proxy)),
        "pgreactive stats": run_stats("--metrics", metrics_address(env.proxy), "--wide").stdout,
        "pgreactive stats --json": run_stats(
            "--metrics", metrics_address(env.proxy), "--json"
        ).stdout,
    }
    shown = {s["sql"] for s in get_stats(env.proxy)["shapes"] if s["database"] == env.db}
    # The reads were counted (else this test could not fail): the texts are there, valueless.
    assert "select label from items where label = $1" in shown, shown
    assert "select label from items where label = $1 or label = $2" in shown, shown
    assert "select now(), $1" in shown, shown
    assert any(s["name"] == "find.by.email" for s in get_stats(env.proxy)["shapes"])
    for where, text in outputs.items():
        assert text, where
        leaked = [value for value in PERSONAL if value in text]
        assert not leaked, f"{where} shows {leaked}"
