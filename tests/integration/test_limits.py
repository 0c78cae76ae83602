"""Hostile or careless clients (issue 9 §4, DESIGN invariant 7): the start-up timeout, the
client connection limit, running out of file descriptors, over-long start-up packets, and a
CancelRequest whose socket closes only once Postgres has read it.

Every test asserts what the client received (the SQLSTATE, then EOF); every wait is a hang
guard, never a speed requirement.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import struct
import time
from collections.abc import Callable, Iterator

import asyncpg
import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT, ProxyProcess, scrape, start_proxy
from tests.integration.cluster import (
    Cluster,
    auth_cluster_fixture,  # noqa: F401  (imported so that pytest finds the fixture here)
    terminate_backends,
    unique_app_name,
    wait_active,
    wait_for,
)
from tests.integration.proxies import assert_no_crash, running_proxy
from tests.integration.wire import (
    GUARD,
    RawClient,
    cancel_request,
    error_fields,
    errors,
    query,
    rows,
    ssl_request,
    startup_message,
    untagged,
)

STARTUP_TIMEOUT = 2  # seconds; small, yet far above a login on a busy machine
AUTH_TIMEOUT_MESSAGE = "canceling authentication due to timeout"
LOGIN = {"user": "postgres", "database": "test"}


def expect_startup_timeout(client: RawClient) -> None:
    """The client gets Postgres's authentication-timeout FATAL, then EOF."""
    fields = client.expect_error_then_close()
    assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "57014", AUTH_TIMEOUT_MESSAGE)


# --- the start-up timeout ---------------------------------------------------------------


@pytest.fixture(scope="module")
def timeout_proxy() -> Iterator[ProxyProcess]:
    with running_proxy(config=f"limits:\n  startup_timeout: {STARTUP_TIMEOUT}\n") as p:
        yield p
        assert_no_crash(p)


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(ssl_request(), id="after-ssl-request"),
        pytest.param(startup_message(LOGIN)[:10], id="half-a-startup-packet"),
    ],
)
def test_idle_socket_is_closed_at_the_startup_timeout(
    timeout_proxy: ProxyProcess, sent: bytes
) -> None:
    with RawClient(timeout_proxy.host, timeout_proxy.port, timeout=GUARD + STARTUP_TIMEOUT) as c:
        c.send(sent)
        if sent == ssl_request():
            assert c.recv_exact(1) == b"N"
        expect_startup_timeout(c)


def test_trickling_sender_is_closed_at_the_startup_timeout(timeout_proxy: ProxyProcess) -> None:
    """A byte every half second keeps every read short, but the whole start-up is timed:
    the client is closed long before its packet is complete."""
    packet = startup_message({**LOGIN, "application_name": "x" * 40})
    assert len(packet) * 0.5 > 5 * STARTUP_TIMEOUT  # it could not finish in time
    with RawClient(timeout_proxy.host, timeout_proxy.port) as c:
        sent = 0
        c.sock.settimeout(0.5)
        while sent < len(packet):
            try:
                c.send(packet[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            try:
                chunk = c.sock.recv(65536)
            except TimeoutError:
                continue
            c.buf += chunk
            break
        c.sock.settimeout(GUARD)
        assert sent < len(packet), "the proxy waited for the whole trickled packet"
        expect_startup_timeout(c)


def test_authenticated_session_outlives_the_startup_timeout(timeout_proxy: ProxyProcess) -> None:
    with RawClient(timeout_proxy.host, timeout_proxy.port) as c:
        assert c.login(**LOGIN).ok
        time.sleep(STARTUP_TIMEOUT + 1)  # idle past the start-up timeout: not a start-up
        assert rows(c.simple_query("select 'still here'")) == [[b"still here"]]


def test_client_stuck_in_authentication_is_closed_and_its_upstream_too(
    auth_cluster: Cluster,
) -> None:
    """Postgres asked for a password that never comes: the client gets the timeout FATAL
    and the half-authenticated upstream connection is closed (no backend slot held)."""
    config = f"limits:\n  startup_timeout: {STARTUP_TIMEOUT}\n"
    upstream = f"postgresql://127.0.0.1:{auth_cluster.port}"
    app = unique_app_name("pgr_auth_timeout")
    with (
        running_proxy("--upstream", upstream, config=config) as proxy,
        RawClient(proxy.host, proxy.port) as c,
    ):
        c.send(startup_message({"user": "u_password", "database": "postgres",
                                "application_name": app}))  # fmt: skip
        tag, payload = c.recv_message()
        assert (tag, struct.unpack("!I", payload[:4])[0]) == (b"R", 3)  # cleartext password
        expect_startup_timeout(c)

        def upstream_gone() -> bool:
            with psycopg.connect(auth_cluster.dsn(), autocommit=True) as conn:
                count = conn.execute(
                    "select count(*) from pg_stat_activity where backend_type = 'client backend'"
                    " and pid <> pg_backend_pid()"
                ).fetchone()
            return count == (0,)

        wait_for(upstream_gone, "the half-authenticated upstream backend to end")
        assert_no_crash(proxy)


# --- the client connection limit --------------------------------------------------------

LIMIT = 3


@pytest.fixture
def limited_proxy() -> Iterator[ProxyProcess]:
    config = f"limits:\n  max_client_connections: {LIMIT}\n"
    with running_proxy("--metrics", "127.0.0.1:0", config=config) as p:
        yield p
        assert_no_crash(p)


def _open_clients(proxy: ProxyProcess) -> int:
    return int(scrape(proxy)["pgreactive_client_connections"])


def test_twice_the_connection_limit(limited_proxy: ProxyProcess) -> None:
    proxy = limited_proxy
    admitted = [psycopg.connect(proxy.dsn(connect_timeout="10"), autocommit=True)
                for _ in range(LIMIT)]  # fmt: skip
    try:
        # The excess: a raw client sees the SQLSTATE, a driver the message.
        for _ in range(LIMIT - 1):
            with RawClient(proxy.host, proxy.port) as c:
                c.send(startup_message(LOGIN))
                fields = c.expect_error_then_close()
            assert (fields["S"], fields["C"]) == ("FATAL", "53300"), fields
            assert fields["M"] == "sorry, too many clients already"
        with pytest.raises(psycopg.OperationalError, match="sorry, too many clients already"):
            psycopg.connect(proxy.dsn(connect_timeout="10"))
        # The well-behaved clients carry on.
        for conn in admitted:
            assert conn.execute("select 1 + 1").fetchone() == (2,)
        assert scrape(proxy)["pgreactive_client_connections_refused_total"] == LIMIT
        assert "client connection limit reached (3)" in proxy.log
    finally:
        for conn in admitted:
            conn.close()
    # Once they are gone, new clients are served again (the refused ones held no slot).
    wait_for(lambda: _open_clients(proxy) == 0, "the proxy to see the clients go")
    again = [psycopg.connect(proxy.dsn(connect_timeout="10")) for _ in range(LIMIT)]
    for conn in again:
        assert conn.execute("select 'served'").fetchone() == ("served",)
        conn.close()


def test_cancel_request_is_forwarded_at_the_connection_limit(
    limited_proxy: ProxyProcess,
) -> None:
    """Postgres serves a CancelRequest whatever its connection count: so does the proxy."""
    app = unique_app_name("pgr_cancel_full")
    clients = [RawClient(limited_proxy.host, limited_proxy.port) for _ in range(LIMIT)]
    try:
        logins = [c.login(**LOGIN, application_name=app) for c in clients]
        busy, login = clients[0], logins[0]
        assert login.pid is not None and login.secret is not None
        busy.send(query("select pg_sleep(30)"))
        wait_active(app)
        with RawClient(limited_proxy.host, limited_proxy.port) as other:
            other.send(ssl_request())
            assert other.recv_exact(1) == b"N"
            other.send(cancel_request(login.pid, login.secret))
            assert other.expect_closed() == b""
        assert [e["C"] for e in errors(busy.read_until(b"Z"))] == ["57014"]
    finally:
        for c in clients:
            c.close()
        terminate_backends(app)


# --- running out of file descriptors ------------------------------------------------------


def _hard_open_files_limit(limit: int) -> Callable[[], None]:
    def lower() -> None:  # in the proxy's child process, before it starts
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return lower


def _flood(proxy: ProxyProcess, count: int) -> list[socket.socket]:
    """Open up to `count` idle sockets to the proxy (fewer if the backlog fills)."""
    flood: list[socket.socket] = []
    for _ in range(count):
        try:
            flood.append(socket.create_connection((proxy.host, proxy.port), timeout=GUARD))
        except OSError:
            break
    return flood


def _closed_by_peer(sock: socket.socket) -> bool:
    """The proxy closed this idle socket without a byte (waits up to the guard)."""
    sock.settimeout(GUARD)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _served(proxy: ProxyProcess, app: str) -> bool:
    try:
        with psycopg.connect(proxy.dsn(connect_timeout="5", application_name=app)) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_idle_flood_leaves_the_admitted_clients_their_descriptors() -> None:
    """Hard limit 160 descriptors: the connection limit is lowered to what they hold (two
    per client) and the proxy says so.  Under a flood of idle sockets, the admitted ones
    still log in (their upstream connections find descriptors), 50 refused ones wait for
    their 53300, and the rest are closed at once."""
    proxy = start_proxy("--no-cache", preexec=_hard_open_files_limit(160))
    app = unique_app_name("pgr_flood")
    capacity, waiting = (160 - 100) // 2, 50
    flood = _flood(proxy, capacity + waiting + 40)
    try:
        assert len(flood) == capacity + waiting + 40
        assert f"lowered from 1000 to {capacity}" in proxy.log
        admitted, refused, dropped = (
            flood[:capacity], flood[capacity : capacity + waiting], flood[capacity + waiting :]
        )
        assert all(_closed_by_peer(s) for s in dropped)
        for sock in admitted:
            client = RawClient.wrap(sock)
            assert client.login(**LOGIN, application_name=app).ok
            assert rows(client.simple_query("select 'served'")) == [[b"served"]]
        client = RawClient.wrap(refused[0])
        client.send(startup_message(LOGIN))
        assert client.expect_error_then_close()["C"] == "53300"
        assert_no_crash(proxy)
    finally:
        for sock in flood:
            sock.close()
        proxy.stop()
        terminate_backends(app)


def test_running_out_of_descriptors_keeps_the_listener() -> None:
    """Hard limit 40: a flood exhausts the descriptors (EMFILE on accept); it is shed
    without ending the accept loop, and once it is gone clients are served again."""
    proxy = start_proxy("--no-cache", preexec=_hard_open_files_limit(40))
    app = unique_app_name("pgr_emfile")
    flood = _flood(proxy, 120)
    try:
        open_files = f"/proc/{proxy.process.pid}/fd"
        wait_for(lambda: len(os.listdir(open_files)) >= 39, "the proxy to run out of descriptors")
        for sock in flood:
            sock.close()
        flood.clear()
        wait_for(lambda: _served(proxy, app), "a client to be served after the flood")
        assert_no_crash(proxy)
    finally:
        for sock in flood:
            sock.close()
        proxy.stop()
        terminate_backends(app)


# --- over-long start-up packets ---------------------------------------------------------


def _startup_of_body_length(length: int) -> bytes:
    """A StartupMessage whose body (after the length word) is exactly `length` bytes."""
    base = struct.pack("!I", 3 << 16) + b"user\x00postgres\x00database\x00test\x00"
    base += b"application_name\x00"
    pad = length - len(base) - 2  # the value's terminator and the packet's
    return untagged(base + b"x" * pad + b"\x00\x00")


def test_startup_packet_of_exactly_10000_bytes_is_accepted(timeout_proxy: ProxyProcess) -> None:
    packet = _startup_of_body_length(10_000)
    for host, port in ((PG_HOST, PG_PORT), (timeout_proxy.host, timeout_proxy.port)):
        with RawClient(host, port) as c:
            c.send(packet)
            assert c.finish_login().ok


def test_startup_packet_of_10001_bytes_is_refused(timeout_proxy: ProxyProcess) -> None:
    """The whole packet sent (test_failures sends only its header: refused at once): 08P01.
    (Postgres logs "invalid length of startup packet" and closes without a word.)"""
    packet = _startup_of_body_length(10_001)
    with RawClient(timeout_proxy.host, timeout_proxy.port) as c:
        # The proxy may close while the rest is being sent: its reply is read below.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            c.send(packet)
        tag, payload = c.recv_message()
        assert tag == b"E"
        fields = error_fields(payload)
        assert (fields["S"], fields["C"]) == ("FATAL", "08P01"), fields
        assert fields["M"] == "invalid length of startup packet"
        c.expect_closed()


# --- CancelRequest ----------------------------------------------------------------------


class SinkFailed(Exception):
    pass


async def _sink(chunk: bytes) -> None:
    raise SinkFailed("the application gave up mid-COPY")


# 5000 rows (~0.5 MB): small enough that Postgres has sent it all before the cancel arrives
# when the proxy answers the cancel too early (the cancel then hits a later statement),
# large enough that asyncpg has not read the whole result when its sink raises (with ~100
# rows asyncpg itself hangs, directly against Postgres too: its cancel waits for a result
# it has already read).
COPIED_ROWS = 5000


@pytest.mark.parametrize("via", ["direct", "proxy"])
async def test_cancel_never_reaches_the_next_statement(
    timeout_proxy: ProxyProcess, via: str
) -> None:
    """asyncpg cancels a COPY whose sink raised and waits for the cancel socket to close
    before its next statement: that close must mean Postgres has read the cancel, or the
    cancel lands on a later statement.  Twenty times in a row on one connection (directly
    against Postgres too, to show the test itself is sound)."""
    direct = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
    url = direct if via == "direct" else timeout_proxy.url()
    conn = await asyncpg.connect(url, timeout=GUARD)
    try:
        for run in range(20):
            with pytest.raises(SinkFailed):
                await conn.copy_from_query(
                    f"select g, repeat('x', 100) from generate_series(1, {COPIED_ROWS}) g",
                    output=_sink,
                    timeout=GUARD,
                )
            assert await conn.fetchval("SELECT 1", timeout=GUARD) == 1, f"run {run}"
    finally:
        await conn.close(timeout=GUARD)
