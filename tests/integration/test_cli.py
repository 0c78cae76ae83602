"""The command line cannot mislead (issue 13): each case the issue lists, run as a user runs
it -- the installed ``pgreactive`` script as a subprocess.

Each case now either does what it says (exit 0, with the help asked for) or exits non-zero
with one clear line and no traceback.  The `cache flush` cases that need a running server
are in `test_tools_events.py` (a module database and proxy); the ones here need none, or a
throwaway one.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import PG_HOST, PG_PORT

PGREACTIVE = str(Path(sys.executable).with_name("pgreactive"))
# No PGREACTIVE_* from the test run's environment.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PGREACTIVE_")}
COMMANDS = ("check-config", "stats", "events", "cache", "replication")


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PGREACTIVE, *argv], capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV
    )


def one_line(stderr: str) -> str:
    """The single line a failure printed (no traceback, nothing else)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# --- help and version ---------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    done = run("--help")
    assert done.returncode == 0 and done.stderr == "", done
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ")}
    assert set(COMMANDS) <= listed, done.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["check-config"], ["stats"], ["events"], ["events", "tail"], ["cache"], ["cache", "flush"],
        ["replication"], ["replication", "install"], ["replication", "uninstall"],
    ],
    ids=lambda c: " ".join(c),
)
def test_each_command_has_help(command: list[str]) -> None:
    done = run(*command, "--help")
    assert done.returncode == 0 and done.stderr == "", done
    assert done.stdout.startswith(f"usage: pgreactive {' '.join(command)} "), done.stdout


def test_version() -> None:
    done = run("--version")
    assert (done.returncode, done.stdout) == (0, f"pgreactive {metadata.version('pgreactive')}\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["events"], "pgreactive events: the following arguments are required: ACTION"),
        (["cache"], "pgreactive cache: the following arguments are required: ACTION"),
        (
            ["replication"],
            "pgreactive replication: the following arguments are required: ACTION",
        ),
        (["nonsense"], "pgreactive: argument COMMAND: invalid choice: 'nonsense'"),
        (
            ["cache", "flush", "--table", "agents"],  # the docs' old example: flushed `postgres`
            "pgreactive cache flush: one of the arguments --database --all is required",
        ),
        (
            ["cache", "flush", "--all", "--table", "agents"],
            "pgreactive cache flush: --all flushes every database: give it without --table",
        ),
    ],
    ids=[
        "events", "cache", "replication", "unknown-command", "flush-without-database",
        "flush-all-and-table",
    ],
)
def test_an_incomplete_command_is_one_line_and_exit_2(argv: list[str], message: str) -> None:
    done = run(*argv)
    assert done.returncode == 2 and done.stdout == "", done
    assert one_line(done.stderr).startswith(message)


# --- a taken port -------------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("flag", ["--listen", "--metrics"])
def test_a_taken_port_is_one_line_and_exit_2(flag: str, taken_port: int) -> None:
    address = f"127.0.0.1:{taken_port}"
    others = {"--listen": "127.0.0.1:0", "--metrics": "127.0.0.1:0"}
    others[flag] = address
    argv = [f"--upstream=postgresql://{PG_HOST}:{PG_PORT}", "--no-cache", "--log-level=ERROR"]
    done = run(*argv, *(f"{k}={v}" for k, v in others.items()), timeout=30)
    assert done.returncode == 2, done
    key = "listen" if flag == "--listen" else "metrics.listen"
    assert one_line(done.stderr) == (
        f"pgreactive: {key} {address}: cannot listen there: Address already in use"
    )


# --- a reader of stdout that goes away (`pgreactive stats | head`) --------------------------


@pytest.fixture
def stats_server() -> Iterator[str]:
    """A /stats endpoint with more shapes than a pipe buffer holds."""
    shapes = [
        {"name": f"shape{n}", "sql": f"select {n} as x", "calls": n, "hits": 0, "misses": n,
         "bypass": {}, "mean_latency_ms": 1.0}
        for n in range(3000)
    ]  # fmt: skip
    body = json.dumps({"shapes": shapes, "bound": 1000}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_closed_stdout_ends_the_tool_quietly(stats_server: str) -> None:
    """As `pgreactive stats | head -1`: the reader goes away while the tool still writes
    (the table is larger than a pipe's buffer)."""
    process = subprocess.Popen(
        [PGREACTIVE, "stats", "--metrics", stats_server],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=CLEAN_ENV,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith(b"NAME ")  # head -1
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(60) == 0, stderr
    assert stderr == ""
