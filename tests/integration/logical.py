"""A throwaway cluster with ``wal_level = logical``, and caching proxies that follow its
replication stream (issue 12).

The shared Postgres at :5432 runs with ``wal_level = replica`` and other tests use it, so
replication tests bring their own server: one per test module (initdb + start take about a
second), stopped with ``pg_ctl stop -m immediate`` and removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg

from tests.conftest import ProxyProcess, start_proxy
from tests.integration.cluster import Cluster, throwaway_cluster


@contextlib.contextmanager
def logical_cluster() -> Iterator[Cluster]:
    """A throwaway cluster (tests/integration/cluster.py) with ``wal_level = logical`` and
    every role and replication connections trusted from 127.0.0.1."""
    hba = (
        "local all all trust\n"
        "host all all 127.0.0.1/32 trust\n"
        "host replication all 127.0.0.1/32 trust\n"
    )
    options = "-c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10"
    with throwaway_cluster("pgr-logical-", hba=hba, options=options) as cluster:
        yield cluster


def replicating_proxy(
    cluster: Cluster,
    redis_url: str,
    database: str = "postgres",
    failover: float = 1.0,
    slot: str = "pgreactive",
    tables: tuple[str, ...] = (),
) -> ProxyProcess:
    """A caching proxy in front of `cluster` on `redis_url`, following `database`'s stream
    (catalog and replication user ``postgres``, a superuser)."""
    fd, path = tempfile.mkstemp(prefix="pgr-repl-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(
            f"replication: {{enabled: true, database: {database}, failover_seconds: {failover},"
            f" slot: {slot}, publication: {slot}, tables: [{', '.join(tables)}]}}\n"
            "catalog: {user: postgres}\n"
        )
    try:
        return start_proxy(
            "--upstream", f"postgresql://127.0.0.1:{cluster.port}", "--redis", redis_url,
            "--metrics", "127.0.0.1:0", "--config", path,
        )  # fmt: skip
    finally:
        os.unlink(path)


def readyz(proxy: ProxyProcess) -> dict[str, Any]:
    assert proxy.metrics_url is not None
    try:
        with urllib.request.urlopen(proxy.metrics_url + "/readyz", timeout=5) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    result: dict[str, Any] = json.loads(body)
    return result


def wait_streaming(proxy: ProxyProcess, guard: float = 20.0) -> dict[str, Any]:
    """Wait until `proxy` holds the lease and has caught up; return its replication detail."""
    deadline = time.monotonic() + guard
    while True:
        detail: dict[str, Any] = readyz(proxy).get("replication", {})
        if detail.get("state") == "streaming":
            return detail
        if time.monotonic() > deadline:
            raise AssertionError(f"proxy never streamed: {detail}\n{proxy.log}")
        time.sleep(0.05)


def direct(cluster: Cluster, dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(cluster.dsn(dbname=dbname), autocommit=True)


def events_stream(cluster: Cluster, redis_url: str) -> str:
    """The Redis stream of events of a `replicating_proxy` (its namespace's)."""
    from proxy.config import load, namespace

    upstream = f"postgresql://127.0.0.1:{cluster.port}"
    return namespace(load(None, {}, {"upstream.url": upstream, "redis.url": redis_url})) + (
        ":invalidations"
    )
