"""Fuzzing the client side of a running proxy (issue acceptance point 3; DESIGN invariant 7).

Hypothesis builds hostile frontend byte streams: a valid start-up followed by random tagged
messages (well-formed ones from a read-only corpus, and ones with random tags, bodies and
length fields), mutations of a real driver session recorded on the wire (bit flips,
truncations, duplicated or dropped chunks, overwritten length fields, spliced garbage), and
garbage before or after the start-up.  Each stream goes to the proxy on a fresh socket; any
answer is accepted, but once the client half-closes, the proxy must close the connection
within the guard (never hang), and it must never crash.  A psycopg session opened before
the fuzzing stays open and keeps answering ``select 1`` between batches, and no backend of
the fuzzed sessions outlives them.

Safety: everything runs in database ``test`` with ``default_transaction_read_only=on`` and a
2 s statement timeout in the start-up options, and the SQL corpus holds only reads; a
mutated query text is at worst a syntax error.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ProxyProcess
from tests.integration.cluster import terminate_backends, unique_app_name, wait_gone
from tests.integration.fault_relay import FaultRelay
from tests.integration.proxies import assert_no_crash, running_proxy
from tests.integration.wire import (
    bind,
    close,
    describe,
    execute,
    flush,
    gssenc_request,
    message,
    parse,
    query,
    ssl_request,
    startup_message,
    sync,
    terminate,
)

APP = unique_app_name("pgr_fuzz")
OPTIONS = "-c default_transaction_read_only=on -c statement_timeout=2000"
STARTUP = {"user": "postgres", "database": "test", "application_name": APP, "options": OPTIONS}

QUIET = 0.1  # stop waiting for more answers after this much silence ...
ANSWER_GUARD = 2.0  # ... or after this long in all
SILENT_OPENING = 0.3  # an opening that got no answer at all after this is incomplete
CLOSE_GUARD = 10.0  # after our EOF the proxy must close within this (else: a hang)
BATCH = 25  # check the bystander session every BATCH examples

READ_ONLY_SQL = [
    "select 1",
    "select 1/0",
    "select $1::int",
    "select pg_sleep(0.01)",
    "select * from generate_series(1, 50)",
    "select repeat('x', 3000)",
    "select 1; select 2",
    "select 1; select 1/0; select 3",
    "begin",
    "commit",
    "rollback",
    "begin; select 1; commit",
    "show server_version",
    "values (1, 'a'), (2, null)",
    "copy (select generate_series(1, 3)) to stdout",
    "select * from pg_class limit 3",
    "select from nonexistent_relation",
    "",
    ";",
    "garbage that is not sql",
]

# Frontend tags except FunctionCall: a random function OID with random arguments is the one
# thing here that could, however unlikely, call something with side effects.
TAGS = b"BCdcDEHPpQSX"


def _length_field(body: bytes) -> st.SearchStrategy[int]:
    right = len(body) + 4
    return st.one_of(
        st.just(right),
        st.integers(0, 3),  # below the minimum
        st.integers(max(0, right - 3), right + 3),  # off by a little
        st.integers(0, 2**32 - 1),  # anything, including beyond every limit
    )


@st.composite
def raw_message(draw: st.DrawFn) -> bytes:
    """A tagged message with a random body and a possibly wrong length field."""
    tag = draw(st.one_of(st.sampled_from(TAGS), st.integers(0, 255).filter(lambda t: t != 0x46)))
    body = draw(st.binary(max_size=64))
    length = draw(_length_field(body))
    return bytes((tag,)) + struct.pack("!I", length) + body


names = st.sampled_from(["", "s1", "p1", "x" * 40])
sql = st.sampled_from(READ_ONLY_SQL)
param = st.one_of(st.none(), st.sampled_from([b"1", b"42", b"-7", b"x", b""]))

well_formed = st.one_of(
    sql.map(query),
    st.builds(parse, names, sql, st.lists(st.sampled_from([0, 23, 25, 1]), max_size=3)),
    st.builds(
        bind,
        names,
        names,
        st.lists(param, max_size=3),
        st.lists(st.sampled_from([0, 1]), max_size=2),
    ),
    st.builds(describe, st.sampled_from(["S", "P"]), names),
    st.builds(execute, names, st.sampled_from([0, 1, 2])),
    st.builds(close, st.sampled_from(["S", "P"]), names),
    st.just(sync()),
    st.just(flush()),
    st.just(terminate()),
    st.just(message(b"d", b"1\t2\n")),  # CopyData outside COPY
    st.just(message(b"c")),  # CopyDone outside COPY
    st.just(message(b"f", b"oops\x00")),  # CopyFail outside COPY
)

preamble = st.sampled_from([b"", ssl_request(), gssenc_request(), gssenc_request() + ssl_request()])


# A stream is (opening, rest): the opening is sent first and answered (up to
# ReadyForQuery, or the proxy closing) before the rest goes, like a real client that waits
# for the end of authentication; the proxy refuses messages sent before that (08P01).

Stream = tuple[bytes, bytes]


@st.composite
def valid_then_messages(draw: st.DrawFn) -> Stream:
    start = draw(preamble) + startup_message(STARTUP)
    messages = draw(st.lists(st.one_of(well_formed, raw_message()), min_size=1, max_size=12))
    return start, b"".join(messages)


@st.composite
def garbage_around_startup(draw: st.DrawFn) -> Stream:
    before = draw(st.binary(max_size=64))
    after = draw(st.binary(max_size=256))
    return before + startup_message(STARTUP), after


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """`seed` (a recorded session) with a few mutations applied."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 5))):
        size = len(data)
        if size == 0:
            break
        pos = draw(st.integers(0, size - 1))
        kind = draw(
            st.sampled_from(["flip", "truncate", "duplicate", "delete", "insert", "length"])
        )
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "duplicate":
            chunk = data[pos : pos + draw(st.integers(1, 64))]
            at = draw(st.integers(0, size))
            data[at:at] = chunk
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:  # overwrite four bytes with a random big-endian Int32 (a "length field")
            data[pos : pos + 4] = struct.pack("!I", draw(st.integers(0, 2**32 - 1)))
    return bytes(data)


@st.composite
def mutated_session(draw: st.DrawFn, seeds: list[Stream]) -> Stream:
    """A recorded session, mutated after its opening or (less often) all through."""
    opening, rest = draw(st.sampled_from(seeds))
    if draw(st.integers(0, 3)) == 0:
        return b"", draw(mutated(opening + rest))
    return opening, draw(mutated(rest))


def handmade_session() -> Stream:
    """A valid extended-protocol session built by hand."""
    return startup_message(STARTUP), (
        query("select 1")
        + parse("s1", "select $1::int + 1", [23])
        + bind("p1", "s1", [b"41"])
        + describe("P", "p1")
        + execute("p1", 0)
        + close("S", "s1")
        + sync()
        + query("begin; select 2; commit")
        + terminate()
    )


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_proxy() -> Iterator[ProxyProcess]:
    with running_proxy() as p:
        yield p


def _split_opening(session: bytes) -> Stream:
    """Split recorded client bytes after the StartupMessage (SSLRequest etc. before it)."""
    pos = 0
    while True:
        (length, code) = struct.unpack("!II", session[pos : pos + 8])
        pos += length
        if code >> 16 == 3:
            return session[:pos], session[pos:]


@pytest.fixture(scope="module")
def recorded_session(fuzz_proxy: ProxyProcess) -> Stream:
    """What psycopg really sends for a small session (simple, prepared, pipeline, COPY)."""
    with FaultRelay(fuzz_proxy.host, fuzz_proxy.port, record=True) as relay:
        with psycopg.connect(
            host="127.0.0.1",
            port=relay.port,
            dbname="test",
            user="postgres",
            application_name=APP,
            options=OPTIONS,
            connect_timeout=10,
        ) as conn:
            conn.execute("select 1").fetchall()
            for n in range(3):
                conn.execute("select %s::int * 2", (n,), prepare=True).fetchall()
            with conn.pipeline():
                conn.execute("select %s::text", ("a",))
                conn.execute("select generate_series(1, %s)", (5,))
            conn.rollback()
            with conn.cursor().copy("copy (select 1, 'x') to stdout") as copy:
                for _ in copy:
                    pass
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("select 1/0")
            conn.rollback()
        session = b"".join(relay.recorded)
    assert session, "nothing was recorded"
    return _split_opening(session)


@pytest.fixture(scope="module")
def bystander(fuzz_proxy: ProxyProcess) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(fuzz_proxy.dsn(connect_timeout="10"), autocommit=True) as conn:
        yield conn


# --- the driver -------------------------------------------------------------------------


READY = b"Z\x00\x00\x00\x05"


def _answers(sock: socket.socket, got: bytearray, until_ready: bool) -> bool:
    """Read answers into `got` until silence (or ReadyForQuery at the end, if
    `until_ready`), within the guard; False if the proxy closed the connection."""
    start = time.monotonic()
    while time.monotonic() < start + ANSWER_GUARD:
        if until_ready and got[-6:-1] == READY:
            return True
        sock.settimeout(QUIET)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            # Waiting for a start-up to finish, only total silence for a while ends it (an
            # incomplete opening the proxy is still waiting on).
            if not until_ready or (not got and time.monotonic() > start + SILENT_OPENING):
                return True
            continue
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        got += chunk
    return True


def throw(proxy: ProxyProcess, stream: Stream, chunks: int) -> str:
    """Send the opening and wait for its answer, send the rest (in `chunks` writes), read
    what comes, half-close, and insist that the proxy then closes.  Returns how it went."""
    opening, rest = stream
    sock = socket.create_connection((proxy.host, proxy.port), timeout=ANSWER_GUARD)
    got = bytearray()
    try:
        try:
            if opening:
                sock.sendall(opening)
                if not _answers(sock, got, until_ready=True):
                    return _classify(got, "closed by proxy")
            step = max(1, len(rest) // chunks)
            for i in range(0, len(rest), step):
                sock.sendall(rest[i : i + step])
        except (BrokenPipeError, ConnectionResetError):
            return "closed while sending"
        if not _answers(sock, got, until_ready=False):
            return _classify(got, "closed by proxy")
        outcome = _classify(got, "answered")
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + CLOSE_GUARD
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"proxy kept the connection open after EOF; sent {stream!r}"
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return outcome
            if not chunk:
                return outcome
    finally:
        sock.close()


def _classify(got: bytes, how: str) -> str:
    if READY in got:
        return f"{how}, reached ReadyForQuery"
    return f"{how}, {len(got)} bytes" if got else how


def check_bystander(proxy: ProxyProcess, conn: psycopg.Connection[tuple[object, ...]]) -> None:
    assert proxy.process.poll() is None, f"proxy died:\n{proxy.log[-5000:]}"
    assert conn.execute("select 1").fetchone() == (1,)


FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,  # leave nothing behind; a failure prints its reproduction blob
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_fuzzed_frontend_streams(
    fuzz_proxy: ProxyProcess,
    recorded_session: Stream,
    bystander: psycopg.Connection[tuple[object, ...]],
) -> None:
    seeds = [recorded_session, handmade_session()]
    streams = st.one_of(
        valid_then_messages(),
        mutated_session(seeds),
        garbage_around_startup(),
        st.tuples(st.just(b""), st.binary(min_size=1, max_size=300)),
    )
    stats: Counter[str] = Counter()
    seen = 0

    @FUZZ_SETTINGS
    @given(stream=streams, chunks=st.sampled_from([1, 1, 2, 7]))
    def run(stream: bytes, chunks: int) -> None:
        nonlocal seen
        stats[throw(fuzz_proxy, stream, chunks)] += 1
        seen += 1
        if seen % BATCH == 0:
            check_bystander(fuzz_proxy, bystander)

    try:
        run()
        check_bystander(fuzz_proxy, bystander)
        assert_no_crash(fuzz_proxy)
        wait_gone(APP)  # every fuzzed session's upstream was closed
        # The fuzzing reached past start-up (it is not only testing the start-up parser).
        reached = sum(n for how, n in stats.items() if "ReadyForQuery" in how)
        assert reached >= 10, dict(stats)
    finally:
        print("fuzz outcomes:", dict(stats))
        terminate_backends(APP)


def test_recorded_session_replays_cleanly(
    fuzz_proxy: ProxyProcess, recorded_session: Stream
) -> None:
    """Unmutated, the recorded bytes are a valid session (so the mutations start from one)."""
    assert "ReadyForQuery" in throw(fuzz_proxy, recorded_session, 1)
    assert "ReadyForQuery" in throw(fuzz_proxy, handmade_session(), 1)
    assert_no_crash(fuzz_proxy)
