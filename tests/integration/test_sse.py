"""``GET /events`` (issue 15, first slice): Server-Sent Events on the metrics port.

A caching proxy (`start_caching_proxy`: Redis db 12) serves a database of this module's own
and publishes on a channel of its own (`events.channel` in a `--config` file, with a short
`events.sse_heartbeat_seconds`).  The client is a raw socket speaking HTTP/1.1 and parsing
the SSE framing, as a browser's EventSource does; what it receives is compared with the
stream itself (XRANGE).  No assertion is on a duration: timeouts are hang guards only.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from tests.conftest import CACHE_REDIS_DB, ProxyProcess, proxy_namespace, start_caching_proxy
from tests.integration.cache_env import Conn, admin, cached, connect, forget
from tests.integration.proxies import assert_no_crash

_WAIT = 15.0  # seconds; a hang guard only
SCHEMA = """
create table agents (id int primary key, organization_id text not null, name text not null);
create table notes (id int primary key, body text not null);
insert into agents values (1, 'A', 'alice'), (2, 'B', 'bob');
insert into notes values (1, 'first');
"""
NOTE = "select body from notes where id = 1"


class Sse:
    """One ``GET /events`` connection; `status` is its HTTP status."""

    def __init__(self, proxy: ProxyProcess, query: str = "", last_event_id: str | None = None):
        assert proxy.metrics_url
        url = urlsplit(proxy.metrics_url)
        assert url.hostname and url.port
        self.sock = socket.create_connection((url.hostname, url.port), timeout=_WAIT)
        header = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
        request = f"GET /events{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
        self.sock.sendall((request + header + "\r\n").encode())
        self.file = self.sock.makefile("rb")
        self.status = int(self.file.readline().split()[1])
        self.headers = {}
        while line := self.file.readline().strip():
            name, _, value = line.decode().partition(":")
            self.headers[name.lower()] = value.strip()

    def body(self) -> str:
        return self.file.read().decode()

    def next(self) -> dict[str, str]:
        """The next message's fields (``data`` lines joined), or ``{"comment": ...}``."""
        fields: dict[str, str] = {}
        while True:
            line = self.file.readline()
            assert line, "the stream ended"
            text = line.decode().rstrip("\n")
            if not text:
                if fields:
                    return fields
                continue
            name, _, value = text.partition(":")
            value = value.removeprefix(" ")
            if not name:
                fields.setdefault("comment", value)
            elif name == "data" and "data" in fields:
                fields["data"] += "\n" + value
            else:
                fields[name] = value

    def next_event(self) -> dict[str, str]:
        """The next message that is not a comment (heartbeats are skipped)."""
        while "comment" in (message := self.next()):
            pass
        return message

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def reset(self) -> None:
        """Close abruptly (RST), as a crashed client or a dropped network does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


@dataclass(frozen=True)
class Env:
    proxy: ProxyProcess
    db: str
    channel: str
    redis: redis.Redis

    def proxied(self) -> Conn:
        return connect(self.proxy.dsn(dbname=self.db))

    def last_id(self) -> str:
        entries: Any = self.redis.xrevrange(self.channel, count=1)
        return entries[0][0].decode() if entries else "0-0"

    def entries_after(self, after: str) -> list[tuple[str, str]]:
        entries: Any = self.redis.xrange(self.channel, min=f"({after}")
        return [(i.decode(), fields[b"event"].decode()) for i, fields in entries]

    def wait_entries(self, after: str, n: int) -> list[tuple[str, str]]:
        deadline = time.monotonic() + _WAIT
        while len(entries := self.entries_after(after)) < n:
            assert time.monotonic() < deadline, f"only {len(entries)} of {n} events came"
            time.sleep(0.01)
        return entries[:n]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tag = uuid.uuid4().hex
    db = f"pgr_sse_{tag[:10]}"
    config = tmp_path_factory.mktemp("sse") / "pgreactive.yaml"
    config.write_text(f'events: {{channel: "test:{tag}", sse_heartbeat_seconds: 0.2}}\n')
    channel = f"{proxy_namespace()}:test:{tag}"
    client = redis.Redis(host="127.0.0.1", port=6379, db=CACHE_REDIS_DB)
    proxy: ProxyProcess | None = None
    admin(f"create database {db}")
    try:
        admin(SCHEMA, db)
        proxy = start_caching_proxy("--config", str(config))
        env = Env(proxy, db, channel, client)
        with env.proxied() as conn:
            cached(proxy, conn, NOTE)  # the catalog is loaded: writes name their tables
        yield env
        assert_no_crash(proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        client.delete(channel)
        client.close()
        admin(f"drop database if exists {db} with (force)")
        forget(db)


def test_events_arrive_with_their_stream_ids(env: Env) -> None:
    start = env.last_id()
    sse = Sse(env.proxy)
    try:
        assert sse.status == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        with env.proxied() as conn:
            conn.execute("update notes set body = 'sse' where id = 1")
            conn.execute("update agents set name = 'b' where id = 2")
        stored = env.wait_entries(start, 2)
        got = [sse.next_event() for _ in stored]
        assert [(m["id"], m["event"], m["data"]) for m in got] == [
            (i, "invalidation", payload) for i, payload in stored
        ]
        assert json.loads(got[0]["data"])["eventId"] == got[0]["id"]
    finally:
        sse.close()


def test_many_clients_share_one_redis_subscription(env: Env) -> None:
    clients = [Sse(env.proxy) for _ in range(5)]
    try:
        assert env.redis.pubsub_numsub(env.channel) == [(env.channel.encode(), 1)]
        start = env.last_id()
        with env.proxied() as conn:
            conn.execute("update notes set body = 'fan-out' where id = 1")
        ((event_id, _),) = env.wait_entries(start, 1)
        assert [c.next_event()["id"] for c in clients] == [event_id] * len(clients)
    finally:
        for c in clients:
            c.close()


def test_filters_by_tables_and_org(env: Env) -> None:
    by_table = Sse(env.proxy, "?tables=agents,public.other")
    by_org = Sse(env.proxy, "?org=A")
    try:
        start = env.last_id()
        with env.proxied() as conn:
            conn.execute("update notes set body = 'n' where id = 1")  # neither
            conn.execute("update agents set name = 'b' where organization_id = 'B' and id = 2")
            conn.execute("update agents set name = 'x' where id = 1")  # no organizationId
            conn.execute("update agents set name = 'a' where organization_id = 'A' and id = 1")
        _, org_b, unscoped, org_a = env.wait_entries(start, 4)
        assert json.loads(org_a[1])["organizationId"] == "A"
        assert [by_table.next_event()["id"] for _ in range(3)] == [
            org_b[0], unscoped[0], org_a[0]
        ]
        assert by_org.next_event()["id"] == org_a[0]
    finally:
        by_table.close()
        by_org.close()


def test_reconnect_under_concurrent_writers_has_no_gap_and_no_duplicate(env: Env) -> None:
    """Writers go on while the client reads 50 events, disconnects and reconnects with the
    last id it got (the header, or ``?lastEventId=``, in turn): all it got, in order, must
    be exactly the stream after the first id."""
    start = env.last_id()
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer(row: int) -> None:
        try:
            with env.proxied() as conn:
                n = 0
                while not stop.is_set():
                    conn.execute("update notes set body = %s where id = 1", (f"w{row}-{n}",))
                    n += 1
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    got: list[str] = []
    try:
        last = start
        reconnects = 0
        while len(got) < 400:
            header = reconnects % 2 == 0
            sse = Sse(env.proxy, "" if header else f"?lastEventId={last}", last if header else None)
            try:
                assert sse.status == 200
                for _ in range(50):
                    message = sse.next_event()
                    assert message["event"] == "invalidation", message
                    got.append(message["id"])
                    last = message["id"]
            finally:
                sse.close()
            reconnects += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(_WAIT)
    assert not failures, failures
    stored = [i for i, _ in env.entries_after(start)]
    assert got == stored[: len(got)]
    assert len(got) >= 300 and reconnects >= 6


def test_an_id_the_stream_no_longer_keeps_gets_one_resync(env: Env) -> None:
    before = env.last_id()
    with env.proxied() as conn:
        for n in range(3):
            conn.execute("update notes set body = %s where id = 1", (f"t{n}",))
    (_, _), (second, _), (third, _) = env.wait_entries(before, 3)
    env.redis.xtrim(env.channel, maxlen=2, approximate=False)  # as events.stream_maxlen does
    sse = Sse(env.proxy, last_event_id=before)  # the event after it was trimmed
    kept = Sse(env.proxy, f"?lastEventId={second}")  # still in the stream: nothing lost
    try:
        resync = sse.next_event()
        assert (resync["event"], resync["id"]) == ("resync", third)
        assert kept.next_event()["id"] == third  # replayed
        with env.proxied() as conn:
            conn.execute("update notes set body = 'after' where id = 1")
        ((fourth, _),) = env.wait_entries(third, 1)
        assert sse.next_event()["id"] == fourth  # then live, nothing replayed
        assert kept.next_event()["id"] == fourth
    finally:
        sse.close()
        kept.close()


def test_an_idle_stream_gets_heartbeat_comments(env: Env) -> None:
    sse = Sse(env.proxy)
    try:
        assert sse.next() == {"comment": "ping"}
        assert sse.next() == {"comment": "ping"}
    finally:
        sse.close()


def test_clients_that_go_away_leave_no_traceback(env: Env) -> None:
    start = env.last_id()
    gone = [Sse(env.proxy) for _ in range(4)]
    gone[0].close()  # before anything was sent
    with env.proxied() as conn:
        conn.execute("update notes set body = 'bye' where id = 1")
        env.wait_entries(start, 1)
        gone[1].reset()  # abruptly, with an event underway
        gone[2].close()
        for n in range(20):
            conn.execute("update notes set body = %s where id = 1", (f"bye{n}",))
    gone[3].reset()
    sse = Sse(env.proxy, last_event_id=start)  # the server still serves
    try:
        assert len([sse.next_event() for _ in range(21)]) == 21
    finally:
        sse.close()
    assert_no_crash(env.proxy)


def test_a_bad_last_event_id_is_refused(env: Env) -> None:
    sse = Sse(env.proxy, "?lastEventId=yesterday")
    assert sse.status == 400
    assert "expected an event id" in sse.body()
    sse.close()


def test_a_slow_client_is_cut_off_without_slowing_the_others(tmp_path: Path) -> None:
    """Big events published straight on the channel, each once the reading client got the
    one before: the client that reads nothing fills its socket buffers, then its queue
    (`sse_client_buffer`), and is disconnected; the one that reads gets every event."""
    tag = uuid.uuid4().hex
    config = tmp_path / "pgreactive.yaml"
    config.write_text(f'events: {{channel: "test:{tag}", sse_client_buffer: 4}}\n')
    channel = f"{proxy_namespace()}:test:{tag}"
    proxy = start_caching_proxy("--config", str(config))
    client = redis.Redis(host="127.0.0.1", port=6379, db=CACHE_REDIS_DB)
    try:
        slow = Sse(proxy)
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        fast = Sse(proxy)
        pad = "x" * 200_000
        count = 200  # 40 MB: far more than the socket buffers hold
        for n in range(1, count + 1):  # in step with the client that reads
            client.publish(channel, json.dumps({"eventId": f"9-{n}", "pad": pad}))
            assert fast.next_event()["id"] == f"9-{n}"
        deadline = time.monotonic() + _WAIT
        while not any("too slow to read" in line for line in proxy.lines):
            assert time.monotonic() < deadline, proxy.log
            time.sleep(0.05)
        with pytest.raises(ConnectionResetError):  # reading on, it reaches the reset
            while slow.file.read(1 << 20):
                pass
        slow.close()
        fast.close()
        assert_no_crash(proxy)
    finally:
        proxy.stop()
        client.close()


def test_not_served_on_a_non_loopback_address_without_tokens() -> None:
    proxy = start_caching_proxy("--metrics", "0.0.0.0:0")
    try:
        sse = Sse(proxy)
        assert sse.status == 403
        assert "loopback" in sse.body()
        sse.close()
    finally:
        proxy.stop()
