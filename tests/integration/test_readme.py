"""The README's first screen works as written: `make run`, then the two commands that show a hit.

A new user runs `make run` in one terminal and, in another, the README's `psql` and
`pgreactive stats` lines.  This test takes those lines from README.md itself (so the README
cannot drift from what is tested), moves the ports to free ones, and runs them for real
against the local Postgres.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _first_screen_commands() -> list[str]:
    """The commands of the README's code block that follows `make run` (comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert "make run" in blocks[0] and "make test" in blocks[0], "first block: the two commands"
    lines = [line.split("  #")[0].strip() for line in blocks[1].splitlines()]
    return [line for line in lines if line]


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[int, int]]:
    listen, metrics = _free_port(), _free_port()
    log = tmp_path / "make-run.log"
    process = subprocess.Popen(
        ["make", "run", f"LISTEN=127.0.0.1:{listen}", f"METRICS=127.0.0.1:{metrics}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PGREACTIVE_")},
    )
    try:
        deadline = time.monotonic() + 120  # (the first `make run` may install the venv)
        while True:
            try:
                socket.create_connection(("127.0.0.1", metrics), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    message = f"make run did not start: {log.read_text()}"
                    raise AssertionError(message) from None
                time.sleep(0.2)
        yield listen, metrics
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_readme_shows_a_hit_in_pgreactive_stats(make_run: tuple[int, int]) -> None:
    listen, metrics = make_run
    commands = _first_screen_commands()
    assert [c.split()[0] for c in commands] == ["psql", ".venv/bin/pgreactive"], commands
    outputs = []
    for command in commands:
        command = command.replace("127.0.0.1:6543", f"127.0.0.1:{listen}")
        command = command.replace("127.0.0.1:9187", f"127.0.0.1:{metrics}")
        run = subprocess.run(
            shlex.split(command), cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, f"{command}: {run.stderr}"
        outputs.append(run.stdout)
    assert outputs[0].count("42") == 2  # both reads answered
    # The SQL is shown without its values.
    (row,) = [line for line in outputs[1].splitlines() if "SELECT $1 AS answer" in line]
    _name, _database, calls, hits, misses = row.split()[:5]
    assert (calls, hits, misses) == ("2", "1", "1"), outputs[1]
