"""Namespaces (issue 13): two deployments on one Redis never see each other's events.

Redis pub/sub ignores the database number, and two deployments may share even the database:
each proxy here has a namespace of its own (`namespace` in its `--config`), which prefixes
its keys, its channel and its stream, while `events.channel` is the same default for both.
Each proxy writes to the same table of the same Postgres database; every `events tail` --
live, and `--since 0` (replay of the stream, then live) -- must print exactly its own
proxy's events, told apart by `events.source`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from proxy.registry import REGISTRY_KEY
from tests.conftest import CACHE_REDIS_DB, ProxyProcess, start_caching_proxy
from tests.integration.cache_env import admin, connect, forget
from tests.integration.test_tools_events import Tail

WRITES = 3  # per proxy, before and after the tails start


@dataclass(frozen=True)
class Deployment:
    name: str  # its namespace, and its events' source
    config: Path
    proxy: ProxyProcess


@pytest.fixture
def deployments(tmp_path: Path) -> Iterator[tuple[str, list[Deployment]]]:
    tag = uuid.uuid4().hex[:10]
    db = f"pgr_ns_{tag}"
    names = [f"test-a-{tag}", f"test-b-{tag}"]
    started: list[Deployment] = []
    admin(f"create database {db}")
    try:
        admin("create table items (id int primary key, v text not null);"
              "insert into items values (1, 'x')", db)
        for name in names:
            config = tmp_path / f"{name}.yaml"
            config.write_text(f"namespace: {name}\nevents: {{source: {name}}}\n")
            started.append(Deployment(name, config, start_caching_proxy("--config", str(config))))
        yield db, started
    finally:
        for deployment in started:
            deployment.proxy.stop()
        admin(f"drop database if exists {db} with (force)")
        forget(db)
        with redis.Redis(host="127.0.0.1", port=6379, db=CACHE_REDIS_DB) as client:
            for name in names:
                keys = list(client.scan_iter(match=f"{name}:*", count=1000))
                if keys:
                    client.delete(*keys)
                client.hdel(REGISTRY_KEY, name)


def _write(deployment: Deployment, db: str, value: str) -> None:
    with connect(deployment.proxy.dsn(dbname=db)) as conn:
        conn.execute("update items set v = %s where id = 1", (value,))


def _sources(tail: Tail, n: int) -> list[str]:
    return [json.loads(tail.next()[1])["source"] for _ in range(n)]


def test_two_namespaces_on_one_redis_see_only_their_own_events(
    deployments: tuple[str, list[Deployment]],
) -> None:
    db, (a, b) = deployments
    live = {d.name: Tail(d.config) for d in (a, b)}
    try:
        for n in range(WRITES):
            _write(a, db, f"a{n}")
            _write(b, db, f"b{n}")
        # --since 0: the stream's whole content (this namespace's only), then live.
        since = {d.name: Tail(d.config, "--since", "0") for d in (a, b)}
        try:
            for n in range(WRITES):
                _write(b, db, f"B{n}")
                _write(a, db, f"A{n}")
            for d in (a, b):
                # Each tail gets 2 * WRITES events, all of its own deployment; a foreign
                # event would take one of those places.
                assert _sources(live[d.name], 2 * WRITES) == [d.name] * (2 * WRITES)
                assert _sources(since[d.name], 2 * WRITES) == [d.name] * (2 * WRITES)
            # One more write through each: it is the next line of its own tails only, so
            # nothing foreign was queued behind the events counted above.
            _write(a, db, "last-a")
            _write(b, db, "last-b")
            for d in (a, b):
                assert _sources(live[d.name], 1) == [d.name]
                assert _sources(since[d.name], 1) == [d.name]
        finally:
            for tail in since.values():
                assert tail.stop() == 0, tail.errors
    finally:
        for tail in live.values():
            assert tail.stop() == 0, tail.errors
    for d in (a, b):
        assert any(f"subscribed to {d.name}:invalidations" in line for line in live[d.name].errors)
