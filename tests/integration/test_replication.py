"""Invalidation and events from the logical replication stream (issue 12).

A throwaway cluster with ``wal_level = logical`` (see `tests.integration.logical`), a Redis
of the module's own, and two caching proxies following the stream.  Writes are made
*directly* on Postgres, never through a proxy, and must become visible through the proxy:

* acceptance 1: UPDATE, INSERT, DELETE, TRUNCATE, a trigger-written table, a cascade delete
  and a partition read through its parent, each cached (a hit) before the write;
* acceptance 2: a direct write confined to org A leaves org B's entries hitting;
* events: one per committed transaction, source "replication", in LSN order, none for a
  proxied write from the proxy itself;
* acceptance 5: ``wal_level = replica`` → the proxy starts, says why once, caches as before.

The latency bound of acceptance 1 (p99 ≤ 100 ms over 1,000 trials) is measured by
``bench/replication.py`` (bench/RESULTS.md).  Here, with fewer trials on a shared noisy
machine, the test asserts that every write becomes visible (within a 10 s guard) and prints
the latencies: never a wall-clock bound in a pass/fail test.
"""

from __future__ import annotations

import bisect
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import redis

from tests.conftest import PG_HOST, PG_PORT, ProxyProcess, scrape, start_proxy
from tests.integration.cache_env import decisions
from tests.integration.cluster import Cluster
from tests.integration.logical import (
    direct,
    events_stream,
    logical_cluster,
    replicating_proxy,
    wait_streaming,
)
from tests.integration.proxies import assert_no_crash
from tests.integration.test_cache_hits import throwaway_redis

SETUP = """
create table items (id int primary key, organization_id text not null, v text);
alter table items replica identity full;
insert into items values (1, 'A', 'a1'), (2, 'B', 'b1');
create table dels (id int primary key, v text);
create table trunc (id int primary key, v text);
create table trig_src (id int primary key, v text);
create table log_target (id int primary key, v text);
create function trig_fn() returns trigger language plpgsql as $$
begin
  insert into log_target values (new.id, new.v) on conflict (id) do update set v = excluded.v;
  return new;
end $$;
create trigger trig after insert or update on trig_src for each row execute function trig_fn();
create table parent (id int primary key);
create table child (id int primary key, parent_id int references parent on delete cascade);
create table part (id int, organization_id text, v text) partition by list (organization_id);
create table part_a partition of part for values in ('A');
alter table part_a replica identity full;
insert into part values (1, 'A', 'p0');
create table nokey (v text);
"""


@dataclass(frozen=True)
class Kind:
    """One way to change what a cached read returns, made directly on Postgres."""

    read: str
    prepare: str  # run directly before the read is warmed ({i}: the trial number)
    write: str
    after: str  # the read's value once the write is visible


KINDS = {
    "update": Kind("select v from items where id = 1", "",
                   "update items set v = 'u{i}' where id = 1", "u{i}"),
    "insert": Kind("select max(id)::text from trunc", "",
                   "insert into trunc values ({i} + 1000000, 'x')", "{i1}"),
    "delete": Kind("select count(*)::text from dels", "insert into dels values (1, 'x')",
                   "delete from dels where id = 1", "0"),
    "truncate": Kind("select count(*)::text from trunc where id < 1000000",
                     "insert into trunc values ({i}, 'x')", "truncate trunc", "0"),
    "trigger": Kind("select v from log_target where id = 1", "",
                    "insert into trig_src values (1, 't{i}') on conflict (id) do update"
                    " set v = excluded.v", "t{i}"),
    "cascade": Kind("select count(*)::text from child",
                    "insert into parent values (1); insert into child values (1, 1)",
                    "delete from parent where id = 1", "0"),
    "partition": Kind("select v from part where id = 1", "",
                      "update part_a set v = 'p{i}' where id = 1", "p{i}"),
}  # fmt: skip
TRIALS = 20
GUARD = 10.0  # seconds a direct write may take to show before the test fails outright


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with logical_cluster() as c:
        with direct(c) as conn:
            conn.execute(SETUP)
        yield c


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with throwaway_redis() as url:
        yield url


@pytest.fixture(scope="module")
def proxies(cluster: Cluster, redis_url: str) -> Iterator[tuple[ProxyProcess, ProxyProcess]]:
    a = replicating_proxy(cluster, redis_url)
    try:
        wait_streaming(a)
        b = replicating_proxy(cluster, redis_url)
        try:
            yield a, b
            assert_no_crash(b)
            assert_no_crash(a)
        finally:
            b.stop()
    finally:
        a.stop()


def _value(conn: psycopg.Connection[Any], sql: str) -> str | None:
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def warm(
    proxy: ProxyProcess, conn: psycopg.Connection[Any], sql: str, expected: object = None
) -> str | None:
    """Read `sql` through the proxy until a read of it is a hit (of `expected`, when given:
    a direct write just before may still be on its way); return the value."""
    deadline = time.monotonic() + GUARD
    while True:
        before = scrape(proxy)
        value = _value(conn, sql)
        if decisions(before, scrape(proxy)) == ["hit"] and expected in (None, value):
            return value
        assert time.monotonic() < deadline, f"{sql!r} never hit"


def visible_after(
    proxy: ProxyProcess, cluster: Cluster, kind: Kind, i: int, conn: psycopg.Connection[Any]
) -> float:
    """One trial: cache the read, write directly, return seconds until the proxy shows it."""
    with direct(cluster) as admin:
        if kind.prepare:
            admin.execute(kind.prepare.format(i=i))
        expected_before = _value(admin, kind.read)
        assert warm(proxy, conn, kind.read, expected_before) == expected_before
        admin.execute(kind.write.format(i=i))
        committed = time.monotonic()
    expected = kind.after.format(i=i, i1=i + 1000000)
    while (value := _value(conn, kind.read)) != expected:
        assert value == expected_before, (value, expected_before, expected)
        assert time.monotonic() - committed < GUARD, f"{kind.write} never became visible"
    return time.monotonic() - committed


@pytest.mark.parametrize("name", list(KINDS))
def test_direct_write_becomes_visible(
    name: str, cluster: Cluster, proxies: tuple[ProxyProcess, ProxyProcess]
) -> None:
    proxy = proxies[1]  # not the one reading the stream: the invalidation crosses Redis
    delays = []
    with psycopg.connect(proxy.dsn(dbname="postgres"), autocommit=True) as conn:
        for i in range(TRIALS):
            delays.append(visible_after(proxy, cluster, KINDS[name], i, conn))
    delays.sort()
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    summary = (
        f"{name}: p50 {statistics.median(delays) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms,"
        f" max {delays[-1] * 1000:.1f} ms over {len(delays)}"
    )
    # Every trial became visible within GUARD (asserted in `visible_after`), and no read
    # between the write and then returned anything but the old value.  The latency bound of
    # acceptance 1 (p99 <= 100 ms over 1,000 trials) is measured by bench/replication.py:
    # a pass/fail test on a shared 2-core machine must not assert on wall-clock time.
    print(summary)


def test_scoped_direct_write_leaves_other_org_hitting(
    cluster: Cluster, proxies: tuple[ProxyProcess, ProxyProcess], redis_url: str
) -> None:
    proxy = proxies[1]
    read_a = "select v from items where organization_id = 'A' order by id"
    read_b = "select v from items where organization_id = 'B' order by id"
    client = redis.Redis.from_url(redis_url)
    stream = events_stream(cluster, redis_url)
    with psycopg.connect(proxy.dsn(dbname="postgres"), autocommit=True) as conn:
        for write in (
            "insert into items values (10, 'A', 'new')",
            "update items set v = 'a-scoped' where id = 1",
            "delete from items where id = 10",
        ):
            warm(proxy, conn, read_a)
            old_b = warm(proxy, conn, read_b)
            last = client.xrevrange(stream, count=1)
            with direct(cluster) as admin:
                admin.execute(write)
                expected_a = [r[0] for r in admin.execute(read_a).fetchall()]
            _wait_event_after(client, stream, last[0][0] if last else b"0")
            assert [r[0] for r in conn.execute(read_a).fetchall()] == expected_a
            before = scrape(proxy)
            assert _value(conn, read_b) == old_b
            assert decisions(before, scrape(proxy)) == ["hit"], write


def _wait_event_after(client: redis.Redis, stream: str, after: bytes) -> list[dict[str, Any]]:
    deadline = time.monotonic() + GUARD
    while True:
        entries = client.xrange(stream, min=b"(" + after)
        if entries:
            return [json.loads(fields[b"event"]) for _, fields in entries]
        assert time.monotonic() < deadline, "no event"
        time.sleep(0.01)


def test_one_event_per_transaction_from_the_stream_only(
    cluster: Cluster, proxies: tuple[ProxyProcess, ProxyProcess], redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    stream = events_stream(cluster, redis_url)
    last = client.xrevrange(stream, count=1)
    after = last[0][0] if last else b"0"
    with direct(cluster) as admin:
        admin.execute("update items set v = 'e1' where id = 2")
        with admin.transaction():  # one transaction, two tables
            admin.execute("insert into dels values (50, 'x')")
            admin.execute("update items set v = 'e2' where id = 2")
    with psycopg.connect(proxies[0].dsn(dbname="postgres"), autocommit=True) as conn:
        conn.execute("delete from dels where id = 50")  # proxied: announced by the stream
    deadline = time.monotonic() + GUARD
    while len(events := _wait_event_after(client, stream, after)) < 3:
        assert time.monotonic() < deadline, events
        time.sleep(0.01)
    time.sleep(0.3)  # a duplicate, or an event from the proxy itself, would arrive by now
    events = _wait_event_after(client, stream, after)
    assert [(e["source"], e["tables"], e["operations"]) for e in events] == [
        ("replication", ["items"], ["UPDATE"]),
        ("replication", ["dels", "items"], ["INSERT", "UPDATE"]),
        ("replication", ["dels"], ["DELETE"]),
    ]
    lsns = [tuple(int(x, 16) for x in e["lsn"].split("/")) for e in events]
    assert lsns == sorted(lsns) and len(set(lsns)) == 3
    assert len({e["eventId"] for e in events}) == 3


def test_tables_without_replica_identity_are_named_once(
    proxies: tuple[ProxyProcess, ProxyProcess],
) -> None:
    """A FOR ALL TABLES publication makes Postgres refuse UPDATE and DELETE on tables
    without a replica identity: the reader says which, once."""
    lines = [line for line in proxies[0].log.splitlines() if "no replica identity" in line]
    assert len(lines) == 1, proxies[0].log
    assert "WARNING" in lines[0] and ": public.nokey. Give each a primary key" in lines[0]
    assert "no replica identity" not in proxies[1].log  # it never read the stream


def _sample(values: dict[str, float], name: str, **labels: str) -> float | None:
    """The value of the one sample of `name` whose labels include `labels` (None: none)."""
    found = [
        value
        for sample, value in values.items()
        if sample.partition("{")[0] == name
        and all(f'{k}="{v}"' in sample for k, v in labels.items())
    ]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def test_replication_metrics_appear_and_move(
    cluster: Cluster, proxies: tuple[ProxyProcess, ProxyProcess]
) -> None:
    """The reader exposes its state, the lease holder, per-transaction lag and the slot's
    retained WAL; the other instance says it stands by, under the same holder."""
    reader, other = proxies
    holder = wait_streaming(reader)["this_instance"]
    deadline = time.monotonic() + GUARD
    while (retained := _sample(scrape(reader), "pgreactive_replication_retained_wal_bytes",
                               database="postgres", slot="pgreactive")) is None:  # fmt: skip
        assert time.monotonic() < deadline, "no retained WAL reading"
        time.sleep(0.1)
    before = scrape(reader)
    writes = 20
    with direct(cluster) as admin:
        admin.execute("create table if not exists filler (id int, pad text)")
        for i in range(writes):
            admin.execute("update items set v = %s where id = 2", (f"m{i}",))
        admin.execute(  # WAL to retain
            "insert into filler select g, repeat('x', 200) from generate_series(1, 20000) g"
        )
    metric = "pgreactive_replication_"
    deadline = time.monotonic() + 3 * GUARD  # the slot is read every 5 s
    while True:
        after = scrape(reader)
        moved = _sample(after, metric + "retained_wal_bytes") != retained
        count = _sample(after, metric + "lag_seconds_count", database="postgres") or 0
        if moved and count - (_sample(before, metric + "lag_seconds_count") or 0) >= writes:
            break
        assert time.monotonic() < deadline, (retained, after)
        time.sleep(0.2)
    transactions = _sample(after, metric + "transactions_total", database="postgres") or 0
    assert transactions - (_sample(before, metric + "transactions_total") or 0) >= writes
    assert (_sample(after, metric + "last_lag_seconds", database="postgres") or -1) >= 0
    assert _sample(after, metric + "state", database="postgres", state="streaming") == 1
    assert _sample(after, metric + "state", state="standby") == 0
    assert _sample(after, metric + "lease_holder", holder=holder, this_instance=holder) == 1
    seen = scrape(other)
    assert _sample(seen, metric + "state", state="standby") == 1
    assert _sample(seen, metric + "lease_holder", holder=holder) == 1
    assert _sample(seen, metric + "lease_holder", this_instance=holder) is None
    assert _sample(seen, metric + "retained_wal_bytes") is None  # the holder's reading


def test_replica_wal_level_starts_and_says_why_once(redis_url: str) -> None:
    """The shared Postgres runs with wal_level = replica: the proxy starts, logs why it
    does not follow the stream once, and caches and announces its own writes as before."""
    fd, path = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write("replication: {enabled: true, database: test}\ncatalog: {user: postgres}\n")
    try:
        proxy = start_proxy(
            "--upstream", f"postgresql://{PG_HOST}:{PG_PORT}", "--redis", redis_url,
            "--metrics", "127.0.0.1:0", "--config", path,
        )  # fmt: skip
    finally:
        os.unlink(path)
    try:
        deadline = time.monotonic() + GUARD
        while "replication disabled" not in proxy.log:
            assert time.monotonic() < deadline, proxy.log
            time.sleep(0.05)
        with psycopg.connect(proxy.dsn(dbname="test"), autocommit=True) as conn:
            before = scrape(proxy)
            for _ in range(3):
                conn.execute("select 42 as answer").fetchall()
            assert decisions(before, scrape(proxy)) == ["hit", "hit", "miss"]
        time.sleep(0.3)
        assert proxy.log.count("replication disabled") == 1, proxy.log
        assert "it needs 'logical'" in proxy.log or "replication connection" in proxy.log
        assert_no_crash(proxy)
    finally:
        proxy.stop()


def test_kill_the_lease_holder_during_direct_writes(cluster: Cluster) -> None:
    """Acceptance 3: kill -9 the instance reading the stream during 2,000 direct writes.
    The other takes over; no read through it that starts more than 1 s after a write's
    commit returns older data; every committed transaction has exactly one event, in LSN
    order.  (A slot and a Redis of the test's own: the module's proxies keep theirs.)"""
    writes = 2000
    with direct(cluster) as admin:
        admin.execute("create table counter (id int primary key, n int not null)")
        admin.execute("insert into counter values (1, 0)")
    with throwaway_redis() as url:
        client = redis.Redis.from_url(url)
        a = replicating_proxy(cluster, url, slot="failover")
        b = None
        try:
            wait_streaming(a)
            b = replicating_proxy(cluster, url, slot="failover")
            reads: list[tuple[float, int]] = []
            done = threading.Event()

            def reader() -> None:
                assert b is not None
                with psycopg.connect(b.dsn(dbname="postgres"), autocommit=True) as conn:
                    while not done.is_set():
                        started = time.monotonic()
                        (n,) = conn.execute("select n from counter where id = 1").fetchone()  # type: ignore[misc]
                        reads.append((started, n))

            thread = threading.Thread(target=reader)
            thread.start()
            committed: list[float] = []
            with direct(cluster) as admin:
                for i in range(1, writes + 1):
                    admin.execute("update counter set n = %s where id = 1", (i,))
                    committed.append(time.monotonic())
                    if i == writes // 4:
                        a.process.kill()  # SIGKILL
            time.sleep(1.5)
            done.set()
            thread.join()
            assert b.process.poll() is None
            detail = wait_streaming(b)
            stale = [
                (started, n)
                for started, n in reads
                if (newest := bisect.bisect_left(committed, started - 1.0)) and n < newest
            ]
            assert not stale, f"{len(stale)} reads older than 1 s after commit: {stale[:5]}"
            deadline = time.monotonic() + 30
            while True:
                events = [
                    json.loads(fields[b"event"])
                    for _, fields in client.xrange(events_stream(cluster, url))
                ]
                counted = [e for e in events if e["tables"] == ["counter"]]
                if len(counted) >= writes or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert len(counted) == writes, (len(counted), detail)
            assert len({e["eventId"] for e in counted}) == writes
            lsns = [tuple(int(x, 16) for x in e["lsn"].split("/")) for e in counted]
            assert lsns == sorted(lsns) and len(set(lsns)) == writes
            print(f"takeover: {len(reads)} reads, 0 stale; {writes} events; {detail}")
            assert_no_crash(b)
        finally:
            a.stop()
            if b is not None:
                b.stop()
