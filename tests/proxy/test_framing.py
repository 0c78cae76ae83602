"""Framing: message boundaries in both byte streams, limits, and split-independence.

`FrontendReader` and `BackendScanner` must give the same messages however the stream is cut
into chunks (whole, byte by byte, at every single or double split point, at random splits),
must hold back a message until it is complete, and must turn any malformed input into a
`ProxyError` subclass and nothing else.  The streams are real bytes recorded from psycopg,
asyncpg and PostgreSQL 15 (`tests.proxy.recorded`).
"""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.codec import FRONTEND_TAGS, BackendTag
from proxy.errors import MessageTooLarge, ProtocolViolation, ProxyError
from proxy.framing import BackendScanner, FrontendReader
from tests.proxy import recorded

MAX = 1 << 20


def split_messages(stream: bytes) -> list[tuple[int, bytes]]:
    """Reference splitter for a complete tagged stream: ``(tag, payload)`` per message."""
    out = []
    pos = 0
    while pos < len(stream):
        (length,) = struct.unpack_from("!I", stream, pos + 1)
        out.append((stream[pos], stream[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    assert pos == len(stream), "recorded stream does not end on a message boundary"
    return out


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def frontend(data_chunks: list[bytes], *, startup: bool = False) -> list[tuple[int, bytes]]:
    reader = FrontendReader(MAX)
    reader.startup = startup
    out: list[tuple[int, bytes]] = []
    for chunk in data_chunks:
        out += reader.feed(chunk)
    return out


def pairs(messages: list[tuple[int, bytes, int]]) -> list[tuple[int, bytes]]:
    """Drop the end offsets the scanner reports (tested on their own below)."""
    return [(tag, payload) for tag, payload, _ in messages]


def backend(data_chunks: list[bytes], decode: set[int]) -> list[tuple[int, bytes]]:
    scanner = BackendScanner(decode)
    out: list[tuple[int, bytes]] = []
    for chunk in data_chunks:
        out += pairs(scanner.feed(chunk))
    return out


def _fe(rounds: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(fe for fe, _ in rounds)


def _be(rounds: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(be for _, be in rounds)


FRONTEND_STREAMS = {
    "psycopg-pipeline": _fe(recorded.PSYCOPG_ROUNDS),
    "asyncpg": _fe(recorded.ASYNCPG_ROUNDS),
    "copy-in-extended": _fe(recorded.COPY_IN_EXTENDED_ROUNDS),
    "suspended": _fe(recorded.SUSPENDED_ROUNDS),
}
BACKEND_STREAMS = {
    "startup-reply": recorded.STARTUP_REPLY,
    "simple-select": recorded.SIMPLE_SELECT_BE,
    "multi-statement": recorded.MULTI_STATEMENT_BE,
    "psycopg-pipeline": _be(recorded.PSYCOPG_ROUNDS),
    "asyncpg": _be(recorded.ASYNCPG_ROUNDS),
    "copy-out": recorded.COPY_OUT_SIMPLE_BE,
    "notice": recorded.NOTICE_BE,
    "deferred-error": _be(recorded.DEFERRED_AT_SYNC_ROUNDS),
}
# What the session decodes (everything but DataRow and friends), and two other sets.
SESSION_DECODE = set(b"RKSZE123nCIsGT")
DECODE_SETS = {"session": SESSION_DECODE, "only-Z": {ord("Z")}, "nothing": set()}


# --- FrontendReader: tagged mode ---------------------------------------------------------


@pytest.mark.parametrize("name", FRONTEND_STREAMS)
def test_frontend_stream_whole_bytewise_and_with_trailing_bytes(name: str) -> None:
    stream = FRONTEND_STREAMS[name]
    expected = _whole_messages(stream)
    assert frontend([stream]) == expected
    assert frontend([stream[i : i + 1] for i in range(len(stream))]) == expected
    reader = FrontendReader(MAX)
    reader.startup = False
    assert reader.feed(stream + b"Q\x00\x00\x00\x0dselect") == expected
    assert reader.pending() == b"Q\x00\x00\x00\x0dselect"
    assert reader.feed(b" 1\x00") == [(ord("Q"), b"Q\x00\x00\x00\x0dselect 1\x00")]
    assert reader.pending() == b""


def _whole_messages(stream: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(stream):
        (length,) = struct.unpack_from("!I", stream, pos + 1)
        out.append((stream[pos], stream[pos : pos + 1 + length]))
        pos += 1 + length
    return out


@pytest.mark.parametrize("name", ["asyncpg", "copy-in-extended"])
def test_frontend_stream_cut_at_every_pair_of_points(name: str) -> None:
    stream = FRONTEND_STREAMS[name]
    expected = _whole_messages(stream)
    for a, b in itertools.combinations(range(1, len(stream)), 2):
        assert frontend(chunks(stream, [a, b])) == expected, (a, b)


def test_frontend_returns_whole_messages_only() -> None:
    reader = FrontendReader(MAX)
    reader.startup = False
    sync = b"S\x00\x00\x00\x04"
    for i in range(len(sync) - 1):
        assert reader.feed(sync[i : i + 1]) == []
    assert reader.pending() == sync[:-1]
    assert reader.feed(sync[-1:]) == [(ord("S"), sync)]


@pytest.mark.parametrize("tag", [b"Z", b"T", b"\x00", b"\xff", b"q", b"G"])
def test_frontend_unknown_tag_is_a_violation_before_the_body(tag: bytes) -> None:
    reader = FrontendReader(MAX)
    reader.startup = False
    with pytest.raises(ProtocolViolation, match="invalid frontend message type") as info:
        reader.feed(tag + b"\x00\x00\x00\x04")
    assert info.value.sqlstate == "08P01"


@pytest.mark.parametrize("length", [0, 1, 2, 3, 0x80000000, 0xFFFFFFFF])
def test_frontend_length_out_of_range_is_a_violation(length: int) -> None:
    reader = FrontendReader(MAX)
    reader.startup = False
    with pytest.raises(ProtocolViolation):
        reader.feed(b"Q" + length.to_bytes(4, "big"))


SMALL = "SHCDEcfX"  # PG's PQ_SMALL_MESSAGE_LIMIT messages (postgres.c SocketBackend)
LARGE = "QPBFdp"


@pytest.mark.parametrize("tag", SMALL)
def test_small_control_messages_are_limited_to_10000_bytes(tag: str) -> None:
    """Only the header is fed: the limit is checked before any body is buffered."""
    reader = FrontendReader(MAX)
    reader.startup = False
    assert reader.feed(tag.encode() + (10000).to_bytes(4, "big")) == []
    reader = FrontendReader(MAX)
    reader.startup = False
    with pytest.raises(MessageTooLarge) as info:
        reader.feed(tag.encode() + (10001).to_bytes(4, "big"))
    assert info.value.sqlstate == "08P01"


@pytest.mark.parametrize("tag", LARGE)
def test_other_messages_are_limited_to_max_message_bytes(tag: str) -> None:
    reader = FrontendReader(50000)
    reader.startup = False
    assert reader.feed(tag.encode() + (50000).to_bytes(4, "big")) == []
    reader = FrontendReader(50000)
    reader.startup = False
    with pytest.raises(MessageTooLarge, match="over the limit of 50000"):
        reader.feed(tag.encode() + (50001).to_bytes(4, "big"))


def test_message_of_exactly_the_limit_is_returned() -> None:
    body = b"x" * 95 + b"\x00"
    query = b"Q" + (len(body) + 4).to_bytes(4, "big") + body
    reader = FrontendReader(100)
    reader.startup = False
    assert reader.feed(query) == [(ord("Q"), query)]


def test_declared_length_is_not_allocated() -> None:
    """A 1 GB declared length is accepted but only the bytes that arrived are held."""
    reader = FrontendReader(1 << 30)
    reader.startup = False
    header = b"d" + (1 << 30).to_bytes(4, "big")
    assert reader.feed(header + b"abc") == []
    assert reader.pending() == header + b"abc"


# --- FrontendReader: start-up mode --------------------------------------------------------


def test_startup_mode_returns_one_packet_at_a_time() -> None:
    """An SSLRequest with the StartupMessage pipelined behind it: the caller answers the
    first (with 'N') before asking for the next, which stays buffered until then."""
    reader = FrontendReader(MAX)
    data = recorded.SSL_REQUEST + recorded.PSYCOPG_STARTUP
    assert reader.feed(data) == [(0, recorded.SSL_REQUEST)]
    assert reader.pending() == recorded.PSYCOPG_STARTUP
    assert reader.feed(b"") == [(0, recorded.PSYCOPG_STARTUP)]
    assert reader.feed(b"") == []


def test_switch_to_tagged_mode_keeps_the_bytes_behind_the_startup_packet() -> None:
    reader = FrontendReader(MAX)
    assert reader.feed(recorded.PSYCOPG_STARTUP + recorded.SIMPLE_SELECT_FE[:7]) == [
        (0, recorded.PSYCOPG_STARTUP)
    ]
    reader.startup = False
    assert reader.feed(recorded.SIMPLE_SELECT_FE[7:]) == [(ord("Q"), recorded.SIMPLE_SELECT_FE)]


@pytest.mark.parametrize("length", [0, 4, 7, 10005, 0x7FFFFFFF, 0xFFFFFFFF])
def test_startup_length_out_of_range_is_a_violation_after_four_bytes(length: int) -> None:
    reader = FrontendReader(MAX)
    with pytest.raises(ProtocolViolation, match="invalid length of startup packet"):
        reader.feed(length.to_bytes(4, "big"))


def test_startup_body_of_10000_bytes_is_accepted() -> None:
    """PG's ProcessStartupPacket subtracts the length word before comparing with 10000."""
    body = (3 << 16).to_bytes(4, "big") + b"options\x00" + b"x" * (10000 - 4 - 8 - 2) + b"\x00\x00"
    packet = (len(body) + 4).to_bytes(4, "big") + body
    assert len(packet) == 10004
    assert frontend([packet], startup=True) == [(0, packet)]


# --- BackendScanner ------------------------------------------------------------------------


def _expected(stream: bytes, decode: set[int]) -> list[tuple[int, bytes]]:
    return [(tag, payload) for tag, payload in split_messages(stream) if tag in decode]


def test_simple_select_keeps_row_description_and_tags_skips_data_rows() -> None:
    scanner = BackendScanner(SESSION_DECODE)
    assert pairs(scanner.feed(recorded.SIMPLE_SELECT_BE)) == [
        (BackendTag.ROW_DESCRIPTION, recorded.SIMPLE_SELECT_BE[5:47]),
        (BackendTag.COMMAND_COMPLETE, b"SELECT 1\x00"),
        (BackendTag.READY_FOR_QUERY, b"I"),
    ]
    assert scanner.at_boundary()


@pytest.mark.parametrize("decode", DECODE_SETS)
@pytest.mark.parametrize("name", BACKEND_STREAMS)
def test_backend_stream_whole_bytewise_and_with_trailing_bytes(name: str, decode: str) -> None:
    stream, wanted = BACKEND_STREAMS[name], DECODE_SETS[decode]
    expected = _expected(stream, wanted)
    assert backend([stream], wanted) == expected
    assert backend([stream[i : i + 1] for i in range(len(stream))], wanted) == expected
    scanner = BackendScanner(wanted)
    assert pairs(scanner.feed(stream + b"Z\x00\x00\x00")) == expected
    assert not scanner.at_boundary()
    assert pairs(scanner.feed(b"\x05T")) == ([(ord("Z"), b"T")] if ord("Z") in wanted else [])
    assert scanner.at_boundary()


@pytest.mark.parametrize("name", ["simple-select", "asyncpg", "notice"])
def test_backend_stream_cut_at_every_pair_of_points(name: str) -> None:
    stream = BACKEND_STREAMS[name]
    expected = _expected(stream, SESSION_DECODE)
    for a, b in itertools.combinations(range(1, len(stream)), 2):
        assert backend(chunks(stream, [a, b]), SESSION_DECODE) == expected, (a, b)


def test_payloads_are_bytes_even_when_reassembled() -> None:
    stream = recorded.SIMPLE_SELECT_BE
    for piece in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        assert all(type(p) is bytes for _, p in backend(piece, SESSION_DECODE))


def test_at_boundary_tracks_skipped_and_decoded_messages() -> None:
    scanner = BackendScanner({ord("C")})
    assert scanner.at_boundary()
    data_row = b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x011"
    assert pairs(scanner.feed(data_row[:7])) == []
    assert not scanner.at_boundary()  # inside a skipped DataRow
    assert pairs(scanner.feed(data_row[7:] + b"C\x00\x00\x00\rSEL")) == []
    assert not scanner.at_boundary()  # inside a decoded CommandComplete
    assert pairs(scanner.feed(b"ECT 1\x00")) == [(ord("C"), b"SELECT 1\x00")]
    assert scanner.at_boundary()
    assert pairs(scanner.feed(b"")) == [] and scanner.at_boundary()


def test_huge_skipped_message_streams_through() -> None:
    """A 1 MB DataRow is skipped by length, in chunks, and what follows is still found."""
    body = b"\x00\x01" + (1 << 20).to_bytes(4, "big") + b"r" * (1 << 20)
    row = b"D" + (len(body) + 4).to_bytes(4, "big") + body
    stream = row + b"C\x00\x00\x00\rSELECT 1\x00Z\x00\x00\x00\x05I"
    scanner = BackendScanner(SESSION_DECODE)
    out = []
    for i in range(0, len(stream), 65536):
        out += pairs(scanner.feed(stream[i : i + 65536]))
        if i + 65536 < len(row):
            assert not scanner.at_boundary()
    assert out == [(ord("C"), b"SELECT 1\x00"), (ord("Z"), b"I")]
    assert scanner.at_boundary()


@pytest.mark.parametrize("decoded", [True, False], ids=["decoded-tag", "skipped-tag"])
@pytest.mark.parametrize("split", [None, 1, 3], ids=["whole", "split-at-1", "split-at-3"])
@pytest.mark.parametrize("length", [0, 3])
def test_backend_length_below_four_is_a_violation(
    length: int, split: int | None, decoded: bool
) -> None:
    scanner = BackendScanner({ord("Z")} if decoded else set())
    bad = b"Z" + length.to_bytes(4, "big") + b"I"
    stream = b"Z\x00\x00\x00\x05I" + bad
    with pytest.raises(ProtocolViolation):
        for piece in chunks(stream, [] if split is None else [6 + split]):
            scanner.feed(piece)


# --- hypothesis: split-independence and garbage -------------------------------------------

_backend_tags = st.sampled_from(sorted({int(t) for t in BackendTag}))
_messages = st.lists(st.tuples(_backend_tags, st.binary(max_size=40)), max_size=12)


def _encode(messages: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes((t,)) + (len(p) + 4).to_bytes(4, "big") + p for t, p in messages)


@settings(max_examples=300, deadline=None)
@given(
    messages=_messages,
    decode=st.sets(_backend_tags),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_backend_any_split_gives_the_same_messages(
    messages: list[tuple[int, bytes]], decode: set[int], cuts: list[int]
) -> None:
    stream = _encode(messages)
    cuts = [c % (len(stream) + 1) for c in cuts]
    scanner = BackendScanner(decode)
    out: list[tuple[int, bytes]] = []
    for piece in chunks(stream, cuts):
        out += pairs(scanner.feed(piece))
    assert out == [(t, p) for t, p in messages if t in decode]
    assert scanner.at_boundary()


_frontend_tags = st.sampled_from(sorted(FRONTEND_TAGS))


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(st.tuples(_frontend_tags, st.binary(max_size=40)), max_size=12),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_frontend_any_split_gives_the_same_messages(
    messages: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = _encode(messages)
    cuts = [c % (len(stream) + 1) for c in cuts]
    expected = [(t, _encode([(t, p)])) for t, p in messages]
    reader = FrontendReader(MAX)
    reader.startup = False
    out: list[tuple[int, bytes]] = []
    for piece in chunks(stream, cuts):
        out += reader.feed(piece)
    assert out == expected
    assert reader.pending() == b""


@settings(max_examples=300, deadline=None)
@given(garbage=st.lists(st.binary(max_size=30), max_size=6), startup=st.booleans())
def test_frontend_garbage_raises_only_proxy_errors(garbage: list[bytes], startup: bool) -> None:
    reader = FrontendReader(10000)
    reader.startup = startup
    with contextlib.suppress(ProxyError):
        for piece in garbage:
            for _, raw in reader.feed(piece):
                assert len(raw) >= (8 if startup else 5)


@settings(max_examples=300, deadline=None)
@given(garbage=st.lists(st.binary(max_size=30), max_size=6), decode=st.sets(st.integers(0, 255)))
def test_backend_garbage_raises_only_proxy_errors(garbage: list[bytes], decode: set[int]) -> None:
    scanner = BackendScanner(decode)
    with contextlib.suppress(ProxyError):
        for piece in garbage:
            for tag, *_ in scanner.feed(piece):
                assert tag in decode


def test_scanner_reports_where_each_message_ends_in_its_chunk() -> None:
    """End offsets let the session cut the stream at a message (hidden replies, barriers)."""
    stream = recorded.SIMPLE_SELECT_BE
    scanner = BackendScanner(SESSION_DECODE)
    for tag, payload, end in scanner.feed(stream):
        assert stream[end - 5 - len(payload)] == tag
        assert stream[end - len(payload) : end] == payload
    cut = len(stream) - 3  # ReadyForQuery split across two chunks
    scanner = BackendScanner(SESSION_DECODE)
    first = scanner.feed(stream[:cut])
    assert [t for t, _, _ in first] == [ord("T"), ord("C")]
    assert scanner.feed(stream[cut:]) == [(ord("Z"), b"I", 3)]
