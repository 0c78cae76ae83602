"""``pgreactive replication install``: DDL run directly on Postgres reaches the proxy at once
(issue 12, "DDL that bypasses the proxy").

A throwaway ``wal_level = logical`` cluster (`tests.integration.logical`) and one proxy
following its stream, with the default ``catalog.max_age`` (300 s): without the event
trigger, a direct ``ALTER TABLE ... ADD COLUMN`` leaves ``SELECT *`` served from the cache in
its old shape, and a direct ``CREATE VIEW`` stays unknown to the catalog (bypass
``relation_kind``) for that long, so each test here fails without it.  The tool is run as a
user runs it: the installed ``pgreactive`` script as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ProxyProcess, scrape
from tests.integration.cache_env import decisions
from tests.integration.cluster import Cluster
from tests.integration.logical import direct, logical_cluster, replicating_proxy, wait_streaming
from tests.integration.proxies import assert_no_crash
from tests.integration.test_cache_hits import throwaway_redis

PGREACTIVE = str(Path(sys.executable).with_name("pgreactive"))
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PGREACTIVE_")}
GUARD = 10.0  # seconds: far below catalog.max_age (300), far above the stream's lag
TRIGGERS = ["pgreactive_ddl_command_end", "pgreactive_sql_drop"]


def tool(cluster: Cluster, action: str) -> subprocess.CompletedProcess[str]:
    argv = [
        PGREACTIVE, "replication", action, "--upstream", f"postgresql://127.0.0.1:{cluster.port}",
        "--database", "postgres", "--user", "postgres",
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=CLEAN_ENV)


def event_triggers(cluster: Cluster) -> list[tuple[str, str, str]]:
    with direct(cluster) as conn:
        rows = conn.execute(
            "select evtname, evtevent, evtfoid::regproc::text from pg_event_trigger order by 1"
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with logical_cluster() as c:
        with direct(c) as conn:
            conn.execute(
                "create table shape (id int primary key, v text);"
                " insert into shape values (1, 'a');"
                " create role app login; grant all on schema public to app;"
                " alter table shape owner to app"
            )
        yield c


@pytest.fixture(scope="module")
def proxy(cluster: Cluster) -> Iterator[ProxyProcess]:
    with throwaway_redis() as url:
        p = replicating_proxy(cluster, url)
        try:
            wait_streaming(p)
            yield p
            assert_no_crash(p)
        finally:
            p.stop()


def test_install_is_idempotent_and_uninstall_drops_it(cluster: Cluster) -> None:
    for action in ("install", "install"):
        done = tool(cluster, action)
        assert done.returncode == 0 and done.stderr == "", done
        assert done.stdout.startswith("installed event triggers "), done.stdout
    expected = [(name, name.removeprefix("pgreactive_"), "pgreactive.emit_ddl_message")
                for name in TRIGGERS]  # fmt: skip
    assert event_triggers(cluster) == expected
    for _ in range(2):
        done = tool(cluster, "uninstall")
        assert done.returncode == 0 and done.stderr == "", done
    assert event_triggers(cluster) == []
    with direct(cluster) as conn:
        assert (
            conn.execute("select 1 from pg_namespace where nspname = 'pgreactive'").fetchall() == []
        )
    done = tool(cluster, "install")
    assert done.returncode == 0, done
    assert event_triggers(cluster) == expected


def test_install_refused_is_one_line_and_exit_1(cluster: Cluster) -> None:
    argv = [
        PGREACTIVE, "replication", "install", "--upstream", f"postgresql://127.0.0.1:{cluster.port}",
        "--database", "postgres", "--user", "app",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=CLEAN_ENV)
    assert done.returncode == 1 and done.stdout == "", done
    (line,) = done.stderr.splitlines()
    assert line.startswith("pgreactive replication install: 42501: "), line
    assert line.endswith("(creating event triggers needs a superuser)"), line


def _rows(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()


def _hit(proxy: ProxyProcess, conn: psycopg.Connection[Any], sql: str, expected: list[Any]) -> bool:
    """Read `sql` through the proxy: it must give `expected`; was it a cache hit?"""
    before = scrape(proxy)
    assert _rows(conn, sql) == expected
    return decisions(before, scrape(proxy)) == ["hit"]


def _until(what: str, ready: Any) -> float:
    """Poll `ready()` until it is true; return the seconds it took."""
    started = time.monotonic()
    while not ready():
        assert time.monotonic() - started < GUARD, f"{what}: not within {GUARD} s"
        time.sleep(0.01)
    return time.monotonic() - started


def test_direct_add_column_reshapes_cached_select_star(
    cluster: Cluster, proxy: ProxyProcess
) -> None:
    assert tool(cluster, "install").returncode == 0
    with psycopg.connect(
        proxy.dsn(dbname="postgres", user="app"), autocommit=True, prepare_threshold=None
    ) as conn:
        sql = "select * from shape where id = 1"
        _until("a hit", lambda: _hit(proxy, conn, sql, [(1, "a")]))
        with psycopg.connect(cluster.dsn(dbname="postgres", user="app"), autocommit=True) as app:
            app.execute("alter table shape add column extra text default 'x'")  # not a superuser
        took = _until("the new column", lambda: _rows(conn, sql) == [(1, "a", "x")])
        print(f"ALTER TABLE ADD COLUMN visible through the proxy after {took * 1000:.0f} ms")
        _until("a hit of the new shape", lambda: _hit(proxy, conn, sql, [(1, "a", "x")]))


def test_direct_create_view_is_known_to_the_catalog(cluster: Cluster, proxy: ProxyProcess) -> None:
    assert tool(cluster, "install").returncode == 0
    with psycopg.connect(
        proxy.dsn(dbname="postgres"), autocommit=True, prepare_threshold=None
    ) as conn:
        _rows(conn, "select v from shape where id = 1")  # the catalog is loaded
        with direct(cluster) as admin:
            admin.execute("create view shape_v as select id, upper(v) as v from shape")
        sql = "select v from shape_v where id = 1"
        took = _until("a cached read of the new view", lambda: _hit(proxy, conn, sql, [("A",)]))
        print(f"CREATE VIEW cached through the proxy after {took * 1000:.0f} ms")
        with direct(cluster) as admin:
            admin.execute("update shape set v = 'b' where id = 1")
        _until("the view's new value", lambda: _rows(conn, sql) == [("B",)])


def test_a_table_list_is_resolved_in_every_schema_and_quoted(cluster: Cluster) -> None:
    """``replication.tables``: bare names, found in every schema, quoted as Postgres spells
    them; a name that matches no table is said in the log (and nothing is followed)."""
    with direct(cluster) as conn:
        conn.execute('create schema other; create table other."Mixed$Case" (id int primary key)')
    with throwaway_redis() as url:
        p = replicating_proxy(cluster, url, slot="listed", tables=("shape", "Mixed$Case"))
        try:
            wait_streaming(p)
        finally:
            p.stop()
        with direct(cluster) as conn:
            published = conn.execute(
                "select schemaname, tablename from pg_publication_tables"
                " where pubname = 'listed' order by 1, 2"
            ).fetchall()
        assert published == [("other", "Mixed$Case"), ("public", "shape")]
        p = replicating_proxy(cluster, url, slot="absent", tables=("absent",))
        try:
            deadline = time.monotonic() + GUARD
            while "replication.tables: no table absent in postgres" not in p.log:
                assert time.monotonic() < deadline, p.log
                time.sleep(0.05)
        finally:
            p.stop()
