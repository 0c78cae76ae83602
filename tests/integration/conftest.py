"""Fixtures for the integration tests: where a test connects, direct or through the proxy.

`target` runs a test twice, once against Postgres directly and once through the shared
pass-through proxy.  The direct run is the reference: a test that fails only through the
proxy points at a proxy bug, one that fails both ways at the test itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from tests.conftest import PG_DB, PG_HOST, PG_PORT, PG_USER, ProxyProcess, dsn
from tests.integration.upstream_state import assert_upstream_idle


@dataclass(frozen=True)
class Target:
    """Somewhere a client can connect: Postgres itself or a proxy in front of it."""

    name: str  # "direct" or "proxy"
    host: str
    port: int

    def dsn(self, *, dbname: str = PG_DB, user: str = PG_USER, **extra: str) -> str:
        return dsn(self.host, self.port, dbname=dbname, user=user, **extra)

    def url(self, *, dbname: str = PG_DB, user: str = PG_USER) -> str:
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname}"


DIRECT = Target("direct", PG_HOST, PG_PORT)


def proxied(proxy: ProxyProcess) -> Target:
    return Target("proxy", proxy.host, proxy.port)


@pytest.fixture(params=["direct", "proxy"])
def target(request: pytest.FixtureRequest, proxy: ProxyProcess) -> Target:
    """Postgres directly, then the pass-through proxy (a differential pair of runs)."""
    return DIRECT if request.param == "direct" else proxied(proxy)


@pytest.fixture(autouse=True)
def upstream_left_idle(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each cache test: no upstream backend of any running proxy is active or in a
    transaction, and none holds a lock (invariant 8; see upstream_state.py)."""
    yield
    if request.module.__name__.rpartition(".")[2].startswith("test_cache_"):
        assert_upstream_idle()


@pytest.fixture
def unique_name() -> str:
    """A name no other test (or other run) uses, for tables, channels and roles."""
    return f"pgr_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def scratch_table(unique_name: str) -> Iterator[str]:
    """A real (non-temporary) table visible to every connection, dropped afterwards."""
    with psycopg.connect(DIRECT.dsn(), autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {unique_name} (id int PRIMARY KEY, name text NOT NULL, n numeric)"
        )
    try:
        yield unique_name
    finally:
        with psycopg.connect(DIRECT.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {unique_name}")
