"""Every PromQL query in docs/metrics.md returns data from a real Prometheus (issue 13).

A caching proxy serves a steady mix of hits, misses, bypasses, writes and new connections
while a Prometheus server of the test's own (Debian's `prometheus` binary, which `.ci/run`
installs; skipped with the reason when it is missing) scrapes it every second.  Each query
of the doc is then asked through Prometheus' HTTP API until it returns a sample with a
finite value: a query whose labels do not match, or that divides series that never pair
up, returns nothing and fails here.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ProxyProcess, start_caching_proxy

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
_WAIT = 90.0  # seconds for each query to return data (a hang guard, not a measurement)


def documented_queries() -> list[str]:
    """The ```promql blocks of docs/metrics.md, comment lines left out."""
    blocks = re.findall(r"```promql\n(.*?)```", DOC.read_text(), re.S)
    queries = [
        " ".join(line for line in block.splitlines() if not line.lstrip().startswith("#"))
        for block in blocks
    ]
    assert len(queries) >= 5, queries
    return queries


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def proxy() -> Iterator[ProxyProcess]:
    p = start_caching_proxy()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def traffic(proxy: ProxyProcess) -> Iterator[None]:
    """Hits, misses, bypasses, invalidating writes and new upstream connections, until the
    module's tests are done."""
    table = f"promql_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"create table {table} (id int primary key, v int not null)")
        conn.execute(f"insert into {table} select g, g from generate_series(1, 20) g")
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        n = 0
        try:
            while not stop.is_set():
                n += 1
                with psycopg.connect(proxy.dsn(), autocommit=True) as conn:  # a connect
                    for _ in range(10):  # a miss, then hits once the fill is stored
                        conn.execute(f"select v from {table} where id = {n % 20 + 1}").fetchall()
                        conn.execute("select now()").fetchall()  # bypass: stable_function
                        stop.wait(0.01)
                    conn.execute(f"update {table} set v = v + 1 where id = {n % 20 + 1}")
                stop.wait(0.05)
        except BaseException as exc:  # reported by the fixture
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute(f"drop table if exists {table}")
    assert not failures, failures


@pytest.fixture(scope="module")
def prometheus(proxy: ProxyProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus server scraping `proxy` every second; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian package prometheus; .ci/run)")
    assert proxy.metrics_url
    directory = tmp_path_factory.mktemp("prometheus")
    config = directory / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: pgreactive\n"
        f"    static_configs: [{{targets: ['{proxy.metrics_url.removeprefix('http://')}']}}]\n"
    )
    port = free_port()
    log = (directory / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _WAIT
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (directory / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus never became ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    reply = _get_json(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert reply["status"] == "success", reply
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


@pytest.mark.parametrize("expr", documented_queries())
def test_documented_query_returns_data(prometheus: str, traffic: None, expr: str) -> None:
    deadline = time.monotonic() + _WAIT
    while True:
        result = query(prometheus, expr)
        values = [float(sample["value"][1]) for sample in result]
        if values and all(math.isfinite(v) for v in values):
            return
        assert time.monotonic() < deadline, f"{expr!r} returned {result} for {_WAIT} s"
        time.sleep(1)


def test_the_scrape_is_healthy(prometheus: str, traffic: None) -> None:
    """The target is up: a failed scrape would make every query above fail for that reason."""
    deadline = time.monotonic() + _WAIT
    while not query(prometheus, 'up{job="pgreactive"} == 1'):
        assert time.monotonic() < deadline, query(prometheus, "up")
        time.sleep(1)
