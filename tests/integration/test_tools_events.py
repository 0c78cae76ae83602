"""`pgreactive events tail` and `pgreactive cache flush` (issue 5), run as a user runs them.

A caching proxy (`start_caching_proxy`: Redis db 12, a catalog connection, metrics) serves a
database of this module's own and publishes on a channel of its own (`events.channel` in a
`--config` file, given to the tools too), so parallel runs never mix; the tools are the
installed ``pgreactive`` script started as subprocesses.  A tail is "ready" when it says on
stderr that it subscribed; its stdout lines are timestamped as the test reads them.

The flush tests prove hits the way `test_cache_hits.py` does: change a row directly in
Postgres (nothing invalidates), read the old value through the proxy (so it came from the
cache), flush, read the new value.  They run under `foreign_bump_retry`: another proxy on
db 12 healing after a Redis fault bumps the global epoch and spoils a hit proof.  The
``--all`` test bumps the global epoch itself, so it runs on a throwaway Redis of its own.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from cache.keys import global_epoch
from proxy.tools.events import EventFilter, newer
from tests.conftest import (
    CACHE_REDIS_DB,
    PG_HOST,
    PG_PORT,
    PG_USER,
    ProxyProcess,
    key_namespace,
    proxy_namespace,
    start_caching_proxy,
)
from tests.integration.cache_env import (
    Conn,
    admin,
    cached,
    connect,
    foreign_bump_retry,
    forget,
    read,
)
from tests.integration.test_cache_hits import caching_proxy, throwaway_redis

PGREACTIVE = str(Path(sys.executable).with_name("pgreactive"))
REDIS_URL = f"redis://127.0.0.1:6379/{CACHE_REDIS_DB}"
UPSTREAM = f"postgresql://{PG_HOST}:{PG_PORT}"  # as the proxies are given it
TOOL_ENV = {**os.environ, "PGREACTIVE_CATALOG_USER": PG_USER}  # the proxies' environment
# As a user's pipe sees it: stdout block-buffered unless the tool flushes each line.
BUFFERED_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
_WAIT = 15.0  # seconds; a hang guard only
WRITERS = 3  # concurrent writing connections in the replay/live race test
LATENCY_BOUND = 0.100  # seconds from an acknowledged commit to its event line (issue 5)

SCHEMA = """
create table agents (id int primary key, organization_id text not null, name text not null);
create view agent_names as select id, name from agents;
create table notes (id int primary key, body text not null);
insert into agents values (1, 'A', 'alice'), (2, 'B', 'bob');
insert into notes values (1, 'first');
create table parts (id int not null, v text not null) partition by range (id);
create table parts_1 partition of parts for values from (0) to (100);
insert into parts values (1, 'p');
"""

AGENT = "select name from agents where id = 2"
VIEW = "select name from agent_names where id = 2"
NOTE = "select body from notes where id = 1"
PARENT = "select v from parts where id = 1"


# --- helpers -----------------------------------------------------------------------------


class Tail:
    """A ``pgreactive events tail`` subprocess; returns once it has subscribed."""

    def __init__(self, config: Path, *args: str, redis_url: str = REDIS_URL) -> None:
        self.process = subprocess.Popen(
            [PGREACTIVE, "events", "tail", "--config", str(config), "--redis", redis_url, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=BUFFERED_ENV,
        )
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.errors: list[str] = []
        self.subscribed = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self.subscribed.wait(_WAIT):
            self.stop()
            raise AssertionError(f"the tail never subscribed: {self.errors}")

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.errors.append(line.rstrip("\n"))
            if " subscribed to " in line:
                self.subscribed.set()

    def next(self) -> tuple[float, str]:
        """The next line and when it was read (time.monotonic)."""
        item = self.lines.get(timeout=_WAIT)
        assert item is not None, f"the tail exited: {self.errors}"
        return item

    def next_event(self) -> dict[str, Any]:
        event = json.loads(self.next()[1])
        assert isinstance(event, dict)
        return event

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def run_tool(*argv: str, config: Path | None, redis_url: str = REDIS_URL) -> Any:
    """Run ``pgreactive ARGV`` (with the proxies' config, Redis, upstream and catalog user)."""
    files = ["--config", str(config)] if config is not None else []
    return subprocess.run(
        [PGREACTIVE, *argv, *files, "--redis", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=TOOL_ENV,
    )


def flush(config: Path, *args: str, redis_url: str = REDIS_URL) -> str:
    """``pgreactive cache flush ARGS``; its stdout (it must succeed)."""
    result = run_tool(
        "cache", "flush", "--upstream", UPSTREAM, *args, config=config, redis_url=redis_url
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    return str(result.stdout)


@dataclass(frozen=True)
class Env:
    proxy: ProxyProcess
    db: str
    channel: str
    config: Path
    redis: redis.Redis

    def proxied(self) -> Conn:
        return connect(self.proxy.dsn(dbname=self.db))

    def last_id(self) -> str:
        """The newest event id in the stream ("0-0" when empty)."""
        entries: Any = self.redis.xrevrange(self.channel, count=1)
        return entries[0][0].decode() if entries else "0-0"

    def entries_after(self, after: str) -> list[tuple[str, str]]:
        """(id, payload) of every stream entry after `after`."""
        entries: Any = self.redis.xrange(self.channel, min=f"({after}")
        return [(i.decode(), fields[b"event"].decode()) for i, fields in entries]

    def wait_entries(self, after: str, n: int) -> list[tuple[str, str]]:
        """The first `n` entries after `after`, once there (events go out after the commit
        is acknowledged, so they may lag behind it)."""
        deadline = time.monotonic() + _WAIT
        while len(entries := self.entries_after(after)) < n:
            assert time.monotonic() < deadline, f"only {len(entries)} of {n} events came"
            time.sleep(0.01)
        return entries[:n]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tag = uuid.uuid4().hex
    db = f"pgr_tools_{tag[:10]}"
    config = tmp_path_factory.mktemp("tools") / "pgreactive.yaml"
    config.write_text(f'events: {{channel: "test:{tag}"}}\n')
    channel = f"{proxy_namespace()}:test:{tag}"  # the namespace prefixes it
    client = redis.Redis(host="127.0.0.1", port=6379, db=CACHE_REDIS_DB)
    proxy: ProxyProcess | None = None
    admin(f"create database {db}")
    try:
        admin(SCHEMA, db)
        proxy = start_caching_proxy("--config", str(config))
        env = Env(proxy, db, channel, config, client)
        with env.proxied() as conn:
            # A hit needs the database's catalog: from now on writes invalidate their tables
            # (before it is loaded, a write invalidates the whole database: table "*").
            cached(proxy, conn, NOTE)
        yield env
    finally:
        if proxy is not None:
            proxy.stop()
        client.delete(channel)
        client.close()
        admin(f"drop database if exists {db} with (force)")
        forget(db)


# --- the pure parts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tables", "orgs", "event", "kept"),
    [
        ({"agents"}, set(), {"table": "agents", "tables": ["agents"]}, True),
        ({"agents"}, set(), {"table": "notes", "tables": ["notes", "agents"]}, True),
        ({"agents"}, set(), {"table": "notes", "tables": ["notes"]}, False),
        ({"agents"}, set(), {"table": "*", "tables": ["*"]}, True),  # the whole database
        (set(), {"A"}, {"table": "agents", "organizationId": "A"}, True),
        (set(), {"A"}, {"table": "agents", "organizationId": "B"}, False),
        (set(), {"A"}, {"table": "agents", "organizationId": None}, False),
        ({"agents"}, {"A"}, {"table": "notes", "tables": ["notes"], "organizationId": "A"}, False),
        (set(), set(), {"table": "notes", "tables": ["notes"]}, True),
    ],
    ids=[
        "table", "in-tables", "other-table", "star", "org", "other-org", "unscoped",
        "both-needed", "no-filter",
    ],
)  # fmt: skip
def test_event_filter(
    tables: set[str], orgs: set[str], event: dict[str, Any], kept: bool
) -> None:
    assert EventFilter(frozenset(tables), frozenset(orgs)).keeps(event) is kept


@pytest.mark.parametrize(
    ("event_id", "last", "expected"),
    [
        ("5-1", "5-0", True),
        ("5-0", "5-0", False),
        ("5-0", "5-1", False),
        ("10-0", "9-9", True),  # numbers, not strings
        ("1764158400123-0", "1764158400122", True),
        ("1-0", None, True),
    ],
)
def test_newer(event_id: str, last: str | None, expected: bool) -> None:
    assert newer(event_id, last) is expected


# --- events tail -------------------------------------------------------------------------


def test_tail_prints_a_committed_write_within_100ms(env: Env) -> None:
    """Each event line is exactly the stored JSON, and arrives within `LATENCY_BOUND` of
    the client's autocommit returning.  After a warm-up write, three writes are timed and
    the fastest must be within the bound: a slow path (polling, buffered output) fails
    every time, one scheduling hiccup on a shared machine does not."""
    tail = Tail(env.config)
    latencies: list[float] = []
    try:
        with env.proxied() as conn:
            conn.execute("update notes set body = 'warm-up' where id = 1")
            assert tail.next_event()["table"] == "notes"
            for n in range(3):
                conn.execute("update agents set name = %s where id = 2", (f"bob{n}",))
                committed = time.monotonic()
                seen, line = tail.next()
                latencies.append(seen - committed)
                event = json.loads(line)
                assert (event["table"], event["operation"], event["database"]) == (
                    "agents",
                    "UPDATE",
                    env.db,
                )
                stored = env.redis.xrange(env.channel, min=event["eventId"], max=event["eventId"])
                assert [fields[b"event"].decode() for _, fields in stored] == [line]
    finally:
        assert tail.stop() == 0, tail.errors
    assert min(latencies) <= LATENCY_BOUND, f"event lines came after {latencies} s"


def test_tail_filters_by_table_and_organization(env: Env) -> None:
    by_table = Tail(env.config, "--table", "agents")
    by_org = Tail(env.config, "--org", "A")
    try:
        start = env.last_id()
        with env.proxied() as conn:
            conn.execute("update notes set body = 'n' where id = 1")  # neither
            conn.execute("update agents set name = 'b' where organization_id = 'B' and id = 2")
            conn.execute("update agents set name = 'x' where id = 1")  # no organizationId
            conn.execute("update agents set name = 'a' where organization_id = 'A' and id = 1")
        notes, org_b, unscoped, org_a = env.wait_entries(start, 4)
        assert json.loads(notes[1])["table"] == "notes"
        assert json.loads(org_a[1])["organizationId"] == "A"
        # Events arrive in commit order: what precedes the last one was filtered out.
        assert [by_table.next()[1] for _ in range(3)] == [org_b[1], unscoped[1], org_a[1]]
        assert by_org.next()[1] == org_a[1]
    finally:
        assert by_table.stop(signal.SIGINT) == 0, by_table.errors
        assert by_org.stop(signal.SIGTERM) == 0, by_org.errors


def test_tail_since_replays_then_follows_live(env: Env) -> None:
    start = env.last_id()
    with env.proxied() as conn:
        conn.execute("update notes set body = 'one' where id = 1")
        conn.execute("update agents set name = 'two' where id = 2")
        (first, _), (second, second_payload) = env.wait_entries(start, 2)
        tail = Tail(env.config, "--since", first)
        try:
            assert tail.next()[1] == second_payload  # replayed, exactly as stored
            conn.execute("update notes set body = 'three' where id = 1")
            ((third, third_payload),) = env.wait_entries(second, 1)
            assert tail.next()[1] == third_payload  # live, and the replayed one not again
            conn.execute("update notes set body = 'four' where id = 1")
            ((_, fourth_payload),) = env.wait_entries(third, 1)
            assert tail.next()[1] == fourth_payload
        finally:
            assert tail.stop() == 0, tail.errors
    assert any("replayed 1 event after" in line for line in tail.errors), tail.errors


def test_tail_since_says_when_the_stream_was_trimmed_past_it(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    config = tmp_path / "pgreactive.yaml"
    config.write_text(f'events: {{channel: "test:{tag}"}}\n')
    channel = f"{proxy_namespace()}:test:{tag}"
    with redis.Redis(host="127.0.0.1", port=6379, db=CACHE_REDIS_DB) as client:
        try:
            for n in (1, 2, 3):
                client.xadd(channel, {"event": f'{{"eventId": "7-{n}"}}'}, id=f"7-{n}")
            client.xtrim(channel, maxlen=1, approximate=False)  # as stream_maxlen does
            tail = Tail(config, "--since", "7-1")
            try:
                assert tail.next()[1] == '{"eventId": "7-3"}'
            finally:
                assert tail.stop() == 0, tail.errors
            assert any("before 7-3 may have been trimmed" in e for e in tail.errors), tail.errors
        finally:
            client.delete(channel)


def test_tail_since_under_concurrent_writes_misses_nothing_and_repeats_nothing(
    env: Env,
) -> None:
    """Writes go on while the tail subscribes and replays: its output must be exactly the
    stream from the given id on, in order -- no event lost between replay and live, none
    printed twice."""
    start = env.last_id()
    stop = threading.Event()  # several writers: events close together, the race likelier
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            with env.proxied() as conn:
                for n in range(2000):
                    if stop.is_set():
                        return
                    conn.execute("update notes set body = %s where id = 1", (f"w{n}",))
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        env.wait_entries(start, 5)  # some to replay
        tail = Tail(env.config, "--since", start)
        time.sleep(0.3)  # and more while it replays and follows
    finally:
        stop.set()
        for thread in threads:
            thread.join(_WAIT)
    assert not failures, failures
    try:
        with env.proxied() as conn:
            conn.execute("update agents set name = 'marker' where id = 2")
        printed: list[str] = []
        while not printed or json.loads(printed[-1])["table"] != "agents":
            printed.append(tail.next()[1])
    finally:
        assert tail.stop() == 0, tail.errors
    stored = [payload for _, payload in env.entries_after(start)]
    assert len(printed) > 5
    assert printed == stored[: len(printed)]


# --- cache flush ---------------------------------------------------------------------------


def test_cache_flush_table_makes_the_next_read_of_it_a_miss(env: Env) -> None:
    tail = Tail(env.config, "--table", "agents")

    def scenario() -> None:
        value = f"direct-{uuid.uuid4().hex[:8]}"
        with env.proxied() as conn:
            old = cached(env.proxy, conn, AGENT)
            cached(env.proxy, conn, VIEW)
            cached(env.proxy, conn, NOTE)
            admin(f"update agents set name = '{value}' where id = 2", env.db)  # no invalidation
            assert cached(env.proxy, conn, AGENT) == old  # so this came from the cache
            out = flush(env.config, "--table", "agents", "--database", env.db)
            prefix = key_namespace(env.db).prefix
            assert f"{prefix}g:agents" in out.split(), out
            assert f"{prefix}g:agents#organization_id:-" in out.split(), out
            fresh, decided = read(env.proxy, conn, AGENT)
            assert decided == ["miss"], decided
            assert fresh[2] == ((value.encode(),),)
            assert read(env.proxy, conn, VIEW)[1] == ["miss"]  # a view over agents too
            assert read(env.proxy, conn, NOTE)[1] == ["hit"]  # other tables keep theirs

    try:
        foreign_bump_retry(scenario)
        event = tail.next_event()
    finally:
        assert tail.stop() == 0, tail.errors
    assert (event["table"], event["operation"], event["source"]) == (
        "agents",
        "FLUSH",
        "pgreactive cache flush",
    )
    assert (event["database"], event["organizationId"]) == (env.db, None)
    assert env.redis.xrange(env.channel, min=event["eventId"], max=event["eventId"])


def test_cache_flush_of_a_partition_reaches_reads_of_its_parent(env: Env) -> None:
    """With a catalog, a flush reaches what a write to the table would (its parents)."""

    def scenario() -> None:
        value = f"direct-{uuid.uuid4().hex[:8]}"
        with env.proxied() as conn:
            old = cached(env.proxy, conn, PARENT)
            admin(f"update parts_1 set v = '{value}' where id = 1", env.db)
            assert cached(env.proxy, conn, PARENT) == old
            out = flush(env.config, "--table", "parts_1", "--database", env.db)
            assert out.startswith(f"flushed table parts_1 (and parts) of database {env.db} ")
            fresh, decided = read(env.proxy, conn, PARENT)
            assert (decided, fresh[2]) == (["miss"], ((value.encode(),),))

    foreign_bump_retry(scenario)


def test_cache_flush_database_reaches_every_table(env: Env) -> None:
    tail = Tail(env.config)

    def scenario() -> None:
        value = f"direct-{uuid.uuid4().hex[:8]}"
        with env.proxied() as conn:
            old = cached(env.proxy, conn, AGENT), cached(env.proxy, conn, NOTE)
            admin(f"update agents set name = '{value}' where id = 2", env.db)
            admin(f"update notes set body = '{value}' where id = 1", env.db)
            assert (cached(env.proxy, conn, AGENT), cached(env.proxy, conn, NOTE)) == old
            out = flush(env.config, "--database", env.db)
            assert out.startswith(f"flushed database {env.db} "), out
            # The flush also bumps the `ddl` counter: the proxy reloads the catalog, and
            # reads bypass the cache until it is there (then miss).
            for sql in (AGENT, NOTE):
                fresh, decided = read(env.proxy, conn, sql)
                assert decided in (["miss"], ["bypass:catalog_unknown"]), decided
                assert fresh[2] == ((value.encode(),),)
            cached(env.proxy, conn, NOTE)  # and the cache works again

    try:
        foreign_bump_retry(scenario)
        event = tail.next_event()
    finally:
        assert tail.stop() == 0, tail.errors
    assert (event["table"], event["tables"], event["operation"]) == ("*", ["*"], "FLUSH")
    assert event["database"] == env.db


def test_cache_flush_all_bumps_the_global_epoch(env: Env, tmp_path: Path) -> None:
    config = tmp_path / "pgreactive.yaml"
    config.write_text(f'events: {{channel: "test:{uuid.uuid4().hex}"}}\n')
    with throwaway_redis() as url:
        epoch_key = global_epoch(proxy_namespace(url))
        proxy = caching_proxy(url, "--config", str(config))
        try:
            with connect(proxy.dsn(dbname=env.db)) as conn:
                cached(proxy, conn, NOTE)
                with redis.Redis.from_url(url) as client:
                    epoch: Any = client.get(epoch_key)
                    out = flush(config, "--all", redis_url=url)
                    assert out.startswith("flushed every database ("), out
                    assert f": bumped {epoch_key}\n" in out, out
                    assert int(client.get(epoch_key) or 0) > int(epoch or 0)
                assert read(proxy, conn, NOTE)[1] == ["miss"]
        finally:
            proxy.stop()


def _fails_in_one_line(result: Any) -> str:
    assert result.returncode == 1 and result.stdout == "", (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    return str(lines[0])


def test_cache_flush_of_a_database_nothing_went_to_fails(env: Env) -> None:
    """The issue's case: a flush of a database the server never cached said it worked."""
    other = f"pgr_never_{uuid.uuid4().hex[:10]}"
    line = _fails_in_one_line(
        run_tool("cache", "flush", "--database", other, config=env.config)
    )
    assert line.startswith("pgreactive cache flush: nothing flushed: no server of namespace ")
    assert line.endswith(f"ever cached or invalidated database {other}"), line


def test_cache_flush_of_a_table_the_catalog_lacks_fails(env: Env) -> None:
    line = _fails_in_one_line(
        run_tool("cache", "flush", "--database", env.db, "--table", "nosuch", config=env.config)
    )
    assert line == (
        f"pgreactive cache flush: nothing flushed: database {env.db} has no relation nosuch"
    )


def test_cache_flush_of_a_namespace_nobody_registered_fails(env: Env) -> None:
    line = _fails_in_one_line(
        run_tool("cache", "flush", "--namespace", "nobody", "--all", config=env.config)
    )
    assert "no pgreactive server registered namespace nobody" in line, line


def test_cache_flush_with_another_spelling_of_the_upstream_flushes_the_server(
    tmp_path: Path,
) -> None:
    """The issue's case: `--upstream` spelled `localhost` where the server has 127.0.0.1
    flushed nothing and exited 0.  Now the tool names keys as the server registered them."""
    assert PG_HOST == "127.0.0.1", "the test spells the same server differently"
    config = tmp_path / "pgreactive.yaml"
    config.write_text(f'events: {{channel: "test:{uuid.uuid4().hex}"}}\n')
    db = f"pgr_spell_{uuid.uuid4().hex[:10]}"
    admin(f"create database {db}")
    try:
        admin(SCHEMA, db)
        with throwaway_redis() as url:
            proxy = caching_proxy(url, "--config", str(config))
            try:
                with connect(proxy.dsn(dbname=db)) as conn:
                    old = cached(proxy, conn, NOTE)
                    admin("update notes set body = 'changed' where id = 1", db)
                    assert cached(proxy, conn, NOTE) == old
                    result = subprocess.run(
                        [PGREACTIVE, "cache", "flush", "--config", str(config), "--redis", url,
                         "--upstream", f"postgresql://localhost:{PG_PORT}", "--database", db],
                        capture_output=True, text=True, timeout=60, env=TOOL_ENV,
                    )  # fmt: skip
                    assert result.returncode == 0, (result.stdout, result.stderr)
                    assert f"upstream {PG_HOST}:{PG_PORT}" in result.stdout, result.stdout
                    fresh, decided = read(proxy, conn, NOTE)
                    assert decided in (["miss"], ["bypass:catalog_unknown"]), decided
                    assert fresh[2] == ((b"changed",),)
            finally:
                proxy.stop()
    finally:
        admin(f"drop database if exists {db} with (force)")


# --- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["events", "tail"], ["cache", "flush", "--database", "x", "--table", "agents"]],
    ids=["tail", "flush"],
)
def test_unreachable_redis_exits_1_with_one_line(argv: list[str]) -> None:
    result = run_tool(*argv, config=None, redis_url="redis://127.0.0.1:1/0")
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Redis at redis://127.0.0.1:1/0" in lines[0], lines
    assert result.stdout == ""


@pytest.mark.parametrize(
    "argv", [["events", "tail"], ["cache", "flush", "--all"]], ids=["tail", "flush"]
)
def test_no_redis_configured_exits_1_and_says_why(argv: list[str]) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PGREACTIVE_")}
    result = subprocess.run(
        [PGREACTIVE, *argv], capture_output=True, text=True, timeout=60, env=environ
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "no Redis configured" in lines[0] and "memory" in lines[0], lines


@pytest.mark.parametrize(
    "argv",
    [
        ["events", "tail", "--since", "yesterday"],
        ["events", "follow"],
        ["cache", "flush", "--all", "--table", "agents"],
        ["cache"],
    ],
    ids=["bad-since", "no-such-command", "all-and-table", "no-command"],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    result = run_tool(*argv, config=None)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip()
