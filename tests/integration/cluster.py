"""Helpers shared by the integration tests of this directory: a throwaway Postgres cluster
with one login role per authentication method, free ports, and pg_stat_activity probes.

The throwaway cluster exists because the shared Postgres at :5432 trusts everyone: testing
that password, md5 and SCRAM exchanges pass through the proxy needs a server that asks for
them.  `initdb` refuses to run as root, so every server command runs as the `postgres` OS
user, in a temporary directory that user owns; the fixture's finaliser stops the server
with ``pg_ctl stop -m immediate`` and removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import psycopg
import pytest

from tests.conftest import PG_DB, PG_HOST, PG_PORT, PG_USER, dsn

PG_BIN = os.environ.get("PGREACTIVE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin")

# role → (pg_hba method, password)
AUTH_USERS: dict[str, tuple[str, str | None]] = {
    "u_trust": ("trust", None),
    "u_password": ("password", "pw-cleartext"),
    "u_md5": ("md5", "pw-md5"),
    "u_scram": ("scram-sha-256", "pw-scram"),
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*argv: str, timeout: float = 60) -> None:
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        output = result.stdout + result.stderr
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}):\n{output}")


@dataclass
class Cluster:
    """A running throwaway Postgres."""

    directory: str
    port: int
    host: str = "127.0.0.1"

    @property
    def data(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def logfile(self) -> str:
        return os.path.join(self.directory, "server.log")

    def log(self) -> str:
        with open(self.logfile, encoding="utf-8", errors="replace") as f:
            return f.read()

    def dsn(self, user: str = "postgres", password: str | None = None, **extra: str) -> str:
        params = {"dbname": "postgres", **extra}
        if password is not None:
            params["password"] = password
        return dsn(self.host, self.port, user=user, **params)


HBA = """\
# TYPE  DATABASE  USER        ADDRESS        METHOD
local   all       all                        trust
host    all       postgres    127.0.0.1/32   trust
host    all       u_trust     127.0.0.1/32   trust
host    all       u_password  127.0.0.1/32   password
host    all       u_md5       127.0.0.1/32   md5
host    all       u_scram     127.0.0.1/32   scram-sha-256
"""


def _create_roles(cluster: Cluster) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        for role, (method, secret) in AUTH_USERS.items():
            # The stored verifier follows password_encryption at the time it is set: md5
            # needs an md5 hash, SCRAM a SCRAM verifier (cleartext works with either).
            encryption = "md5" if method == "md5" else "scram-sha-256"
            conn.execute(f"set password_encryption = '{encryption}'")
            conn.execute(f"create role {role} login")
            if secret is not None:
                conn.execute(f"alter role {role} password '{secret}'")
        # Make sure pg_hba.conf is the one in force (it was written before the start, and
        # a reload is harmless), and that the stored verifiers have the expected kinds.
        conn.execute("select pg_reload_conf()")
        kinds = dict(
            conn.execute(
                "select rolname, left(rolpassword, 3) from pg_authid where rolname like 'u\\_%'"
            ).fetchall()
        )
    assert kinds["u_md5"] == "md5", kinds
    assert kinds["u_scram"] == "SCR", kinds


@contextlib.contextmanager
def throwaway_cluster(
    prefix: str = "pgr-auth-",
    hba: str = HBA,
    files: Mapping[str, str] | None = None,
    options: str = "",
) -> Iterator[Cluster]:
    """A running throwaway cluster with the u_* roles; `files` (name → path) are copied into
    its data directory, owned by the server with mode 0600 (a key file must be), so that
    `options` (extra ``-c name=value``) can name them relative to it."""
    directory = tempfile.mkdtemp(prefix=prefix)
    shutil.chown(directory, "postgres", "postgres")
    os.chmod(directory, 0o700)
    cluster = Cluster(directory, free_port())
    started = False
    try:
        _as_postgres(
            f"{PG_BIN}/initdb", "-D", cluster.data, "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        with open(os.path.join(cluster.data, "pg_hba.conf"), "w", encoding="utf-8") as f:
            f.write(hba)
        for name, source in (files or {}).items():
            target = os.path.join(cluster.data, name)
            shutil.copyfile(source, target)
            shutil.chown(target, "postgres", "postgres")
            os.chmod(target, 0o600)
        options = (
            f"-p {cluster.port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c log_connections=on {options}"
        )
        started = True
        _as_postgres(
            f"{PG_BIN}/pg_ctl", "-D", cluster.data, "-l", cluster.logfile, "-w", "-t", "60",
            "-o", options, "start",
        )  # fmt: skip
        _create_roles(cluster)
        yield cluster
    finally:
        if started:
            with contextlib.suppress(RuntimeError):  # it never started: remove the directory
                _as_postgres(
                    f"{PG_BIN}/pg_ctl", "-D", cluster.data, "-m", "immediate", "-w", "stop"
                )
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module", name="auth_cluster")
def auth_cluster_fixture() -> Iterator[Cluster]:
    """A throwaway cluster whose pg_hba.conf maps each u_* role to its auth method."""
    with throwaway_cluster() as cluster:
        yield cluster


# --- the shared Postgres at :5432 ----------------------------------------------------


def direct_connect() -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection straight to the shared Postgres (not through a proxy)."""
    return psycopg.connect(dsn(PG_HOST, PG_PORT, dbname=PG_DB, user=PG_USER), autocommit=True)


def unique_app_name(prefix: str) -> str:
    """An application_name no other test (or test run) uses."""
    return f"{prefix}_{os.getpid()}_{time.monotonic_ns()}"


def backends(app_name: str) -> list[tuple[int, str, str | None, str | None]]:
    """(pid, state, wait_event, query) of the backends with this application_name."""
    with direct_connect() as conn:
        return [
            (int(r[0]), str(r[1]), r[2], r[3])
            for r in conn.execute(
                "select pid, coalesce(state, ''), wait_event, query from pg_stat_activity "
                "where application_name = %s",
                (app_name,),
            ).fetchall()
        ]


def wait_for(predicate: Callable[[], bool], what: str, guard: float = 10.0) -> None:
    """Poll `predicate` until true; fail (naming `what`) if the guard runs out."""
    deadline = time.monotonic() + guard
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_active(app_name: str, guard: float = 10.0) -> int:
    """Wait until a backend with this application_name runs a statement; return its pid."""
    found: list[int] = []

    def active() -> bool:
        found[:] = [pid for pid, state, _, _ in backends(app_name) if state == "active"]
        return bool(found)

    wait_for(active, f"an active backend named {app_name}", guard)
    return found[0]


def wait_gone(app_name: str, guard: float = 10.0) -> None:
    """Wait until no backend has this application_name (no leaked upstream connections)."""
    wait_for(lambda: not backends(app_name), f"backends named {app_name} to go away", guard)


def terminate_backends(app_name: str) -> None:
    """Clean-up: end whatever backends a test left behind under this application_name."""
    with direct_connect() as conn:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = %s",
            (app_name,),
        )
