"""Configuration at run time: SIGHUP reload through a running caching proxy, JSON log lines
with connection ids, and the `pgreactive check-config` command.

A reload must keep every connection (same backend pid before and after), apply the new TTLs
to entries filled afterwards (read back from Redis with PTTL), keep the running settings when
the file is broken (one error line naming the key), and warn for each changed key that needs
a restart.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml

from tests.conftest import (
    CACHE_REDIS_DB,
    ProxyProcess,
    key_namespace,
    start_proxy,
)
from tests.integration.cache_env import Conn, Env, cached, module_env

ROOT = Path(__file__).resolve().parents[2]
PGREACTIVE = Path(sys.executable).parent / "pgreactive"
SCHEMA = "create table items (id int primary key, v text);" + "".join(
    f"insert into items values ({i}, 'v{i}');" for i in range(1, 10)
)
BASE: dict[str, Any] = {"cache": {"default_ttl": 300}, "log": {"level": "info"}}


# --- helpers -----------------------------------------------------------------------------


def _write(path: Path, settings: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(settings))


def _with(**sections: dict[str, Any]) -> dict[str, Any]:
    """BASE with some sections' keys replaced (one level deep)."""
    out = {name: dict(values) for name, values in BASE.items()}
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


def _lines(proxy: ProxyProcess, marker: str) -> list[str]:
    return [line for line in list(proxy.lines) if marker in line]


def _wait_line(proxy: ProxyProcess, marker: str, seen: int, timeout: float = 20) -> str:
    """The next log line containing `marker` after the first `seen` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = _lines(proxy, marker)
        if len(hits) > seen:
            return hits[seen]
        time.sleep(0.02)
    raise AssertionError(f"no new {marker!r} line in the proxy's log:\n{proxy.log}")


def _sighup(proxy: ProxyProcess, marker: str) -> str:
    """Send SIGHUP and return the first new log line containing `marker`."""
    seen = len(_lines(proxy, marker))
    proxy.process.send_signal(signal.SIGHUP)
    return _wait_line(proxy, marker, seen)


def _entry_keys(db: str) -> set[bytes]:
    prefix = key_namespace(db).prefix
    with redis.Redis(host="127.0.0.1", port=6379, db=CACHE_REDIS_DB) as client:
        return set(client.scan_iter(match=prefix + "e:*", count=1000))


def _new_entry_ttl_ms(env: Env, conn: Conn, item: int) -> int:
    """Fill the cache with a read not made before; the PTTL Redis has on its entry."""
    before = _entry_keys(env.db)
    cached(env.proxy, conn, f"select v from items where id = {item}")
    new = _entry_keys(env.db) - before
    assert len(new) == 1, new
    with redis.Redis(host="127.0.0.1", port=6379, db=CACHE_REDIS_DB) as client:
        ttl: int = client.pttl(new.pop())
    return ttl


def _pid(conn: Conn) -> int:
    row = conn.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _local_port(conn: Conn) -> int:
    with socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as sock:
        return int(sock.getsockname()[1])


# --- SIGHUP ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reload") / "pgreactive.yaml"
    _write(path, BASE)
    return path


@pytest.fixture(scope="module")
def env(config_file: Path) -> Iterator[Env]:
    yield from module_env("reload", SCHEMA, "--config", str(config_file))


@pytest.fixture
def base_config(env: Env, config_file: Path) -> Iterator[Path]:
    """The file as the proxy started with it, before and after each test."""
    _write(config_file, BASE)
    _sighup(env.proxy, "config reloaded:")
    yield config_file
    _write(config_file, BASE)
    _sighup(env.proxy, "config reloaded:")


def test_sighup_applies_new_ttls_and_keeps_the_connection(env: Env, base_config: Path) -> None:
    with env.proxied() as conn:
        pid = _pid(conn)
        assert 60_000 < _new_entry_ttl_ms(env, conn, 1) <= 300_000

        _write(base_config, _with(cache={"ttl": {"items": 7}}))
        line = _sighup(env.proxy, "config reloaded:")
        assert "config reloaded: changed cache.ttl" in line, line
        assert 0 < _new_entry_ttl_ms(env, conn, 2) <= 7_000

        _write(base_config, _with(cache={"default_ttl": 40}))
        line = _sighup(env.proxy, "config reloaded:")
        assert "changed cache.default_ttl, cache.ttl" in line, line
        assert 20_000 < _new_entry_ttl_ms(env, conn, 3) <= 40_000

        assert _pid(conn) == pid  # the same upstream connection all along
        assert env.proxy.process.poll() is None


def test_sighup_with_a_broken_file_keeps_the_running_config(
    env: Env, base_config: Path
) -> None:
    with env.proxied() as conn:
        pid = _pid(conn)
        _write(base_config, _with(cache={"ttl": {"items": 7}}))
        _sighup(env.proxy, "config reloaded:")

        base_config.write_text("cache:\n  ttl:\n    items: soon\n")
        line = _sighup(env.proxy, "config reload failed")
        assert "cache.ttl.items" in line, line
        assert len(_lines(env.proxy, "cache.ttl.items")) == 1
        assert env.proxy.process.poll() is None
        assert _pid(conn) == pid
        assert 0 < _new_entry_ttl_ms(env, conn, 4) <= 7_000  # still the ttl before


def test_sighup_warns_for_keys_that_need_a_restart_and_applies_log_level(
    env: Env, base_config: Path
) -> None:
    restart_marker = "needs a restart"
    warnings = len(_lines(env.proxy, restart_marker))
    _write(
        base_config,
        _with(
            log={"level": "warning"},
            cache={"scope_columns": ["team_id"]},
            limits={"shutdown_grace_seconds": 3},
        ),
    )
    line = _sighup(env.proxy, "limits.shutdown_grace_seconds changed")
    assert restart_marker in line
    new = _lines(env.proxy, restart_marker)[warnings:]
    assert len(new) == 2 and "cache.scope_columns changed" in new[0], new

    # At WARNING, a new connection's "open" line is not logged...
    with env.proxied() as quiet:
        quiet_port = _local_port(quiet)
        _pid(quiet)
    _write(base_config, BASE)
    line = _sighup(env.proxy, "config reloaded:")
    assert line.endswith("config reloaded: changed log.level"), line
    assert len(_lines(env.proxy, restart_marker)) == warnings + 2  # back to what runs
    # ... and at INFO again it is.
    with env.proxied() as loud:
        loud_port = _local_port(loud)
        _wait_line(env.proxy, f"open from 127.0.0.1:{loud_port}", 0)
    quiet_open = f"open from 127.0.0.1:{quiet_port}"
    assert not [line for line in list(env.proxy.lines) if line.endswith(quiet_open)]


# --- JSON log lines ----------------------------------------------------------------------


def _startup_without_user() -> bytes:
    body = struct.pack("!I", 196608) + b"database\x00test\x00\x00"
    return struct.pack("!I", len(body) + 4) + body


def test_json_log_lines_name_the_connection() -> None:
    proxy = start_proxy("--no-cache", "--log-format", "json")
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            good = _local_port(conn)
            conn.execute("select 1")
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
            bad = sock.getsockname()[1]
            sock.sendall(_startup_without_user())
            while sock.recv(4096):
                pass  # the error reply, then the proxy closes
        entries = {}
        for port in (good, bad):
            opened = json.loads(_wait_line(proxy, f'open from 127.0.0.1:{port}"', 0))
            conn_id = opened["conn"]
            _wait_line(proxy, f'"msg": "conn={conn_id} closed"', 0)
            entries[port] = [
                e for e in map(json.loads, list(proxy.lines)) if e.get("conn") == conn_id
            ]
    finally:
        proxy.stop()
    for line in proxy.lines:  # every line is one JSON object; conn= messages carry the id
        entry = json.loads(line)
        if entry["msg"].startswith("conn="):
            assert entry["conn"] == int(entry["msg"].split()[0].removeprefix("conn="))
    good_msgs = [e["msg"].split(" ", 1)[1] for e in entries[good]]
    assert good_msgs[0].startswith("open from") and good_msgs[-1] == "closed", good_msgs
    bad_levels = [(e["level"], e["msg"].split(" ", 2)[1]) for e in entries[bad]]
    assert ("WARNING", "08P01:") in bad_levels, entries[bad]
    assert entries[bad][-1]["msg"].endswith("closed")


# --- check-config ------------------------------------------------------------------------


def _check_config(
    path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PGREACTIVE_")}
    return subprocess.run(
        [str(PGREACTIVE), "check-config", str(path)],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
    )


def test_check_config_accepts_the_example() -> None:
    path = ROOT / "config.example.yaml"
    result = _check_config(path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{path}: ok\n", "")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("cache:\n  default_tll: 5\n", "cache.default_tll: unknown key", id="unknown"),
        pytest.param("cache:\n  ttl:\n    users: soon\n", "cache.ttl.users: expected", id="type"),
        pytest.param("relations:\n  agents: [messages]\n", "relations.agents: expected", id="rel"),
        pytest.param("limits: {bogus: 1}\n", "limits.bogus: unknown key", id="limits"),
    ],
)
def test_check_config_names_the_key(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = _check_config(path)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: {problem}"), result.stderr


def test_check_config_applies_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text("log:\n  level: info\n")
    assert _check_config(path).returncode == 0
    result = _check_config(path, {"PGREACTIVE_LOG_LEVEL": "loud"})
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: log.level:"), result.stderr
    assert "PGREACTIVE_LOG_LEVEL" in result.stderr
    helped = subprocess.run(
        [str(PGREACTIVE), "check-config", "--help"], capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "PGREACTIVE_" in helped.stdout
