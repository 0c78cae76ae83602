"""Shared fixtures: the real local Postgres and Redis, and proxies started as subprocesses.

Integration tests talk to the Postgres at 127.0.0.1:5432 (trust auth, database ``test``) and
to a pgreactive started with the same command line a user runs (``python -m proxy ...``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from cache.keys import Namespace

PG_HOST = os.environ.get("PGREACTIVE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PGREACTIVE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("PGREACTIVE_TEST_PG_USER", "postgres")
PG_DB = os.environ.get("PGREACTIVE_TEST_PG_DB", "test")

_LISTENING = re.compile(r"listening on (\S+):(\d+),")
_METRICS = re.compile(r"metrics on (http://\S+)/metrics")


def dsn(host: str, port: int, *, dbname: str = PG_DB, user: str = PG_USER, **extra: str) -> str:
    """A libpq connection string."""
    parts = {"host": host, "port": str(port), "dbname": dbname, "user": user, **extra}
    return " ".join(f"{k}={_quote(v)}" for k, v in parts.items())


def _quote(value: str) -> str:
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class ProxyProcess:
    """A pgreactive subprocess and where it listens."""

    process: subprocess.Popen[str]
    host: str
    port: int
    lines: list[str] = field(default_factory=list)
    metrics_url: str | None = None  # "http://HOST:PORT" when started with --metrics

    def dsn(self, **kwargs: str) -> str:
        return dsn(self.host, self.port, **kwargs)

    def url(self, *, dbname: str = PG_DB, user: str = PG_USER) -> str:
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname}"

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


STARTED: list[ProxyProcess] = []  # every proxy this test run started (see upstream_state.py)


def start_proxy(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 15,
    preexec: Callable[[], None] | None = None,
) -> ProxyProcess:
    """Start ``python -m proxy --listen 127.0.0.1:0 ARGS`` and wait until it listens
    (`preexec` runs in the child before it starts, e.g. to lower its resource limits)."""
    argv = [sys.executable, "-m", "proxy", "--listen", "127.0.0.1:0", *args]
    if not any(a.startswith("--upstream") for a in args):
        argv += ["--upstream", f"postgresql://{PG_HOST}:{PG_PORT}"]
    process = subprocess.Popen(
        argv,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec,
    )
    assert process.stderr is not None
    lines: list[str] = []
    metrics_url: str | None = None
    match: re.Match[str] | None = None
    listening: re.Match[str] | None = None
    deadline = time.monotonic() + timeout
    while True:
        line = process.stderr.readline()
        if not line:
            process.wait()
            raise RuntimeError("proxy exited before listening:\n" + "".join(lines))
        lines.append(line.rstrip("\n"))
        metrics = _METRICS.search(line)
        if metrics:
            metrics_url = metrics.group(1)
        listening = _LISTENING.search(line) or listening
        if listening and ("--metrics" not in args or metrics_url):
            match = listening
            break
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("proxy did not start listening:\n" + "".join(lines))
    assert match is not None
    proxy = ProxyProcess(process, match.group(1), int(match.group(2)), lines, metrics_url)
    STARTED.append(proxy)

    def drain() -> None:  # keep reading stderr so the proxy never blocks on a full pipe
        assert process.stderr is not None
        for rest in process.stderr:
            proxy.lines.append(rest.rstrip("\n"))

    threading.Thread(target=drain, daemon=True).start()
    return proxy


# PGREACTIVE_TEST_PROXY_ARGS="--redis redis://127.0.0.1:6379/14" runs the relay tests
# through a caching proxy instead (transparency with the cache on).
PROXY_ARGS = os.environ.get("PGREACTIVE_TEST_PROXY_ARGS", "--no-cache").split()


@pytest.fixture(scope="session")
def proxy() -> Iterator[ProxyProcess]:
    """One proxy shared by the whole test run (caching off unless PROXY_ARGS say)."""
    p = start_proxy(*PROXY_ARGS)
    yield p
    p.stop()


@pytest.fixture
def fresh_proxy() -> Iterator[ProxyProcess]:
    """A proxy of the test's own, for tests that stop or upset it."""
    p = start_proxy("--no-cache")
    yield p
    p.stop()


def scrape(proxy: ProxyProcess) -> dict[str, float]:
    """The proxy's /metrics as {"name{labels}": value} (it must run with --metrics)."""
    assert proxy.metrics_url, "start the proxy with --metrics 127.0.0.1:0"
    with urllib.request.urlopen(proxy.metrics_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


CACHE_REDIS_DB = 12
CACHE_REDIS_URL = f"redis://127.0.0.1:6379/{CACHE_REDIS_DB}"


def proxy_namespace(redis_url: str = CACHE_REDIS_URL) -> str:
    """The namespace a proxy started here (`start_proxy`'s upstream, no `namespace` set)
    derives for `redis_url`: the prefix of its keys, channel and stream."""
    from proxy.config import load, namespace

    upstream = f"postgresql://{PG_HOST}:{PG_PORT}"
    return namespace(load(None, {}, {"upstream.url": upstream, "redis.url": redis_url}))


def key_namespace(db: str, redis_url: str = CACHE_REDIS_URL) -> Namespace:
    """Where such a proxy keeps database `db`'s keys."""
    return Namespace.of(f"{PG_HOST}:{PG_PORT}", db, proxy_namespace(redis_url))


def start_caching_proxy(*args: str, env: dict[str, str] | None = None) -> ProxyProcess:
    """A proxy with the cache on: Redis db 12, a catalog connection as `postgres`, metrics."""
    return start_proxy(
        "--redis",
        CACHE_REDIS_URL,
        "--metrics",
        "127.0.0.1:0",
        *args,
        env={"PGREACTIVE_CATALOG_USER": PG_USER, **(env or {})},
    )


@pytest.fixture
def direct_dsn() -> str:
    return dsn(PG_HOST, PG_PORT)
