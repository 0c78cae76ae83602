"""What the upstream sessions of a proxy hold (invariant 8), read from Postgres itself.

A proxy's upstream backends are found by the TCP ports of the proxy process's own sockets
to Postgres (``/proc/PID/fd`` and ``/proc/net/tcp*``), then looked up in `pg_stat_activity`
(by ``client_port``) and `pg_locks`.  When every client of the proxy is idle, no backend of
it may be ``active`` or ``idle in transaction``, and none may hold a lock: otherwise a
cache hit (or anything else the proxy did on a client's behalf) left the upstream in a state
the client could not have caused, and DDL on the tables it touched would wait forever.
The proxy's catalog connections (``application_name = pgreactive-catalog``) are left out:
they are the proxy's own, not a client's.
"""

from __future__ import annotations

import os
import time

import psycopg

from tests.conftest import PG_HOST, PG_PORT, STARTED, ProxyProcess, dsn

_TCP_ESTABLISHED = "01"


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def upstream_ports(pid: int, pg_port: int = PG_PORT) -> set[int]:
    """The local ports of process `pid`'s established TCP connections to `pg_port`."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            remote_port = int(remote.rsplit(":", 1)[1], 16)
            if inode in inodes and state == _TCP_ESTABLISHED and remote_port == pg_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def upstream_problems(proxies: list[ProxyProcess]) -> list[str]:
    """What the upstream backends of `proxies` hold that an idle client's must not."""
    ports: set[int] = set()
    for proxy in proxies:
        if proxy.process.poll() is None:
            ports |= upstream_ports(proxy.process.pid)
    if not ports:
        return []
    with psycopg.connect(dsn(PG_HOST, PG_PORT, dbname="postgres"), autocommit=True) as conn:
        backends = conn.execute(
            "select pid, state, wait_event, left(query, 120) from pg_stat_activity"
            " where client_port = any(%s) and application_name <> 'pgreactive-catalog'"
            " and pid <> pg_backend_pid()",
            (list(ports),),
        ).fetchall()
        pids = [row[0] for row in backends]
        locks = conn.execute(
            "select pid, locktype, mode, relation::regclass::text from pg_locks"
            " where pid = any(%s) and locktype <> 'virtualxid'",
            (pids,),
        ).fetchall() if pids else []
    problems = [
        f"backend {pid} is {state!r} ({wait}): {query!r}"
        for pid, state, wait, query in backends
        if state in ("active", "idle in transaction", "idle in transaction (aborted)")
    ]
    problems += [f"backend {pid} holds {mode} on {kind} {rel}" for pid, kind, mode, rel in locks]
    return problems


def assert_upstream_idle(proxies: list[ProxyProcess] | None = None, settle: float = 5.0) -> None:
    """Every upstream backend of the proxies is idle outside a transaction and holds no
    lock; a backend still ending (its client just closed) gets `settle` seconds."""
    proxies = STARTED if proxies is None else proxies
    deadline = time.monotonic() + settle
    while True:
        problems = upstream_problems(proxies)
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not problems, "upstream state the clients could not have caused:\n" + "\n".join(problems)
