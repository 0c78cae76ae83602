"""Invalidation events (issue 4, point 9; DESIGN.md "Events").

`redis-cli SUBSCRIBE <channel>` (a subprocess, as the acceptance names it) and a redis-py
subscriber both listen on a channel of this module's own (`events.channel` in a `--config`
file), so parallel runs never mix.  Every committed write transaction through the proxy must
give one well-formed event -- the same bytes to both subscribers and in the Redis Stream of
the channel's name (Redis db 12, the proxy's) -- and a rolled-back one none.  "Exactly N
events" is checked by following the writes with a marker write to another table: the next
event after the N expected ones must be the marker's (events of one proxy connection are
published in commit order).

The design lists ten fields; the proxy may add more (it adds `database`): extra fields are
allowed, the ten must be there and be right.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from pglast import parser

from tests.conftest import (
    CACHE_REDIS_DB,
    PG_HOST,
    PG_PORT,
    ProxyProcess,
    dsn,
    proxy_namespace,
    scrape,
    start_caching_proxy,
)
from tests.integration.cache_env import admin, decisions, forget

Conn = psycopg.Connection[tuple[object, ...]]
Event = dict[str, Any]

DESIGN_FIELDS = frozenset({
    "type", "eventId", "ts", "table", "tables", "operation", "organizationId",
    "affectedQueries", "requiresAck", "source",
})  # fmt: skip
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_ID = re.compile(r"\d+-\d+")
_WAIT = 15.0  # seconds; a hang guard only

# --- helpers ---------------------------------------------------------------------------------


def cached(proxy: ProxyProcess, conn: Conn, sql: str, tries: int = 60) -> None:
    """Read until the proxy answers from its cache (so its fill, and with it the query's
    name or fingerprint, is recorded against the tables it read)."""
    seen: list[str] = []
    for _ in range(tries):
        before = scrape(proxy)
        conn.execute(sql).fetchall()
        decided = decisions(before, scrape(proxy))
        seen += decided
        if decided == ["hit"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"never served from the cache: {sql!r}: {seen}")


class CliSubscriber:
    """`redis-cli SUBSCRIBE channel`: its output is read by a thread into a queue."""

    def __init__(self, channel: str) -> None:
        self.process = subprocess.Popen(
            ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "SUBSCRIBE", channel],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        # Non-tty output: one reply element per line: "subscribe", channel, count.
        assert [self._line() for _ in range(3)] == ["subscribe", channel, "1"]

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _line(self) -> str:
        line = self.lines.get(timeout=_WAIT)
        assert line is not None, "redis-cli exited"
        return line

    def next_message(self) -> str:
        kind, _channel, payload = (self._line() for _ in range(3))
        assert kind == "message", (kind, payload)
        return payload

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Env:
    proxy: ProxyProcess
    db: str
    channel: str
    redis: redis.Redis
    pubsub: Any  # redis.client.PubSub
    cli: CliSubscriber

    def proxied(self) -> Conn:
        return psycopg.connect(
            self.proxy.dsn(dbname=self.db), autocommit=True, prepare_threshold=None
        )

    def next_payloads(self, n: int) -> list[str]:
        """The next `n` payloads; redis-cli and redis-py must have seen the same bytes."""
        from_py: list[str] = []
        deadline = time.monotonic() + _WAIT
        while len(from_py) < n:
            message = self.pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "message":
                from_py.append(message["data"].decode())
            assert time.monotonic() < deadline, f"only {len(from_py)} of {n} events came"
        from_cli = [self.cli.next_message() for _ in range(n)]
        assert from_cli == from_py
        return from_py

    def expect(self, n: int, conn: Conn) -> list[Event]:
        """Exactly `n` events were published since the last call (checked by a marker write
        whose event must come next); each one well-formed and stored in the stream."""
        payloads = self.next_payloads(n)
        conn.execute("insert into marker_t values (1)")
        (marker,) = self.next_payloads(1)
        assert json.loads(marker)["table"] == "marker_t", f"an unexpected event: {marker}"
        events = [json.loads(p) for p in payloads]
        for event, payload in zip(events, payloads, strict=True):
            self.check(event, payload)
        return events

    def check(self, event: Event, payload: str) -> None:
        missing = DESIGN_FIELDS - set(event)
        assert not missing, f"event lacks {sorted(missing)}: {payload}"
        assert event["type"] == "invalidation"
        event_id = event["eventId"]
        assert isinstance(event_id, str) and _ID.fullmatch(event_id), event_id
        # The event id is the stream entry's id, and the entry holds the same bytes.
        entries = self.redis.xrange(self.channel, min=event_id, max=event_id)
        assert len(entries) == 1, entries
        entry_id, fields = entries[0]
        assert entry_id.decode() == event_id
        assert [v.decode() for v in fields.values()] == [payload], fields
        ts = event["ts"]
        assert isinstance(ts, str) and _TS.fullmatch(ts), ts
        assert datetime.fromisoformat(ts.replace("Z", "+00:00")).utcoffset() is not None
        assert isinstance(event["table"], str) and event["table"]
        tables = event["tables"]
        assert isinstance(tables, list) and all(isinstance(t, str) for t in tables)
        assert event["table"] in tables
        assert event["operation"] in (
            "INSERT",
            "UPDATE",
            "DELETE",
            "MERGE",
            "TRUNCATE",
            "COPY_FROM",
            "DDL",
            "UNKNOWN",
            "SELECT",
        )
        assert event["organizationId"] is None or isinstance(event["organizationId"], str)
        affected = event["affectedQueries"]
        assert isinstance(affected, list) and all(isinstance(q, str) for q in affected)
        assert event["requiresAck"] is True  # the default of events.requires_ack
        assert isinstance(event["source"], str) and event["source"]
        if "database" in event:  # an extra the proxy adds: if present, it must be right
            assert event["database"] == self.db


SCHEMA = """
create table agents (id int primary key, organization_id text not null, name text not null);
create table notes (id int primary key, body text not null);
create table marker_t (n int);
insert into agents values (1, 'A', 'alice'), (2, 'B', 'bob'), (3, 'A', 'carol');
insert into notes values (1, 'first');
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tag = uuid.uuid4().hex
    db = f"pgr_events_{tag[:10]}"
    config = Path(tmp_path_factory.mktemp("events")) / "pgreactive.yaml"
    config.write_text(f'events: {{channel: "test:{tag}"}}\n')
    channel = f"{proxy_namespace()}:test:{tag}"  # the namespace prefixes it
    client = redis.Redis(host="127.0.0.1", port=6379, db=CACHE_REDIS_DB)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=_WAIT) is None  # the subscribe confirmation, ignored
    cli: CliSubscriber | None = None
    proxy: ProxyProcess | None = None
    admin(f"create database {db}")
    try:
        admin(SCHEMA, db)
        cli = CliSubscriber(channel)
        proxy = start_caching_proxy("--config", str(config))
        yield Env(proxy, db, channel, client, pubsub, cli)
    finally:
        if proxy is not None:
            proxy.stop()
        if cli is not None:
            cli.close()
        pubsub.close()
        client.delete(channel)
        client.close()
        admin(f"drop database if exists {db} with (force)")
        forget(db)


@pytest.fixture
def conn(env: Env) -> Iterator[Conn]:
    with env.proxied() as c:
        yield c


NAMED = "/* query='agents.getAll' */ select id, organization_id, name from agents order by id"
UNNAMED = "select id, name from agents where id > 0 order by id"


def test_confined_write_event_names_the_cached_queries(env: Env, conn: Conn) -> None:
    cached(env.proxy, conn, NAMED)
    cached(env.proxy, conn, UNNAMED)
    conn.execute("update agents set name = 'alice2' where organization_id = 'A' and id = 1")
    (event,) = env.expect(1, conn)
    assert event["table"] == "agents"
    assert event["tables"] == ["agents"]
    assert event["operation"] == "UPDATE"
    assert event["organizationId"] == "A"
    assert "agents.getAll" in event["affectedQueries"]  # the sqlcommenter name
    assert parser.fingerprint(UNNAMED) in event["affectedQueries"]  # else the fingerprint
    assert parser.fingerprint(NAMED) not in event["affectedQueries"]


@pytest.mark.parametrize(
    ("sql", "params", "operation", "organization"),
    [
        ("update agents set name = 'bob2' where id = 2", None, "UPDATE", None),
        (
            "update agents set name = %t where organization_id = %t and id = %t::int",
            ("bob3", "B", "2"),
            "UPDATE",
            "B",
        ),
        (
            "insert into agents (id, organization_id, name) values (10, 'B', 'x'), (11, 'B', 'y')",
            None,
            "INSERT",
            "B",
        ),
        (
            "insert into agents (id, organization_id, name) values (12, 'A', 'x'), (13, 'B', 'y')",
            None,
            "INSERT",
            None,
        ),
        ("delete from agents where id >= 10", None, "DELETE", None),
        ("delete from agents where organization_id = 'B' and id = 404", None, "DELETE", "B"),
        ("update notes set body = body || '.'", None, "UPDATE", None),
    ],
)
def test_each_committed_write_gives_one_event(
    env: Env,
    conn: Conn,
    sql: str,
    params: tuple[object, ...] | None,
    operation: str,
    organization: str | None,
) -> None:
    cached(env.proxy, conn, NAMED)
    conn.execute(sql, params)
    (event,) = env.expect(1, conn)
    table = "notes" if "notes" in sql else "agents"
    assert (event["table"], event["tables"]) == (table, [table])
    assert event["operation"] == operation
    assert event["organizationId"] == organization
    if table == "agents":
        assert "agents.getAll" in event["affectedQueries"]
    else:
        assert "agents.getAll" not in event["affectedQueries"]


def test_transaction_with_writes_to_one_table_gives_one_event(env: Env, conn: Conn) -> None:
    with conn.transaction():
        conn.execute("update agents set name = 'a' where organization_id = 'A' and id = 1")
        conn.execute("insert into agents (id, organization_id, name) values (20, 'A', 'n')")
        conn.execute("delete from agents where organization_id = 'A' and id = 20")
    (event,) = env.expect(1, conn)
    assert (event["table"], event["tables"]) == ("agents", ["agents"])
    assert event["organizationId"] == "A"  # every write confined to org A

    with conn.transaction():
        conn.execute("update agents set name = 'a' where organization_id = 'A' and id = 1")
        conn.execute("update agents set name = 'b' where organization_id = 'B' and id = 2")
    (event,) = env.expect(1, conn)
    assert event["organizationId"] is None  # two organizations: not one scope

    # An implicit transaction: several statements in one simple Query.
    conn.execute(
        "update agents set name = 'c' where id = 1; update agents set name = 'd' where id = 3"
    )
    (event,) = env.expect(1, conn)
    assert (event["table"], event["organizationId"]) == ("agents", None)


def test_transaction_with_writes_to_two_tables(env: Env, conn: Conn) -> None:
    """Every table written is named by the transaction's events (the proxy publishes one
    event per written table; the count is reported, not asserted)."""
    with conn.transaction():
        conn.execute("update agents set name = 'e' where id = 1")
        conn.execute("update notes set body = 'second' where id = 1")
    conn.execute("insert into marker_t values (2)")
    payloads = []
    while True:  # every event up to the marker's
        (payload,) = env.next_payloads(1)
        if json.loads(payload)["table"] == "marker_t":
            break
        payloads.append(payload)
    events = [json.loads(p) for p in payloads]
    for event, payload in zip(events, payloads, strict=True):
        env.check(event, payload)
    assert 1 <= len(events) <= 2, payloads
    assert {"agents", "notes"} <= {t for e in events for t in e["tables"]}


def test_rolled_back_and_failed_transactions_give_no_event(env: Env, conn: Conn) -> None:
    stream_before = env.redis.xlen(env.channel)
    with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
        conn.execute("update agents set name = 'rolled back' where id = 1")
        conn.execute("select 1/0")
    conn.execute("begin")
    conn.execute("insert into agents (id, organization_id, name) values (30, 'A', 'gone')")
    conn.execute("rollback")
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("update agents set name = 'implicit' where id = 1; select 1/0")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("insert into agents (id, organization_id, name) values (1, 'A', 'dup')")
    with conn.transaction():  # a read-only transaction writes nothing
        conn.execute("select * from agents").fetchall()
    conn.execute(NAMED).fetchall()  # reads publish nothing
    assert env.expect(0, conn) == []
    assert env.redis.xlen(env.channel) == stream_before + 1  # the marker's only
    with psycopg.connect(dsn(PG_HOST, PG_PORT, dbname=env.db)) as direct:
        names = direct.execute("select name from agents where id = 1").fetchone()
        assert names is not None and names[0] not in ("rolled back", "implicit")


def test_consumer_replays_what_it_missed_from_the_stream(env: Env, conn: Conn) -> None:
    for n in range(3):
        conn.execute(f"update agents set name = 'replay {n}' where id = 2")
    events = env.expect(3, conn)
    ids = [e["eventId"] for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
    assert len(set(ids)) == 3

    def entries(raw: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[str, Event]]:
        return [(i.decode(), json.loads(v)) for i, f in raw for v in f.values()]

    # A consumer that saw the first event asks for what came after it.
    later = entries(env.redis.xrange(env.channel, min="(" + ids[0], max=ids[2]))
    assert later == list(zip(ids[1:], events[1:], strict=True))
    # XREAD from the same id gives the same events first (then the marker).
    ((_stream, read),) = env.redis.xread({env.channel: ids[0]})
    replayed = entries(read)
    assert replayed[:2] == later
    assert [e["table"] for _, e in replayed[2:]] == ["marker_t"]
    # After the last one: only the marker write that `expect` made.
    after_last = entries(env.redis.xrange(env.channel, min="(" + ids[2]))
    assert [e["table"] for _, e in after_last] == ["marker_t"]
