"""Failure behaviour: dead upstreams, vanishing clients, hostile bytes, shutdown, cancels.

DESIGN invariants 6 and 7 and PITFALLS A1-A9, B16.  Each test names the SQLSTATE the client
must see.  Raw sockets (`tests.integration.wire`) are used wherever a driver would hide the
bytes or refuse to send them; `FaultRelay` sits between proxy and Postgres when the upstream
has to die.  Every wait is a hang guard, never a speed requirement.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests.conftest import PG_DB, PG_HOST, PG_PORT, PG_USER, ProxyProcess
from tests.integration.cluster import (
    AUTH_USERS,
    Cluster,
    auth_cluster_fixture,  # noqa: F401  (imported so that pytest finds the fixture here)
    backends,
    free_port,
    terminate_backends,
    unique_app_name,
    wait_active,
    wait_for,
    wait_gone,
)
from tests.integration.fault_relay import FaultRelay
from tests.integration.proxies import assert_no_crash, running_proxy
from tests.integration.wire import (
    GUARD,
    RawClient,
    cancel_request,
    describe,
    errors,
    gssenc_request,
    message,
    query,
    rows,
    ssl_request,
    startup_message,
    untagged,
)

LIMITED = "limits:\n  max_message_bytes: 100000\n"


@pytest.fixture(scope="module")
def limited_proxy() -> Iterator[ProxyProcess]:
    """The module's proxy: real Postgres upstream, max_message_bytes 100000."""
    with running_proxy(config=LIMITED) as p:
        yield p


@pytest.fixture(scope="module")
def bystander(limited_proxy: ProxyProcess) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A well-behaved session opened before any abuse, kept open throughout."""
    with psycopg.connect(limited_proxy.dsn(connect_timeout="10"), autocommit=True) as conn:
        yield conn


@pytest.fixture
def unharmed(
    limited_proxy: ProxyProcess, bystander: psycopg.Connection[tuple[object, ...]]
) -> Iterator[None]:
    """After the test: the bystander still works and the proxy neither died nor crashed."""
    yield
    assert bystander.execute("select 1 + 1").fetchone() == (2,)
    assert_no_crash(limited_proxy)


def in_thread(fn: Callable[[], object], guard: float = GUARD) -> object:
    """Run `fn` in a thread; fail if it has not finished within the guard (a hang)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(("ok", fn()))
        except BaseException as exc:
            outcome.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(guard)
    assert not thread.is_alive(), f"{fn} still blocked after {guard} s (a hang)"
    kind, value = outcome[0]  # type: ignore[misc]
    if kind == "raised":
        raise value  # type: ignore[misc]
    return value


def login(proxy: ProxyProcess, app: str, **params: str) -> RawClient:
    client = RawClient(proxy.host, proxy.port)
    result = client.login(application_name=app, **params)
    assert result.ok, result.messages
    return client


# --- the upstream is unreachable or dies ------------------------------------------------


@pytest.fixture(scope="module")
def dead_upstream_proxy() -> Iterator[ProxyProcess]:
    with running_proxy("--upstream", f"postgresql://127.0.0.1:{free_port()}") as p:
        yield p


def test_upstream_unreachable_raw(dead_upstream_proxy: ProxyProcess) -> None:
    with RawClient(dead_upstream_proxy.host, dead_upstream_proxy.port) as c:
        c.send(startup_message({"user": "postgres", "database": "test"}))
        fields = c.expect_error_then_close()
    assert fields["C"] == "08006"
    assert fields["S"] == "FATAL"
    assert_no_crash(dead_upstream_proxy)


def test_upstream_unreachable_psycopg(dead_upstream_proxy: ProxyProcess) -> None:
    # libpq keeps no SQLSTATE for start-up errors (e.sqlstate is None; the raw test above
    # checks 08006): what psycopg shows is the class and that the server sent a FATAL.
    def connect() -> None:
        psycopg.connect(dead_upstream_proxy.dsn(connect_timeout="10"))

    with pytest.raises(psycopg.OperationalError) as info:
        in_thread(connect)
    assert "FATAL" in str(info.value)
    assert_no_crash(dead_upstream_proxy)


@pytest.fixture
def relayed() -> Iterator[tuple[FaultRelay, ProxyProcess]]:
    """A proxy whose upstream path runs through a relay the test can cut."""
    with (
        FaultRelay(PG_HOST, PG_PORT) as relay,
        running_proxy("--upstream", f"postgresql://127.0.0.1:{relay.port}") as proxy,
    ):
        yield relay, proxy
        assert_no_crash(proxy)


def _serves_new_sessions(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn(connect_timeout="10")) as conn:
        assert conn.execute("select 'still serving'").fetchone() == ("still serving",)


def test_upstream_cut_while_idle(relayed: tuple[FaultRelay, ProxyProcess]) -> None:
    relay, proxy = relayed
    app = unique_app_name("pgr_cut_idle")
    with login(proxy, app) as c:
        assert rows(c.simple_query("select 1")) == [[b"1"]]
        assert relay.cut() == 1
        fields = c.expect_error_then_close()
    assert fields["C"] == "08006", fields
    assert fields["S"] == "FATAL"
    _serves_new_sessions(proxy)


def test_upstream_cut_during_query(relayed: tuple[FaultRelay, ProxyProcess]) -> None:
    relay, proxy = relayed
    app = unique_app_name("pgr_cut_busy")
    try:
        with login(proxy, app) as c:
            c.send(query("select pg_sleep(30)"))
            wait_active(app)
            assert relay.cut() == 1
            fields = c.expect_error_then_close()
        assert fields["C"] == "08006", fields
        _serves_new_sessions(proxy)
    finally:
        terminate_backends(app)  # Postgres only notices the reset when pg_sleep ends


def test_upstream_cut_psycopg(relayed: tuple[FaultRelay, ProxyProcess]) -> None:
    relay, proxy = relayed
    app = unique_app_name("pgr_cut_pg")
    idle = psycopg.connect(proxy.dsn(connect_timeout="10"), autocommit=True)
    busy = psycopg.connect(proxy.dsn(connect_timeout="10", application_name=app))
    try:
        assert idle.execute("select 1").fetchone() == (1,)

        def cut_when_running() -> None:
            wait_active(app)
            relay.cut()

        cutter = threading.Thread(target=cut_when_running, daemon=True)
        cutter.start()
        with pytest.raises(psycopg.OperationalError) as current:
            in_thread(lambda: busy.execute("select pg_sleep(30)"))
        cutter.join(GUARD)
        assert current.value.sqlstate == "08006", current.value
        with pytest.raises(psycopg.OperationalError) as following:
            in_thread(lambda: idle.execute("select 1"))
        assert following.value.sqlstate == "08006", following.value
        assert idle.closed and busy.closed
        _serves_new_sessions(proxy)
    finally:
        idle.close()
        busy.close()
        terminate_backends(app)


# --- the client goes away --------------------------------------------------------------


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("doing", ["running pg_sleep(30)", "idle in transaction"])
def test_client_disconnect_ends_backend(
    how: str, doing: str, limited_proxy: ProxyProcess, unharmed: None
) -> None:
    """No leaked backends: the upstream goes when the client does, its query cancelled."""
    app = unique_app_name("pgr_gone")
    try:
        c = login(limited_proxy, app)
        if doing.startswith("running"):
            c.send(query("select pg_sleep(30)"))
            wait_active(app)
        else:
            c.simple_query("begin; select 1")
            wait_for(
                lambda: [b[1] for b in backends(app)] == ["idle in transaction"],
                "idle in transaction",
            )
        c.close(reset=how == "rst")
        wait_gone(app)
    finally:
        terminate_backends(app)


# --- malformed client bytes after a valid start-up --------------------------------------

MALFORMED = {
    "length-3": b"Q" + struct.pack("!I", 3),
    "length-0": b"Q" + struct.pack("!I", 0),
    "unknown-tag-!": b"!" + struct.pack("!I", 4),
    "backend-tag-Z": b"Z" + struct.pack("!I", 5) + b"I",
    "over-max_message_bytes": b"Q" + struct.pack("!I", 200_000) + b"select 1 -- ",
    "huge-declared-length": b"Q" + struct.pack("!I", 0x7FFFFFF0) + b"select",
    "sync-over-small-limit": b"S" + struct.pack("!I", 20_000) + b"\x00" * 16,
    "describe-bad-kind": describe("Z", "x"),
    "query-unterminated": message(b"Q", b"select 1"),
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_message_is_08P01(
    data: bytes, limited_proxy: ProxyProcess, unharmed: None
) -> None:
    app = unique_app_name("pgr_bad")
    try:
        with login(limited_proxy, app) as c:
            c.send(data)
            fields = c.expect_error_then_close()
        assert fields["C"] == "08P01", fields
        assert fields["S"] == "FATAL"
        wait_gone(app)  # ... and its upstream connection is closed too
    finally:
        terminate_backends(app)


def test_message_under_max_message_bytes_is_fine(
    limited_proxy: ProxyProcess, unharmed: None
) -> None:
    sql = "select length('" + "x" * 90_000 + "')"
    with login(limited_proxy, unique_app_name("pgr_big")) as c:
        assert rows(c.simple_query(sql)) == [[b"90000"]]


# --- start-up ---------------------------------------------------------------------------


def _startup_error(host: str, port: int, packet: bytes) -> dict[str, str]:
    with RawClient(host, port) as c:
        c.send(packet)
        return c.expect_error_then_close()


def test_startup_packet_over_10000_bytes(limited_proxy: ProxyProcess, unharmed: None) -> None:
    # PG's MAX_STARTUP_PACKET_LENGTH (10000) bounds the packet after its length word.
    # (Postgres itself logs it as a COMMERROR and closes without a word; the proxy says why.)
    header = struct.pack("!II", 4 + 10_001, 3 << 16) + b"user\x00postgres\x00"
    fields = _startup_error(limited_proxy.host, limited_proxy.port, header)
    assert fields["C"] == "08P01", fields


def test_protocol_2_is_refused(limited_proxy: ProxyProcess, unharmed: None) -> None:
    with RawClient(limited_proxy.host, limited_proxy.port) as c:
        c.send(startup_message({"user": "postgres", "database": "test"}, major=2))
        reply = c.expect_closed()
    assert reply[:1] == b"E", reply  # an error (Postgres too answers 'E' and closes)


def test_protocol_4_is_refused_like_postgres(limited_proxy: ProxyProcess, unharmed: None) -> None:
    packet = startup_message({"user": "postgres", "database": "test"}, major=4)
    direct = _startup_error(PG_HOST, PG_PORT, packet)
    via_proxy = _startup_error(limited_proxy.host, limited_proxy.port, packet)
    assert direct["C"] == "0A000"  # feature_not_supported
    assert via_proxy["C"] == direct["C"], via_proxy
    assert via_proxy["S"] == "FATAL"


@pytest.mark.parametrize(
    "preamble",
    [[ssl_request()], [gssenc_request()], [gssenc_request(), ssl_request()]],
    ids=["SSLRequest", "GSSENCRequest", "GSSENCRequest+SSLRequest"],
)
def test_encryption_requests_declined_then_startup_works(
    preamble: list[bytes], limited_proxy: ProxyProcess, unharmed: None
) -> None:
    with RawClient(limited_proxy.host, limited_proxy.port) as c:
        for request in preamble:
            c.send(request)
            assert c.recv_exact(1) == b"N"
        result = c.login(application_name=unique_app_name("pgr_ssl"))
        assert result.ok, result.messages
        assert rows(c.simple_query("select 7")) == [[b"7"]]


def _negotiation(host: str, port: int, minor: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Start up with 3.`minor` and a `_pq_.foo` option; return the login and the 'v' payload."""
    with RawClient(host, port) as c:
        c.send(
            startup_message(
                {"user": "postgres", "database": "test", "_pq_.foo": "bar"}, minor=minor
            )
        )
        login = c.finish_login()
        assert login.ok, login.messages
        assert rows(c.simple_query("select 3")) == [[b"3"]]
    negotiations = [p for t, p in login.messages if t == b"v"]
    assert len(negotiations) == 1, login.messages  # exactly one, before anything else
    assert login.messages[0][0] == b"v"
    return login.messages, negotiations[0]


@pytest.mark.parametrize("minor", [2, 0], ids=["3.2", "3.0"])
def test_negotiate_protocol_version(
    minor: int, limited_proxy: ProxyProcess, unharmed: None
) -> None:
    _, payload = _negotiation(limited_proxy.host, limited_proxy.port, minor)
    newest, count = struct.unpack("!II", payload[:8])
    assert count == 1
    assert payload[8:] == b"_pq_.foo\x00"
    # Postgres fills "newest minor protocol version" with the whole version code 3.0
    # (0x00030000, PG_PROTOCOL_LATEST), and libpq 18 reads it that way: it rejects a 0 as
    # "server requested downgrade to pre-3.0 protocol version".  Same bytes as direct:
    _, direct = _negotiation(PG_HOST, PG_PORT, minor)
    assert payload == direct
    assert newest == 3 << 16


def test_libpq_max_protocol_version_3_2(limited_proxy: ProxyProcess, unharmed: None) -> None:
    """psycopg's libpq (18) asks for 3.2 when told to and must settle on 3.0 through us."""
    if psycopg.pq.version() < 180000:
        pytest.skip("libpq < 18 cannot ask for protocol 3.2")
    dsn = limited_proxy.dsn(connect_timeout="10", max_protocol_version="3.2")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select 32").fetchone() == (32,)


def test_tls_client_hello_is_closed_without_reply(
    limited_proxy: ProxyProcess, unharmed: None
) -> None:
    hello = bytes.fromhex("16030100c4010000c00303") + os.urandom(32) + b"\x00" * 40
    with RawClient(limited_proxy.host, limited_proxy.port) as c:
        c.send(hello)
        assert c.expect_closed() == b""


def test_cancel_request_with_unknown_key_gets_no_reply(
    limited_proxy: ProxyProcess, unharmed: None
) -> None:
    with RawClient(limited_proxy.host, limited_proxy.port) as c:
        c.send(cancel_request(1, b"\x00\x01\x02\x03"))
        assert c.expect_closed() == b""


# --- a client that talks before it has authenticated ------------------------------------


@pytest.fixture
def recorded_auth_proxy(auth_cluster: Cluster) -> Iterator[tuple[FaultRelay, ProxyProcess]]:
    """A proxy to the password-protected cluster, through a relay that records its bytes."""
    with (
        FaultRelay(auth_cluster.host, auth_cluster.port, record=True) as relay,
        running_proxy("--upstream", f"postgresql://127.0.0.1:{relay.port}") as proxy,
    ):
        yield relay, proxy
        assert_no_crash(proxy)


def _frontend_tags_after_startup(stream: bytes) -> list[bytes]:
    """Tags of the tagged messages that follow the one start-up packet in `stream`."""
    (length,) = struct.unpack("!I", stream[:4])
    pos, tags = length, []
    while pos < len(stream):
        tags.append(stream[pos : pos + 1])
        pos += 1 + struct.unpack("!I", stream[pos + 1 : pos + 5])[0]
    return tags


@pytest.mark.parametrize("when", ["pipelined-after-startup", "after-password-request"])
def test_query_before_authentication_is_refused(
    when: str, recorded_auth_proxy: tuple[FaultRelay, ProxyProcess]
) -> None:
    relay, proxy = recorded_auth_proxy
    secret_sql = "select 'must never reach the server'"
    startup = startup_message({"user": "u_password", "database": "postgres"})
    with RawClient(proxy.host, proxy.port) as c:
        if when == "pipelined-after-startup":
            # As Postgres does: it asks for the password, then reads the Query and refuses.
            c.send(startup + query(secret_sql))
            tag, payload = c.recv_message()
            assert (tag, payload[:4]) == (b"R", struct.pack("!I", 3))
        else:
            c.send(startup)
            tag, payload = c.recv_message()
            assert (tag, payload[:4]) == (b"R", struct.pack("!I", 3))  # cleartext, please
            c.send(query(secret_sql))
        fields = c.expect_error_then_close()
    assert fields["C"] == "08P01", fields
    assert fields["S"] == "FATAL"
    wait_for(lambda: relay.connections() == 0, "the upstream connection to close")
    assert len(relay.recorded) == 1
    upstream_saw = bytes(relay.recorded[0])
    assert b"must never reach" not in upstream_saw
    assert set(_frontend_tags_after_startup(upstream_saw)) <= {b"X"}  # at most Terminate
    # The password itself still works through this proxy afterwards.
    secret = AUTH_USERS["u_password"][1]
    dsn = proxy.dsn(dbname="postgres", user="u_password", password=str(secret))
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select current_user").fetchone() == ("u_password",)


# --- SIGTERM: graceful shutdown ---------------------------------------------------------


def _sigterm_when_active(proxy: ProxyProcess, app: str) -> threading.Thread:
    def run() -> None:
        wait_active(app)
        proxy.process.send_signal(signal.SIGTERM)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigterm_lets_running_statement_finish() -> None:
    app = unique_app_name("pgr_term")
    with running_proxy() as proxy:
        idle = psycopg.connect(proxy.dsn(connect_timeout="10"), autocommit=True)
        busy = psycopg.connect(proxy.dsn(connect_timeout="10", application_name=app))
        raw = login(proxy, unique_app_name("pgr_term_raw"))
        try:
            assert idle.execute("select 1").fetchone() == (1,)
            killer = _sigterm_when_active(proxy, app)
            # The statement that was running when SIGTERM came completes normally.
            result = in_thread(
                lambda: busy.execute("select 'finished' from pg_sleep(2)").fetchone()
            )
            assert result == ("finished",)
            killer.join(GUARD)
            assert proxy.process.wait(GUARD + 5) == 0
            # Then every session was ended: Postgres's own words for it are 57P01.
            assert raw.expect_error_then_close()["C"] == "57P01"
            with pytest.raises(psycopg.OperationalError) as info:
                in_thread(lambda: idle.execute("select 1"))
            assert info.value.sqlstate == "57P01", info.value
            # `busy` may read the FATAL together with its result, so libpq may report only
            # the closed connection.
            with pytest.raises(psycopg.OperationalError) as info:
                in_thread(lambda: busy.execute("select 1"))
            assert info.value.sqlstate in ("57P01", None), info.value
            assert idle.closed and busy.closed
        finally:
            idle.close()
            busy.close()
            raw.close()


GRACE_1S = "limits:\n  shutdown_grace_seconds: 1\n"


def test_sigterm_grace_expires_cancels_and_exits() -> None:
    app = unique_app_name("pgr_grace")
    try:
        with running_proxy(config=GRACE_1S) as proxy:
            c = login(proxy, app)
            c.send(query("select pg_sleep(30)"))
            wait_active(app)
            proxy.process.send_signal(signal.SIGTERM)
            assert proxy.process.wait(GUARD + 5) == 0
            c.expect_closed()
            c.close()
        wait_gone(app)  # the running statement was cancelled, the backend ended
    finally:
        terminate_backends(app)


def test_sigterm_grace_expires_tells_client_57P01() -> None:
    """When the grace runs out mid-statement the client hears what Postgres would say on a
    fast shutdown (FATAL 57P01), not just a dropped connection."""
    app = unique_app_name("pgr_grace57")
    try:
        with running_proxy(config=GRACE_1S) as proxy:
            c = login(proxy, app)
            c.send(query("select pg_sleep(30)"))
            wait_active(app)
            proxy.process.send_signal(signal.SIGTERM)
            assert proxy.process.wait(GUARD + 5) == 0
            fields = c.expect_error_then_close()
            c.close()
        assert fields["C"] == "57P01", fields
    finally:
        terminate_backends(app)


# --- CancelRequest ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_proxy() -> Iterator[ProxyProcess]:
    with running_proxy() as p:
        yield p


def test_cancel_through_another_proxy_instance(
    limited_proxy: ProxyProcess, second_proxy: ProxyProcess, unharmed: None
) -> None:
    app = unique_app_name("pgr_cancel")
    try:
        c = RawClient(limited_proxy.host, limited_proxy.port)
        result = c.login(application_name=app)
        assert result.ok and result.pid is not None and result.secret is not None
        c.send(query("select pg_sleep(30)"))
        assert wait_active(app) == result.pid  # BackendKeyData carries the real pid

        # A wrong key must not cancel anything.
        wrong = bytes(b ^ 0xFF for b in result.secret)
        with RawClient(second_proxy.host, second_proxy.port) as other:
            other.send(cancel_request(result.pid, wrong))
            assert other.expect_closed() == b""
        time.sleep(1)  # give a wrongly forwarded cancel time to land (not a speed check)
        assert [b[1] for b in backends(app)] == ["active"]

        with RawClient(second_proxy.host, second_proxy.port) as other:
            other.send(cancel_request(result.pid, result.secret))
            assert other.expect_closed() == b""
        answer = c.read_until(b"Z")
        assert [e["C"] for e in errors(answer)] == ["57014"]
        assert answer[-1] == (b"Z", b"I")
        assert rows(c.simple_query("select 'alive'")) == [[b"alive"]]
        c.close()
        assert_no_crash(second_proxy)
    finally:
        terminate_backends(app)


def test_psycopg_cancel(limited_proxy: ProxyProcess, unharmed: None) -> None:
    app = unique_app_name("pgr_cancel_pg")
    try:
        with psycopg.connect(limited_proxy.dsn(application_name=app, connect_timeout="10")) as conn:

            def cancel_when_running() -> None:
                wait_active(app)
                conn.cancel_safe(timeout=10)

            canceller = threading.Thread(target=cancel_when_running, daemon=True)
            canceller.start()
            with pytest.raises(psycopg.errors.QueryCanceled) as info:
                in_thread(lambda: conn.execute("select pg_sleep(30)"))
            canceller.join(GUARD)
            assert info.value.sqlstate == "57014"
            conn.rollback()
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        terminate_backends(app)


def test_cancel_before_startup_after_ssl_request(
    limited_proxy: ProxyProcess, unharmed: None
) -> None:
    """A CancelRequest may follow an SSLRequest on its connection (PITFALLS A9)."""
    app = unique_app_name("pgr_cancel_ssl")
    try:
        c = RawClient(limited_proxy.host, limited_proxy.port)
        result = c.login(application_name=app)
        assert result.pid is not None and result.secret is not None
        c.send(query("select pg_sleep(30)"))
        wait_active(app)
        with RawClient(limited_proxy.host, limited_proxy.port) as other:
            other.send(ssl_request())
            assert other.recv_exact(1) == b"N"
            other.send(cancel_request(result.pid, result.secret))
            assert other.expect_closed() == b""
        assert [e["C"] for e in errors(c.read_until(b"Z"))] == ["57014"]
        c.close()
    finally:
        terminate_backends(app)


def test_startup_packet_bad_layout_is_08P01(limited_proxy: ProxyProcess, unharmed: None) -> None:
    """A start-up packet with an odd parameter list is refused (as Postgres does), not
    guessed at."""
    packet = untagged(struct.pack("!I", 3 << 16) + b"user\x00postgres\x00database\x00")
    via_proxy = _startup_error(limited_proxy.host, limited_proxy.port, packet)
    direct = _startup_error(PG_HOST, PG_PORT, packet)
    assert via_proxy["C"] == direct["C"] == "08P01", (via_proxy, direct)


def test_query_pipelined_behind_startup_runs_after_a_trust_login(proxy: ProxyProcess) -> None:
    """Postgres accepts a Query sent right behind the StartupMessage when no password is
    asked: the proxy keeps it until authentication is over, then relays it."""
    with RawClient(proxy.host, proxy.port) as c:
        c.send(startup_message({"user": PG_USER, "database": PG_DB}) + query("select 41 + 1"))
        startup = c.read_until(b"Z")
        assert startup[0] == (b"R", struct.pack("!I", 0))
        reply = c.read_until(b"Z")
        assert [tag for tag, _ in reply] == [b"T", b"D", b"C", b"Z"]
        assert reply[1][1].endswith(b"42")
