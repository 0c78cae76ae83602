"""The metrics port: every metric docs/metrics.md documents is exposed and moves; /readyz.

The documented metric names are read from docs/metrics.md itself, so the reference and the
exposition cannot drift apart.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ProxyProcess, scrape, start_caching_proxy, start_proxy

DOC = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()


def _documented() -> dict[str, str]:
    """{metric name: type} from the table of docs/metrics.md."""
    rows = re.findall(r"^\| `(pgreactive_\w+)` \| (\w+) \|", DOC, re.M)
    assert len(rows) >= 12, rows
    return dict(rows)


def _get(proxy: ProxyProcess, path: str) -> tuple[int, str]:
    assert proxy.metrics_url
    try:
        with urllib.request.urlopen(proxy.metrics_url + path, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _total(values: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for sample, value in values.items():
        metric, _, rest = sample.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


@pytest.fixture
def caching_proxy() -> Iterator[ProxyProcess]:
    p = start_caching_proxy()
    yield p
    p.stop()


def test_every_documented_metric_is_exposed_with_its_type(caching_proxy: ProxyProcess) -> None:
    _, text = _get(caching_proxy, "/metrics")
    exposed = dict(re.findall(r"^# TYPE (pgreactive_\w+) (\w+)$", text, re.M))
    for name, kind in _documented().items():
        # (a counter's TYPE line names it with or without `_total`, by client version)
        found = exposed.get(name) or exposed.get(name.removesuffix("_total"))
        assert found is not None, f"{name} is documented but not exposed"
        assert found == kind, f"{name}: documented {kind}, exposed {found}"


def test_metrics_move_on_hit_miss_bypass_and_invalidation(caching_proxy: ProxyProcess) -> None:
    table = f"m_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(caching_proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
        try:
            before = scrape(caching_proxy)
            query = f"SELECT v FROM {table} WHERE id = 1"
            conn.execute(query).fetchall()  # miss (and fill)
            deadline = time.monotonic() + 10
            while True:  # the fill is stored in the background: read until a hit
                conn.execute(query).fetchall()
                after = scrape(caching_proxy)
                if _total(after, "pgreactive_cache_queries_total", outcome="hit") > _total(
                    before, "pgreactive_cache_queries_total", outcome="hit"
                ) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            conn.execute("SELECT now()").fetchall()  # bypass: stable_function
            conn.execute(f"UPDATE {table} SET v = 'b' WHERE id = 1")  # invalidation + event
            after = scrape(caching_proxy)
        finally:
            conn.execute(f"DROP TABLE {table}")

    def moved(name: str, **labels: str) -> bool:
        return _total(after, name, **labels) > _total(before, name, **labels)

    assert moved("pgreactive_cache_queries_total", outcome="hit")
    assert moved("pgreactive_cache_queries_total", outcome="miss")
    assert moved("pgreactive_cache_queries_total", outcome="bypass", reason="stable_function")
    assert moved("pgreactive_cache_fills_total", result="stored")
    assert moved("pgreactive_invalidations_total")
    assert moved("pgreactive_events_published_total") or _eventually_published(
        caching_proxy, before
    )
    assert moved("pgreactive_query_duration_seconds_count", outcome="hit")
    assert moved("pgreactive_relayed_bytes_total", direction="to_client")
    assert after["pgreactive_cache_available"] == 1
    assert after["pgreactive_client_connections"] >= 1


def _eventually_published(proxy: ProxyProcess, before: dict[str, float]) -> bool:
    """Events are published just after the writer is released: give it a moment."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _total(scrape(proxy), "pgreactive_events_published_total") > _total(
            before, "pgreactive_events_published_total"
        ):
            return True
        time.sleep(0.05)
    return False


def test_readyz_follows_the_upstream(caching_proxy: ProxyProcess) -> None:
    status, body = _get(caching_proxy, "/readyz")
    assert status == 200
    assert json.loads(body) == {"upstream": True, "cache": "redis up"}
    assert _get(caching_proxy, "/healthz") == (200, "ok\n")


def test_readyz_is_unready_while_the_upstream_is_down() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    proxy = start_proxy(
        "--no-cache", "--metrics", "127.0.0.1:0", "--upstream", f"postgresql://127.0.0.1:{closed}"
    )
    try:
        status, body = _get(proxy, "/readyz")
        assert status == 503
        assert json.loads(body) == {"upstream": False, "cache": "off"}
        assert _get(proxy, "/healthz")[0] == 200  # alive, just not ready
    finally:
        proxy.stop()


def test_a_bearer_token_guards_metrics_and_stats_but_not_the_probes(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    proxy = start_proxy("--metrics", "127.0.0.1:0", env={"PGREACTIVE_METRICS_TOKEN": token})
    try:
        assert proxy.metrics_url
        for path in ("/metrics", "/stats"):
            assert _get(proxy, path)[0] == 401
            for wrong in ("Bearer nope", f"Basic {token}", token, "Bearer caf\u00e9"):
                request = urllib.request.Request(
                    proxy.metrics_url + path, headers={"Authorization": wrong}
                )
                with pytest.raises(urllib.error.HTTPError) as info:
                    urllib.request.urlopen(request, timeout=10)
                assert info.value.code == 401
            request = urllib.request.Request(
                proxy.metrics_url + path, headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        assert _get(proxy, "/healthz")[0] == 200
        assert _get(proxy, "/readyz")[0] == 200
        # The stats tool sends the token of the configuration it is given.
        config = tmp_path / "pgreactive.yaml"
        address = proxy.metrics_url.removeprefix("http://")
        config.write_text(f"metrics: {{listen: '{address}', token: '{token}'}}\n")
        exe = Path(sys.executable).with_name("pgreactive")
        done = subprocess.run(
            [str(exe), "stats", "--config", str(config)], capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0 and "0 shapes" in done.stdout, done
    finally:
        proxy.stop()


def test_stats_sort_and_limit_options(caching_proxy: ProxyProcess) -> None:
    status, body = _get(caching_proxy, "/stats?sort=name&limit=0")
    assert status == 200 and json.loads(body)["shapes"] == []
    assert _get(caching_proxy, "/stats?sort=size")[0] == 400
    assert _get(caching_proxy, "/stats?limit=-1")[0] == 400
