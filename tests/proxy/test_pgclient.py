"""proxy.pgclient: the proxy's own minimal Postgres client.

Authentication maths against known vectors (RFC 7677 for SCRAM-SHA-256, the well-known md5
verifier of postgres/postgres), then real logins: trust against the shared server at :5432,
cleartext / md5 / SCRAM against a throwaway cluster whose pg_hba.conf asks for each method
(started as the `postgres` OS user in a directory it owns, stopped with ``-m immediate`` and
removed by the fixture's finaliser).  Query behaviour -- several statements, NULLs, errors
that leave the connection usable, notices, COPY, timeouts, a backend killed under us -- runs
against :5432.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from proxy.codec import TxnStatus
from proxy.config import UpstreamConfig
from proxy.pgclient import PgClient, PgError, ScramClient, md5_password, saslprep
from proxy.tls import UpstreamTLS
from tests.conftest import PG_DB, PG_HOST, PG_PORT, PG_USER, dsn

PG_BIN = os.environ.get("PGREACTIVE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin")

# --- authentication maths ---------------------------------------------------------------

RFC7677_SERVER_FIRST = (
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)


def test_scram_rfc7677_vector() -> None:
    scram = ScramClient("pencil", user="user", nonce="rOprNGfwEbeRWgbNEkqO")
    assert scram.client_first() == "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    assert scram.client_final(RFC7677_SERVER_FIRST) == (
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert not scram.verified
    scram.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert scram.verified


def test_scram_rejects_a_server_that_cannot_prove_itself() -> None:
    scram = ScramClient("pencil", user="user", nonce="rOprNGfwEbeRWgbNEkqO")
    scram.client_final(RFC7677_SERVER_FIRST)
    forged = base64.b64encode(b"\x00" * 32).decode()
    with pytest.raises(PgError) as err:
        scram.verify_server_final(f"v={forged}")
    assert err.value.sqlstate == "28000"
    with pytest.raises(PgError, match="other-reason"):
        scram.verify_server_final("e=other-reason")
    assert not scram.verified


@pytest.mark.parametrize(
    "server_first",
    [
        "r=someone-elses-nonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # not our prefix
        "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # nothing added
        "r=rOprNGfwEbeRWgbNEkqOxyz,i=4096",  # no salt
        "r=rOprNGfwEbeRWgbNEkqOxyz,s=!!!,i=4096",  # salt not base64
        "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
    ],
)
def test_scram_rejects_malformed_server_first(server_first: str) -> None:
    scram = ScramClient("pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    with pytest.raises(PgError) as err:
        scram.client_final(server_first)
    assert err.value.sqlstate == "08P01"


def test_md5_password() -> None:
    # The stored verifier of postgres/postgres is the well-known md53175bce1d...
    inner = hashlib.md5(b"postgrespostgres").hexdigest()
    assert inner == "3175bce1d3201d16594cebf9d7eb3f9d"
    salt = bytes.fromhex("01020304")
    expected = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
    assert md5_password("postgres", "postgres", salt) == expected
    assert len(expected) == 35


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        ("pencil", b"pencil"),
        ("I\u00adX", b"IX"),  # soft hyphen maps to nothing (RFC 4013 example)
        ("\u00aa", b"a"),  # NFKC
        ("a\u2003b", b"a b"),  # non-ASCII space maps to SPACE
        ("\u2168", b"IX"),  # NFKC of ROMAN NUMERAL NINE
        ("a\u0007b", b"a\x07b"),  # ASCII control: passed through as ASCII
        ("x\u0007\u00e9", "x\u0007\u00e9".encode()),  # prohibited: raw bytes (as Postgres)
    ],
)
def test_saslprep(password: str, prepared: bytes) -> None:
    assert saslprep(password) == prepared


# --- trust against the shared server ---------------------------------------------------


def _status(client: PgClient) -> TxnStatus:
    return client.transaction_status  # (a call, so mypy does not narrow across awaits)


async def _connect(**kwargs: object) -> PgClient:
    return await PgClient.connect(PG_HOST, PG_PORT, PG_USER, PG_DB, **kwargs)  # type: ignore[arg-type]


async def test_trust_query_and_close() -> None:
    client = await _connect(application_name="pgr_pgclient_test")
    try:
        assert client.backend_pid is not None
        assert client.parameters["client_encoding"] == "UTF8"
        assert client.parameters["server_version"].startswith("15")
        rows = await client.query(
            "select 1 as a, null::text, 'é∑' ; select current_setting('application_name')"
        )
        assert rows == [("1", None, "é∑"), ("pgr_pgclient_test",)]
        results = await client.execute("begin; select g from generate_series(1, 3) g; ;")
        assert [r.tag for r in results] == ["BEGIN", "SELECT 3"]
        assert results[1].rows == (("1",), ("2",), ("3",))
        assert _status(client) == TxnStatus.IN_TRANSACTION
        await client.query("rollback")
        assert _status(client) == TxnStatus.IDLE
        assert await client.query("") == []
    finally:
        await client.close()
    assert client.closed
    await client.close()  # idempotent
    with pytest.raises(PgError) as err:
        await client.query("select 1")
    assert err.value.sqlstate == "08003"


async def test_error_reads_through_ready_for_query_and_client_stays_usable() -> None:
    client = await _connect()
    try:
        with pytest.raises(PgError) as err:
            await client.query("select 1; select 1/0; select 3")
        assert err.value.sqlstate == "22012"
        assert "division by zero" in err.value.message
        assert err.value.fields["S"] == "ERROR"
        assert not client.closed
        assert _status(client) == TxnStatus.IDLE
        with pytest.raises(PgError) as err:
            await client.query("select * from pgr_no_such_table_anywhere")
        assert err.value.sqlstate == "42P01"
        # notices are ignored, the result still arrives
        rows = await client.query(
            "do $$ begin raise notice 'hello'; raise warning 'careful'; end $$; select 42"
        )
        assert rows == [("42",)]
        # an error inside an explicit transaction leaves it failed, as Postgres says
        with pytest.raises(PgError):
            await client.query("begin; select 1/0")
        assert _status(client) == TxnStatus.IN_FAILED_TRANSACTION
        await client.query("rollback")
        assert await client.query("select 'ok'") == [("ok",)]
    finally:
        await client.close()


async def test_copy_is_refused_without_desynchronising() -> None:
    client = await _connect()
    try:
        # COPY TO STDOUT: the data is read and dropped
        assert await client.query("copy (select 1) to stdout; select 2") == [("2",)]
        with pytest.raises(PgError) as err:
            await client.query("create temp table pgr_copy_t (a int); copy pgr_copy_t from stdin")
        assert err.value.sqlstate == "57014"  # COPY from stdin failed: our CopyFail
        assert "not supported" in err.value.message
        assert await client.query("select 3") == [("3",)]
    finally:
        await client.close()


async def test_nul_in_query_is_refused_and_client_stays_usable() -> None:
    client = await _connect()
    try:
        with pytest.raises(PgError) as err:
            await client.query("select 1\x00; drop table x")
        assert err.value.sqlstate == "22021"
        assert await client.query("select 1") == [("1",)]
    finally:
        await client.close()


async def test_timeout_closes_the_connection() -> None:
    client = await _connect()
    pid = client.backend_pid
    try:
        with pytest.raises(PgError) as err:
            await client.query("select pg_sleep(30)", timeout=0.2)
        assert err.value.sqlstate == "57014"
        assert client.closed
        with pytest.raises(PgError) as err:
            await client.query("select 1")
        assert err.value.sqlstate == "08003"
    finally:
        await client.close()
        with psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(%s)", (pid,))


async def test_cancelled_query_closes_the_connection() -> None:
    client = await _connect()
    pid = client.backend_pid
    try:
        task = asyncio.create_task(client.query("select pg_sleep(30)"))
        await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.closed
    finally:
        await client.close()
        with psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(%s)", (pid,))


async def test_backend_terminated_under_the_client() -> None:
    client = await _connect()
    try:
        with psycopg.connect(dsn(PG_HOST, PG_PORT), autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(%s)", (client.backend_pid,))
        with pytest.raises(PgError) as err:
            await client.query("select 1")
        # the FATAL ErrorResponse (57P01) may or may not be read before the EOF
        assert err.value.sqlstate in ("57P01", "08006")
        assert client.closed
    finally:
        await client.close()


async def test_connect_failures() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(PgError) as err:
            await PgClient.connect("127.0.0.1", port, PG_USER, PG_DB)
    assert err.value.sqlstate == "08001"
    with pytest.raises(PgError) as err:
        await PgClient.connect(PG_HOST, PG_PORT, PG_USER, "pgr_no_such_database")
    assert err.value.sqlstate == "3D000"


async def test_connect_timeout() -> None:
    # A listener that never answers the start-up packet.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(PgError) as err:
            await PgClient.connect("127.0.0.1", port, PG_USER, PG_DB, timeout=0.3)
        assert err.value.sqlstate == "08001"
    finally:
        server.close()


async def test_protocol_violation_closes() -> None:
    # A "server" that answers with garbage.
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        writer.write(b"R\x00\x00\x00\x01")  # length 1 < 4
        await writer.drain()
        await asyncio.sleep(5)

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(PgError) as err:
            await PgClient.connect("127.0.0.1", port, PG_USER, PG_DB, timeout=3)
        assert err.value.sqlstate == "08P01"
    finally:
        server.close()


# --- password methods against a throwaway cluster --------------------------------------

HBA = """\
local   all       all                          trust
host    all       postgres      127.0.0.1/32   trust
host    all       pgr_password  127.0.0.1/32   password
host    all       pgr_md5       127.0.0.1/32   md5
host    all       pgr_scram     127.0.0.1/32   scram-sha-256
host    all       pgr_scram2    127.0.0.1/32   scram-sha-256
"""

USERS = {  # role -> (password_encryption for the verifier, password)
    "pgr_password": ("scram-sha-256", "pw-clear"),
    "pgr_md5": ("md5", "pw-md5"),
    "pgr_scram": ("scram-sha-256", "pw-scram"),
    "pgr_scram2": ("scram-sha-256", "p\u00e4ss\u00adw\u00f6rd"),  # SASLprep drops U+00AD
}


@dataclass
class Cluster:
    directory: str
    port: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*argv: str) -> None:
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed:\n{result.stdout}{result.stderr}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    directory = tempfile.mkdtemp(prefix="pgr-pgclient-")
    shutil.chown(directory, "postgres", "postgres")
    os.chmod(directory, 0o700)
    data = os.path.join(directory, "data")
    port = _free_port()
    started = False
    try:
        _as_postgres(
            f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        with open(os.path.join(data, "pg_hba.conf"), "w", encoding="utf-8") as f:
            f.write(HBA)
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = True
        _as_postgres(
            f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(directory, "log"),
            "-w", "-t", "60", "-o", options, "start",
        )  # fmt: skip
        with psycopg.connect(dsn("127.0.0.1", port, dbname="postgres"), autocommit=True) as c:
            for role, (encryption, password) in USERS.items():
                c.execute(f"set password_encryption = '{encryption}'")
                c.execute(f"create role {role} login password '{password}'")
        yield Cluster(directory, port)
    finally:
        if started:
            with contextlib.suppress(RuntimeError):
                _as_postgres(f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("role", list(USERS))
async def test_password_methods(cluster: Cluster, role: str) -> None:
    password = USERS[role][1]
    client = await PgClient.connect("127.0.0.1", cluster.port, role, "postgres", password)
    try:
        assert await client.query("select current_user") == [(role,)]
    finally:
        await client.close()


@pytest.mark.parametrize("role", list(USERS))
async def test_wrong_password_is_refused_by_the_server(cluster: Cluster, role: str) -> None:
    with pytest.raises(PgError) as err:
        await PgClient.connect("127.0.0.1", cluster.port, role, "postgres", "wrong")
    assert err.value.sqlstate == "28P01"


@pytest.mark.parametrize("role", list(USERS))
async def test_missing_password_is_a_client_error(cluster: Cluster, role: str) -> None:
    with pytest.raises(PgError, match="none is set") as err:
        await PgClient.connect("127.0.0.1", cluster.port, role, "postgres")
    assert err.value.sqlstate == "28P01"


async def test_unix_socket_and_extra_parameters(cluster: Cluster) -> None:
    client = await PgClient.connect(
        cluster.directory, cluster.port, "postgres", "postgres",
        parameters={"search_path": "pg_catalog", "statement_timeout": "5s"},
    )  # fmt: skip
    try:
        rows = await client.query(
            "select current_setting('search_path'), current_setting('statement_timeout'),"
            " inet_client_addr() is null"
        )
        assert rows == [("pg_catalog", "5s", "t")]
    finally:
        await client.close()


async def test_ssl_refused_by_a_server_without_ssl(cluster: Cluster) -> None:
    tls = UpstreamTLS.from_config(UpstreamConfig(sslmode="require"))
    with pytest.raises(PgError, match="server does not support SSL, but SSL was required") as err:
        await PgClient.connect("127.0.0.1", cluster.port, "postgres", "postgres", tls=tls)
    assert err.value.sqlstate == "08001"
    # sslmode=prefer goes on in plaintext.
    tls = UpstreamTLS.from_config(UpstreamConfig(sslmode="prefer"))
    client = await PgClient.connect("127.0.0.1", cluster.port, "postgres", "postgres", tls=tls)
    try:
        assert await client.query("select 1") == [("1",)]
    finally:
        await client.close()
