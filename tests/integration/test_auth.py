"""Authentication relay (issue acceptance point 4; DESIGN "Protocol strategy", PITFALLS A7/A8).

The proxy never knows passwords: it relays the whole exchange (trust, cleartext, md5 with
this connection's salt, SCRAM-SHA-256 with end-to-end nonces) between client and a
throwaway cluster whose pg_hba.conf gives each role its own method.  Every login is checked
from the server's side too: ``current_user``, the backend pid the client was told in
BackendKeyData, and the server log line naming the method that authenticated it.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.conftest import ProxyProcess
from tests.integration.cluster import (
    AUTH_USERS,
    Cluster,
    auth_cluster_fixture,  # noqa: F401  (imported so that pytest finds the fixture here)
    unique_app_name,
    wait_for,
)
from tests.integration.proxies import assert_no_crash, running_proxy
from tests.integration.wire import RawClient, error_fields, password, startup_message

PASSWORD_USERS = [u for u, (method, _) in AUTH_USERS.items() if method != "trust"]


@pytest.fixture(scope="module")
def auth_proxy(auth_cluster: Cluster) -> Iterator[ProxyProcess]:
    with running_proxy("--upstream", f"postgresql://127.0.0.1:{auth_cluster.port}") as p:
        yield p


@pytest.fixture(autouse=True)
def _proxy_survives(auth_proxy: ProxyProcess) -> Iterator[None]:
    yield
    assert_no_crash(auth_proxy)


def _method_logged(cluster: Cluster, pid: int, user: str, method: str) -> None:
    """The server logged that backend `pid` authenticated `user` with `method`."""
    pattern = re.compile(
        rf"\[{pid}\] LOG:  connection authenticated: identity=\"{user}\" method={method} "
    )
    wait_for(lambda: bool(pattern.search(cluster.log())), f"{method} login of pid {pid} in log")


@pytest.mark.parametrize("user", list(AUTH_USERS))
def test_psycopg_login_each_method(
    user: str, auth_cluster: Cluster, auth_proxy: ProxyProcess
) -> None:
    method, secret = AUTH_USERS[user]
    app = unique_app_name("pgr_auth")
    dsn = auth_proxy.dsn(dbname="postgres", user=user, application_name=app, connect_timeout="10")
    if secret is not None:
        dsn += f" password={secret}"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select current_user").fetchone() == (user,)
        (pid,) = conn.execute("select pg_backend_pid()").fetchone()  # type: ignore[misc]
        assert pid == conn.info.backend_pid  # BackendKeyData relayed unchanged
        # ... and that pid is a backend of the throwaway cluster, under our name.
        with psycopg.connect(auth_cluster.dsn()) as admin:
            row = admin.execute(
                "select usename, application_name from pg_stat_activity where pid = %s", (pid,)
            ).fetchone()
        assert row == (user, app)
    if method != "trust":
        _method_logged(auth_cluster, pid, user, method)


@pytest.mark.parametrize("user", list(AUTH_USERS))
async def test_asyncpg_login_each_method(
    user: str, auth_cluster: Cluster, auth_proxy: ProxyProcess
) -> None:
    method, secret = AUTH_USERS[user]
    conn = await asyncpg.connect(
        host=auth_proxy.host,
        port=auth_proxy.port,
        user=user,
        password=secret,
        database="postgres",
        ssl=False,
        timeout=10,
    )
    try:
        assert await conn.fetchval("select current_user") == user
        pid = await conn.fetchval("select pg_backend_pid()")
        assert pid == conn.get_server_pid()
        # A prepared statement with a binary parameter, to see the session is really usable.
        assert await conn.fetchval("select $1::int + 1", 41) == 42
    finally:
        await conn.close()
    if method != "trust":
        _method_logged(auth_cluster, pid, user, method)


@pytest.mark.parametrize("user", PASSWORD_USERS)
async def test_wrong_password_is_28P01(user: str, auth_proxy: ProxyProcess) -> None:
    with pytest.raises(asyncpg.PostgresError) as info:
        await asyncpg.connect(
            host=auth_proxy.host,
            port=auth_proxy.port,
            user=user,
            password="not-the-password",
            database="postgres",
            ssl=False,
            timeout=10,
        )
    assert info.value.sqlstate == "28P01"
    assert isinstance(info.value, asyncpg.InvalidPasswordError)


@pytest.mark.parametrize("user", PASSWORD_USERS)
def test_wrong_password_psycopg(user: str, auth_proxy: ProxyProcess) -> None:
    # libpq keeps no SQLSTATE for start-up errors (psycopg's e.sqlstate is None there),
    # so psycopg can only show the class and the server's message.
    dsn = auth_proxy.dsn(dbname="postgres", user=user, password="nope", connect_timeout="10")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn)
    assert f'authentication failed for user "{user}"' in str(info.value)


def _md5_response(user: str, secret: str, salt: bytes) -> str:
    inner = hashlib.md5((secret + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


def _raw_login(host: str, port: int, user: str, secret: str) -> tuple[list[bytes], dict[str, str]]:
    """Log in by hand (cleartext or md5); return the message tags and the error fields."""
    with RawClient(host, port) as c:
        c.send(startup_message({"user": user, "database": "postgres"}))
        tag, payload = c.recv_message()
        assert tag == b"R", (tag, payload)
        code = struct.unpack("!I", payload[:4])[0]
        if code == 3:
            c.send(password(secret))
        elif code == 5:
            c.send(password(_md5_response(user, secret, payload[4:8])))
        else:
            raise AssertionError(f"unexpected authentication request {code}")
        tags, fields = [], {}
        while True:
            tag, payload = c.recv_message()
            tags.append(tag)
            if tag == b"E":
                fields = error_fields(payload)
                c.expect_closed()
                return tags, fields
            if tag == b"Z":
                return tags, fields


@pytest.mark.parametrize("user", ["u_password", "u_md5"])
@pytest.mark.parametrize("right", [True, False], ids=["right", "wrong"])
def test_raw_password_exchange_same_as_direct(
    user: str, right: bool, auth_cluster: Cluster, auth_proxy: ProxyProcess
) -> None:
    """Byte-level: the proxy relays the request (md5: this connection's salt) and the
    outcome exactly as the server gives it, wrong password → FATAL 28P01 and close."""
    secret = AUTH_USERS[user][1] if right else "wrong"
    assert secret is not None
    via_proxy = _raw_login(auth_proxy.host, auth_proxy.port, user, secret)
    direct = _raw_login(auth_cluster.host, auth_cluster.port, user, secret)
    if right:
        assert via_proxy[0][0] == b"R" and via_proxy[0][-1] == b"Z"
        assert via_proxy[1] == {}
    else:
        assert via_proxy[0] == [b"E"]
        assert via_proxy[1]["C"] == "28P01"
        assert via_proxy[1]["S"] == "FATAL"
    assert via_proxy == direct
