"""Back-pressure and bounded memory (DESIGN invariant 6, PITFALLS B16 "stream, don't buffer").

A result of about 1 GB streams through a fresh proxy while a thread samples the proxy's
resident set size from /proc; the growth must stay under 50 MB.  A client that stops
reading must make the proxy stop reading from Postgres (the backend then waits in
``ClientWrite``) instead of buffering the result in the proxy.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ProxyProcess
from tests.integration.cluster import backends, terminate_backends, unique_app_name, wait_for
from tests.integration.proxies import assert_no_crash, running_proxy
from tests.integration.wire import GUARD, RawClient, query

pytestmark = pytest.mark.slow

ROWS = 1_000_000
WIDTH = 1000
SQL = f"select repeat('x', {WIDTH}) from generate_series(1, {ROWS})"
# DataRow: tag, Int32 length, Int16 column count, Int32 value length, the value.
DATA_ROW_BYTES = 1 + 4 + 2 + 4 + WIDTH
LIMIT = 50 * 1024 * 1024
STREAM_GUARD = 120.0  # a hang guard for the whole gigabyte on a slow, shared machine


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid`, from /proc/PID/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples a process's RSS in a thread until stopped; keeps the maximum."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_bytes(self.pid))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            self._stop.wait(0.01)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


class ResultCounter:
    """Counts DataRows in a backend byte stream without keeping them."""

    def __init__(self) -> None:
        self.rows = 0
        self.row_bytes = 0
        self.others: list[tuple[bytes, bytes]] = []  # every message that is not a DataRow
        self._buf = bytearray()

    @property
    def done(self) -> bool:
        return bool(self.others) and self.others[-1][0] == b"Z"

    def feed(self, chunk: bytes) -> None:
        buf = self._buf
        buf += chunk
        pos, size = 0, len(buf)
        unpack = struct.unpack_from
        while size - pos >= 5:
            tag, length = unpack("!BI", buf, pos)
            end = pos + 1 + length
            if end > size:
                break
            if tag == 0x44:  # 'D'
                self.rows += 1
                self.row_bytes += end - pos
            else:
                self.others.append((bytes((tag,)), bytes(buf[pos + 5 : end])))
            pos = end
        del buf[:pos]


def read_result(client: RawClient, counter: ResultCounter) -> None:
    """Read and count until ReadyForQuery (the hang guard covers the whole result)."""
    deadline = time.monotonic() + STREAM_GUARD
    if client.buf:
        counter.feed(bytes(client.buf))
        client.buf.clear()
    while not counter.done:
        assert time.monotonic() < deadline, f"result not complete after {STREAM_GUARD} s"
        chunk = client.sock.recv(1 << 20)
        assert chunk, "the proxy closed the connection in the middle of the result"
        counter.feed(chunk)


def check_complete(counter: ResultCounter) -> None:
    assert counter.rows == ROWS
    assert counter.row_bytes == ROWS * DATA_ROW_BYTES  # ≈ 1.01 GB through the proxy
    tags = [t for t, _ in counter.others]
    assert tags == [b"T", b"C", b"Z"], counter.others[:5]
    assert counter.others[1][1] == f"SELECT {ROWS}".encode() + b"\x00"
    assert counter.others[2][1] == b"I"


@pytest.fixture
def fresh() -> Iterator[ProxyProcess]:
    with running_proxy() as p:
        yield p
        assert_no_crash(p)


def test_gigabyte_result_streams_with_bounded_rss(fresh: ProxyProcess) -> None:
    app = unique_app_name("pgr_mem")
    try:
        with RawClient(fresh.host, fresh.port, timeout=GUARD) as client:
            assert client.login(application_name=app).ok
            counter = ResultCounter()
            with RssSampler(fresh.process.pid) as rss:
                client.send(query(SQL))
                read_result(client, counter)
            check_complete(counter)
            assert rss.samples > 10
            assert rss.growth < LIMIT, (
                f"proxy RSS grew by {rss.growth / 2**20:.1f} MB streaming "
                f"{counter.row_bytes / 2**30:.2f} GB"
            )
    finally:
        terminate_backends(app)


def test_slow_reader_pauses_upstream(fresh: ProxyProcess) -> None:
    app = unique_app_name("pgr_slow")
    try:
        # A small receive buffer from the start (set before connect), so the kernel holds
        # little and the proxy's own buffering is what a missing pause would show.
        with RawClient(fresh.host, fresh.port, timeout=GUARD, rcvbuf=32768) as client:
            assert client.login(application_name=app).ok
            counter = ResultCounter()
            with RssSampler(fresh.process.pid) as rss:
                client.send(query(SQL))
                # Not reading: the proxy must stop reading from Postgres, whose backend
                # then blocks writing to its socket ...
                wait_for(
                    lambda: [b[2] for b in backends(app)] == ["ClientWrite"],
                    "the backend to block in ClientWrite",
                    guard=GUARD,
                )
                time.sleep(2)  # ... and stays blocked while we keep not reading.
                assert [b[2] for b in backends(app)] == ["ClientWrite"]
                paused_growth = rss.peak - rss.baseline
                # Now read the rest at full speed (a bigger window just saves test time).
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                read_result(client, counter)
            check_complete(counter)
            assert paused_growth < LIMIT, f"proxy buffered {paused_growth / 2**20:.1f} MB"
            assert rss.growth < LIMIT, f"proxy RSS grew by {rss.growth / 2**20:.1f} MB"
    finally:
        terminate_backends(app)
