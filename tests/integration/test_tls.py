"""TLS on both legs (issue 13, acceptance point 1; PITFALLS A1, A2, A4, A8b).

One throwaway cluster with ``ssl=on`` (certificates from the documented ``make dev-certs``)
serves as the upstream for the whole module; proxies are started once per configuration.
The matrix: client leg (plaintext or TLS) x upstream leg (``sslmode=disable`` or
``verify-full``) x authentication (trust, md5, scram-sha-256) x ``channel_binding``
(prefer, require), with psql, psycopg 3 (libpq 18) and asyncpg.  Each login is checked
from both ends: the client's own view of its TLS and ``pg_stat_ssl`` for the upstream's.

Channel binding cannot pass through a proxy that terminates TLS (its certificate is not
Postgres's), so SCRAM-SHA-256-PLUS is never offered to clients.  ``channel_binding=require``
then fails in the client itself; ``prefer`` connects, except when both legs are TLS: libpq
then says it could bind (gs2 flag ``y``), which Postgres, having offered -PLUS on its TLS
connection, would refuse as a downgrade.  The proxy refuses that login itself (28000, with
what to change) before Postgres sees it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT, ProxyProcess, dsn
from tests.integration.cluster import (
    AUTH_USERS,
    HBA,
    Cluster,
    throwaway_cluster,
    unique_app_name,
    wait_for,
)
from tests.integration.proxies import assert_no_crash, running_proxy
from tests.integration.wire import error_fields, startup_message

ROOT = Path(__file__).resolve().parents[2]
USERS = ["u_trust", "u_md5", "u_scram"]
SSL_REQUEST = struct.pack("!II", 8, 80877103)


def _make_cert(directory: Path, cn: str) -> tuple[str, str]:
    """The documented command (Makefile `dev-certs`): a self-signed certificate for
    localhost and 127.0.0.1, its own CA.  Returns (certificate, key) paths."""
    subprocess.run(
        ["make", "-s", "-C", str(ROOT), "dev-certs", f"CERT_DIR={directory}", f"CERT_CN={cn}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(directory / "server.crt"), str(directory / "server.key")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """name → (certificate, key): the proxy's, the upstream's, a client's (CN=u_cert, for
    Postgres's cert authentication and the proxy's client_ca_file), another proxy one."""
    base = tmp_path_factory.mktemp("tls-certs")
    names = {"proxy": "localhost", "upstream": "localhost", "client": "u_cert", "other": "other"}
    return {name: _make_cert(base / name, cn) for name, cn in names.items()}


@pytest.fixture(scope="module")
def tls_cluster(certs: dict[str, tuple[str, str]]) -> Iterator[Cluster]:
    cert, key = certs["upstream"]
    files = {"server.crt": cert, "server.key": key, "client-ca.crt": certs["client"][0]}
    options = (
        "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key "
        "-c ssl_ca_file=client-ca.crt"
    )
    hba = HBA + "hostssl all       u_cert      127.0.0.1/32   cert\n"
    with throwaway_cluster("pgr-tls-", hba, files, options) as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("create role u_cert login")
        yield cluster


def _yaml(tls: dict[str, object]) -> str:
    return "tls:\n" + "".join(f"  {k}: {v!r}\n" for k, v in tls.items()) if tls else ""


ProxyFor = Callable[..., ProxyProcess]


@pytest.fixture(scope="module")
def proxy_for(certs: dict[str, tuple[str, str]], tls_cluster: Cluster) -> Iterator[ProxyFor]:
    """A running proxy per configuration, started at first use: `upstream` is the sslmode
    towards the TLS cluster (verify-* with the upstream's certificate as root), `tls` the
    client-side settings (default: the proxy certificate), `url` another upstream."""
    started: dict[str, ProxyProcess] = {}
    with contextlib.ExitStack() as stack:

        def get(upstream: str = "disable", url: str | None = None, **tls: object) -> ProxyProcess:
            if not tls:
                tls = {"cert_file": certs["proxy"][0], "key_file": certs["proxy"][1]}
            if url is None:
                url = f"postgresql://127.0.0.1:{tls_cluster.port}?sslmode={upstream}"
                if upstream.startswith("verify-"):
                    url += f"&sslrootcert={certs['upstream'][0]}"
            key = url + _yaml(tls)
            if key not in started:
                started[key] = stack.enter_context(
                    running_proxy("--upstream", url, config=_yaml(tls))
                )
            return started[key]

        yield get
        for proxy in started.values():
            assert_no_crash(proxy)


def _dsn(proxy: ProxyProcess, user: str, certs: dict[str, tuple[str, str]], **extra: str) -> str:
    secret = AUTH_USERS[user][1] if user in AUTH_USERS else None
    params = {"dbname": "postgres", "user": user, "connect_timeout": "10", **extra}
    if secret is not None:
        params["password"] = secret
    host = proxy.host
    if params.get("sslmode") == "verify-full":
        host, params["sslrootcert"] = "localhost", certs["proxy"][0]
    return dsn(host, proxy.port, **params)


UPSTREAM_SSL = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
BOTH_LEGS_REFUSED = "SCRAM channel binding cannot pass through pgreactive"


def _refused_both_tls(user: str, client_tls: bool, upstream_tls: bool) -> bool:
    """libpq with channel_binding=prefer: only SCRAM with TLS on both legs is refused."""
    return AUTH_USERS[user][0] == "scram-sha-256" and client_tls and upstream_tls


# --- the matrix ---------------------------------------------------------------------


@pytest.mark.parametrize("channel_binding", ["prefer", "require"])
@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("upstream", ["disable", "verify-full"], ids=["up-plain", "up-tls"])
@pytest.mark.parametrize("sslmode", ["disable", "require"], ids=["client-plain", "client-tls"])
def test_psycopg_matrix(
    sslmode: str,
    upstream: str,
    user: str,
    channel_binding: str,
    proxy_for: ProxyFor,
    certs: dict[str, tuple[str, str]],
) -> None:
    proxy = proxy_for(upstream)
    dsn = _dsn(proxy, user, certs, sslmode=sslmode, channel_binding=channel_binding)
    client_tls, upstream_tls = sslmode != "disable", upstream != "disable"
    if channel_binding == "require":
        # Refused by libpq itself, never by Postgres: -PLUS is not offered (or no SCRAM).
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(dsn)
        message = str(info.value)
        assert "channel binding" in message and "FATAL" not in message, message
        return
    if _refused_both_tls(user, client_tls, upstream_tls):
        with pytest.raises(psycopg.OperationalError, match=BOTH_LEGS_REFUSED):
            psycopg.connect(dsn)
        # ... and what the message says to do works.
        dsn += " channel_binding=disable"
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use is client_tls
        assert conn.execute("select current_user").fetchone() == (user,)
        assert conn.execute(UPSTREAM_SSL).fetchone() == (upstream_tls,)


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("upstream", ["disable", "verify-full"], ids=["up-plain", "up-tls"])
@pytest.mark.parametrize("sslmode", ["disable", "prefer", "require", "verify-full"])
def test_psql_matrix(
    sslmode: str,
    upstream: str,
    user: str,
    proxy_for: ProxyFor,
    certs: dict[str, tuple[str, str]],
) -> None:
    proxy = proxy_for(upstream)
    dsn = _dsn(proxy, user, certs, sslmode=sslmode)
    result = subprocess.run(
        ["psql", "-X", "-At", dsn, "-c", f"select current_user, ({UPSTREAM_SSL})", "-c",
         "\\conninfo"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )  # fmt: skip
    client_tls, upstream_tls = sslmode != "disable", upstream != "disable"  # prefer: TLS
    if _refused_both_tls(user, client_tls, upstream_tls):
        if sslmode != "prefer":
            assert result.returncode == 2 and BOTH_LEGS_REFUSED in result.stderr, result.stderr
            return
        # libpq's prefer retries without TLS after a refused TLS login: that one works.
        client_tls = False
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{user}|{'t' if upstream_tls else 'f'}"
    assert ("SSL connection (protocol: TLS" in result.stdout) is client_tls, result.stdout


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("upstream", ["disable", "verify-full"], ids=["up-plain", "up-tls"])
@pytest.mark.parametrize("client_tls", [False, True], ids=["client-plain", "client-tls"])
async def test_asyncpg_matrix(
    client_tls: bool,
    upstream: str,
    user: str,
    proxy_for: ProxyFor,
    certs: dict[str, tuple[str, str]],
) -> None:
    """asyncpg's SCRAM never binds (gs2 flag ``n``): every combination logs in."""
    proxy = proxy_for(upstream)
    context: ssl.SSLContext | bool = False
    if client_tls:
        context = ssl.create_default_context(cafile=certs["proxy"][0])
    conn = await asyncpg.connect(
        host="localhost", port=proxy.port, user=user, password=AUTH_USERS[user][1],
        database="postgres", ssl=context, timeout=10,
    )  # fmt: skip
    try:
        assert await conn.fetchval("select current_user") == user
        assert await conn.fetchval(UPSTREAM_SSL) is (upstream != "disable")
        assert await conn.fetchval("select $1::int + 1", 41) == 42  # extended protocol
    finally:
        await conn.close()


def test_postgres_never_saw_a_channel_binding_failure(tls_cluster: Cluster) -> None:
    """(After the matrix.)  Every refusal came from the client or the proxy."""
    assert "channel binding" not in tls_cluster.log()


# --- direct TLS (PostgreSQL 17 sslnegotiation=direct) -------------------------------


def test_psycopg_direct_tls(proxy_for: ProxyFor, certs: dict[str, tuple[str, str]]) -> None:
    if psycopg.pq.version() < 170000:
        pytest.skip("libpq < 17 has no sslnegotiation=direct")
    dsn = _dsn(proxy_for(), "u_md5", certs, sslmode="verify-full", sslnegotiation="direct")
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)


async def test_asyncpg_direct_tls(proxy_for: ProxyFor, certs: dict[str, tuple[str, str]]) -> None:
    proxy = proxy_for()
    conn = await asyncpg.connect(
        f"postgresql://u_trust@localhost:{proxy.port}/postgres?sslmode=verify-full"
        f"&sslrootcert={certs['proxy'][0]}",
        direct_tls=True, timeout=10,
    )  # fmt: skip
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


def _tls_socket(port: int, alpn: list[str] | None, direct: bool) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if not direct:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
    return context.wrap_socket(sock)


def _recv_message(sock: socket.socket) -> tuple[bytes, bytes]:
    header = b""
    while len(header) < 5:
        chunk = sock.recv(5 - len(header))
        assert chunk, "connection closed"
        header += chunk
    length = struct.unpack("!I", header[1:])[0]
    body = b""
    while len(body) < length - 4:
        chunk = sock.recv(length - 4 - len(body))
        assert chunk, "connection closed"
        body += chunk
    return header[:1], body


def _expect_closed(sock: socket.socket) -> None:
    # (Closed without close_notify, or reset: closed all the same.)
    with contextlib.suppress(ssl.SSLError, ConnectionResetError):
        assert sock.recv(1) == b""


def test_raw_direct_tls_with_alpn_logs_in(proxy_for: ProxyFor) -> None:
    with _tls_socket(proxy_for().port, ["postgresql"], direct=True) as tls:
        assert tls.selected_alpn_protocol() == "postgresql"
        tls.sendall(startup_message({"user": "u_trust", "database": "postgres"}))
        assert _recv_message(tls) == (b"R", b"\x00\x00\x00\x00")  # AuthenticationOk
        # Inside TLS, another SSLRequest is a protocol violation (PITFALLS A4).
    with _tls_socket(proxy_for().port, ["postgresql"], direct=True) as tls:
        tls.sendall(SSL_REQUEST)
        tag, body = _recv_message(tls)
        assert (tag, error_fields(body)["C"]) == (b"E", "08P01")
        _expect_closed(tls)


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]], ids=["no-alpn", "other-alpn"])
def test_raw_direct_tls_without_postgresql_alpn_is_refused(
    alpn: list[str] | None, proxy_for: ProxyFor
) -> None:
    with _tls_socket(proxy_for().port, alpn, direct=True) as tls:
        tls.sendall(startup_message({"user": "u_trust", "database": "postgres"}))
        tag, body = _recv_message(tls)
        fields = error_fields(body)
        assert (tag, fields["C"]) == (b"E", "08P01")
        assert "ALPN" in fields["M"]
        _expect_closed(tls)


def test_direct_tls_without_a_certificate_is_closed(tls_cluster: Cluster) -> None:
    with running_proxy("--upstream", f"postgresql://127.0.0.1:{tls_cluster.port}") as proxy:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _tls_socket(proxy.port, ["postgresql"], direct=True)
        # An SSLRequest gets the old answer: N, and the client goes on in plaintext.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(SSL_REQUEST)
            assert sock.recv(1) == b"N"
        assert_no_crash(proxy)


# --- SSLRequest with plaintext behind it (CVE-2021-23214) ---------------------------


def test_plaintext_buffered_after_ssl_request_is_refused(
    proxy_for: ProxyFor, tls_cluster: Cluster
) -> None:
    app = unique_app_name("pgr_tls_inject")
    startup = startup_message({"user": "u_trust", "database": "postgres", "application_name": app})
    with socket.create_connection(("127.0.0.1", proxy_for().port), timeout=10) as sock:
        sock.sendall(SSL_REQUEST + startup)  # one write: both arrive before any answer
        tag, body = _recv_message(sock)
        fields = error_fields(body)
        assert (tag, fields["C"], fields["S"]) == (b"E", "08P01", "FATAL")
        assert fields["M"] == "received unencrypted data after SSL request"
        assert sock.recv(1) == b""
    # Nothing of it reached Postgres (log_connections names every application).
    with psycopg.connect(tls_cluster.dsn(application_name=app + "_probe")):
        pass
    wait_for(lambda: f"{app}_probe" in tls_cluster.log(), "the probe's login in the log")
    assert f"application_name={app} " not in tls_cluster.log()


# --- tls.required, client certificates --------------------------------------------


async def test_required_refuses_plaintext_with_28000(
    proxy_for: ProxyFor, certs: dict[str, tuple[str, str]]
) -> None:
    cert, key = certs["proxy"]
    proxy = proxy_for(cert_file=cert, key_file=key, required=True)
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as info:
        await asyncpg.connect(
            host="127.0.0.1", port=proxy.port, user="u_trust", database="postgres",
            ssl=False, timeout=10,
        )  # fmt: skip
    assert info.value.sqlstate == "28000"
    assert "requires TLS" in str(info.value)
    with pytest.raises(psycopg.OperationalError, match="requires TLS"):
        psycopg.connect(_dsn(proxy, "u_trust", certs, sslmode="disable"))
    with psycopg.connect(_dsn(proxy, "u_trust", certs, sslmode="verify-full")) as conn:
        assert conn.pgconn.ssl_in_use


def test_client_ca_requires_a_client_certificate(
    proxy_for: ProxyFor, certs: dict[str, tuple[str, str]]
) -> None:
    cert, key = certs["proxy"]
    client_cert, client_key = certs["client"]
    proxy = proxy_for(cert_file=cert, key_file=key, client_ca_file=client_cert)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(_dsn(proxy, "u_trust", certs, sslmode="require"))
    other_cert, other_key = certs["other"]  # signed by nobody the proxy trusts
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            _dsn(proxy, "u_trust", certs, sslmode="require", sslcert=other_cert, sslkey=other_key)
        )
    dsn = _dsn(proxy, "u_trust", certs, sslmode="require", sslcert=client_cert, sslkey=client_key)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# --- certificate reload on SIGHUP -----------------------------------------------------


def _served_certificate(port: int) -> bytes:
    with _tls_socket(port, None, direct=False) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(path: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(path).read_text())


def test_sighup_reloads_the_certificate(
    tmp_path: Path, certs: dict[str, tuple[str, str]], tls_cluster: Cluster
) -> None:
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(certs["proxy"][0], cert)
    shutil.copy(certs["proxy"][1], key)
    config = _yaml({"cert_file": str(cert), "key_file": str(key)})
    with running_proxy(
        "--upstream", f"postgresql://127.0.0.1:{tls_cluster.port}", config=config
    ) as proxy:
        assert _served_certificate(proxy.port) == _der(certs["proxy"][0])
        dsn = proxy.dsn(dbname="postgres", user="u_trust", sslmode="require")
        with psycopg.connect(dsn, autocommit=True) as kept:
            shutil.copy(certs["other"][0], cert)  # rotated in place
            shutil.copy(certs["other"][1], key)
            proxy.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "TLS certificate loaded" in proxy.log, "the reload")
            assert _served_certificate(proxy.port) == _der(certs["other"][0])
            assert kept.execute("select 1").fetchone() == (1,)  # open sessions carry on
            # A file that cannot be used is logged; the running certificate stays.
            cert.write_text("not a certificate\n")
            proxy.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "TLS reload failed" in proxy.log, "the failed reload")
            assert _served_certificate(proxy.port) == _der(certs["other"][0])
        assert_no_crash(proxy)


# --- the upstream leg: sslmode semantics, cancel, catalog, client certificate ---------


def test_upstream_require_against_a_server_without_tls(proxy_for: ProxyFor) -> None:
    """The shared Postgres runs without ssl: require fails (08006), prefer goes plain."""
    required = proxy_for(url=f"postgresql://{PG_HOST}:{PG_PORT}?sslmode=require")
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL, but SSL"):
        psycopg.connect(required.dsn(sslmode="disable", connect_timeout="10"))
    preferred = proxy_for(url=f"postgresql://{PG_HOST}:{PG_PORT}?sslmode=prefer")
    with psycopg.connect(preferred.dsn(sslmode="require", connect_timeout="10")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute(UPSTREAM_SSL).fetchone() == (False,)


def test_upstream_verify_full_with_the_wrong_root_fails(
    proxy_for: ProxyFor, certs: dict[str, tuple[str, str]], tls_cluster: Cluster
) -> None:
    url = (
        f"postgresql://127.0.0.1:{tls_cluster.port}?sslmode=verify-full"
        f"&sslrootcert={certs['other'][0]}"
    )
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(_dsn(proxy_for(url=url), "u_trust", certs, sslmode="disable"))
    # prefer and require do not verify (libpq's meaning).
    for mode in ("prefer", "require"):
        with psycopg.connect(_dsn(proxy_for(mode), "u_trust", certs)) as conn:
            assert conn.execute(UPSTREAM_SSL).fetchone() == (True,)


def test_cancel_with_tls_on_both_legs(
    proxy_for: ProxyFor, certs: dict[str, tuple[str, str]], tls_cluster: Cluster
) -> None:
    app = unique_app_name("pgr_tls_cancel")
    dsn = _dsn(proxy_for("verify-full"), "u_md5", certs, sslmode="verify-full")
    with psycopg.connect(dsn + f" application_name={app}") as conn:

        def cancel_when_running() -> None:
            with psycopg.connect(tls_cluster.dsn()) as admin:
                wait_for(
                    lambda: admin.execute(
                        "select count(*) from pg_stat_activity where application_name = %s"
                        " and state = 'active'", (app,),
                    ).fetchone() == (1,),
                    "the sleep to run",
                )  # fmt: skip
            conn.cancel_safe()  # libpq 17+: the CancelRequest goes over TLS as well

        thread = threading.Thread(target=cancel_when_running)
        thread.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(30)")
        finally:
            thread.join()


def test_upstream_client_certificate(
    proxy_for: ProxyFor, certs: dict[str, tuple[str, str]], tls_cluster: Cluster
) -> None:
    """sslcert/sslkey: Postgres's `cert` authentication sees the proxy's certificate."""
    client_cert, client_key = certs["client"]
    url = (
        f"postgresql://127.0.0.1:{tls_cluster.port}?sslmode=verify-full"
        f"&sslrootcert={certs['upstream'][0]}&sslcert={client_cert}&sslkey={client_key}"
    )
    with psycopg.connect(_dsn(proxy_for(url=url), "u_cert", certs, sslmode="require")) as conn:
        assert conn.execute("select current_user").fetchone() == ("u_cert",)
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        psycopg.connect(_dsn(proxy_for("verify-full"), "u_cert", certs, sslmode="require"))


def test_catalog_connections_use_the_upstream_tls(
    certs: dict[str, tuple[str, str]], tls_cluster: Cluster
) -> None:
    from tests.conftest import start_proxy

    url = (
        f"postgresql://127.0.0.1:{tls_cluster.port}?sslmode=verify-full"
        f"&sslrootcert={certs['upstream'][0]}"
    )
    proxy = start_proxy("--upstream", url, env={"PGREACTIVE_CATALOG_USER": "postgres"})
    try:
        with psycopg.connect(proxy.dsn(dbname="postgres", user="postgres"), autocommit=True) as c:
            c.execute("create table if not exists pgr_tls_t (id int)")
            c.execute("insert into pgr_tls_t values (1)")
            c.execute("select id from pgr_tls_t").fetchall()

        def catalog_ssl() -> list[tuple[bool]]:
            with psycopg.connect(tls_cluster.dsn()) as admin:
                return admin.execute(
                    "select s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid)"
                    " where a.application_name = 'pgreactive-catalog'"
                ).fetchall()

        wait_for(lambda: bool(catalog_ssl()), "a catalog connection")
        assert set(catalog_ssl()) == {(True,)}
        assert_no_crash(proxy)
    finally:
        proxy.stop()
