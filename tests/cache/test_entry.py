"""cache.entry: the stored blob (format version, zlib) and `limit_rows`, which replays a whole
cached result as the reply to an Execute with a row limit.

Messages are built with `proxy.codec.message` from real layouts; PortalSuspended is built
here too, not taken from the module under test.
"""

from __future__ import annotations

import random
import zlib

import pytest

from cache import entry
from proxy.codec import BackendTag, message

P = pytest.param


# --- encode / decode ------------------------------------------------------------------


def _text(size: int) -> bytes:
    """Compressible bytes of `size`: a repeated DataRow-like pattern."""
    unit = b"D\x00\x00\x00\x12\x00\x01\x00\x00\x00\x08agent-42"
    return (unit * (size // len(unit) + 1))[:size]


def _noise(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.mark.parametrize(
    ("body", "compressed"),
    [
        P(b"", False, id="empty"),
        P(b"C\x00\x00\x00\x0dSELECT 0\x00", False, id="small"),
        P(_text(entry.COMPRESS_ABOVE), False, id="exactly-threshold"),
        P(_text(entry.COMPRESS_ABOVE + 1), True, id="threshold-plus-one"),
        P(_text(1_000_000), True, id="large-compressible"),
        P(_noise(200_000), True, id="large-incompressible"),
    ],
)
def test_round_trip(body: bytes, compressed: bool) -> None:
    blob = entry.encode(body)
    assert blob[0] == entry.FORMAT_VERSION
    assert blob[1] == (1 if compressed else 0)
    if compressed:
        assert zlib.decompress(blob[2:]) == body
    else:
        assert blob[2:] == body
    assert entry.decode(blob) == body


def test_large_compressible_body_is_smaller() -> None:
    body = _text(1_000_000)
    assert len(entry.encode(body)) < len(body) // 10


def _corrupt(blob: bytes) -> bytes:
    mid = len(blob) // 2
    return blob[:mid] + bytes((blob[mid] ^ 0xFF,)) + blob[mid + 1 :]


LARGE = entry.encode(_text(200_000))


@pytest.mark.parametrize(
    "blob",
    [
        P(b"", id="empty-blob"),
        P(b"\x01", id="version-only"),
        P(b"\x00\x00body", id="version-0"),
        P(bytes((entry.FORMAT_VERSION + 1, 0)) + b"body", id="next-version"),
        P(b"\xff\x00body", id="version-255"),
        P(bytes((entry.FORMAT_VERSION, 2)) + b"body", id="unknown-flags"),
        P(bytes((entry.FORMAT_VERSION, 1)) + b"not zlib at all", id="zlib-garbage"),
        P(bytes((entry.FORMAT_VERSION, 1)), id="zlib-empty-stream"),
        P(LARGE[: len(LARGE) // 2], id="zlib-truncated"),
        P(_corrupt(LARGE), id="zlib-flipped-byte"),
        P(bytes((entry.FORMAT_VERSION + 1,)) + LARGE[1:], id="compressed-unknown-version"),
    ],
)
def test_decode_unreadable_is_a_miss(blob: bytes) -> None:
    assert entry.decode(blob) is None


# --- limit_rows -----------------------------------------------------------------------


def _row_description() -> bytes:
    """RowDescription for one int4 column `id` (table 16384, attnum 1), text format."""
    field = b"id\x00" + (16384).to_bytes(4, "big") + (1).to_bytes(2, "big")
    field += (23).to_bytes(4, "big") + (4).to_bytes(2, "big") + (-1).to_bytes(4, "big", signed=True)
    field += (0).to_bytes(2, "big")
    return message(BackendTag.ROW_DESCRIPTION, (1).to_bytes(2, "big") + field)


def _data_row(value: bytes | None) -> bytes:
    col = b"\xff\xff\xff\xff" if value is None else len(value).to_bytes(4, "big") + value
    return message(BackendTag.DATA_ROW, (1).to_bytes(2, "big") + col)


def _command_complete(count: int) -> bytes:
    return message(BackendTag.COMMAND_COMPLETE, f"SELECT {count}".encode() + b"\x00")


RD = _row_description()
SUSPENDED = message(BackendTag.PORTAL_SUSPENDED)
# Values chosen to look like message tags and lengths, and one longer than 255 bytes,
# so that a scan by byte value instead of by length would go wrong.
VALUES: list[bytes | None] = [
    b"1",
    b"C\x00\x00\x00\x04",
    None,
    b"D" * 300,
    b"s\x00\x00\x00\x04C",
    b"",
    b"7",
]


def _rows(n: int) -> list[bytes]:
    return [_data_row(VALUES[i % len(VALUES)]) for i in range(n)]


def _result(n: int, *, described: bool) -> bytes:
    return (RD if described else b"") + b"".join(_rows(n)) + _command_complete(n)


LIMIT_CASES = [
    # (rows in the cached result, max_rows, rows sent before PortalSuspended or None when
    # the whole result with its CommandComplete is sent)
    P(0, 3, None, id="no-rows"),
    P(2, 3, None, id="fewer-than-limit"),
    P(3, 3, 3, id="exactly-limit"),
    P(1, 1, 1, id="exactly-limit-one"),
    P(7, 3, 3, id="more-than-limit"),
    P(7, 1, 1, id="limit-one"),
    P(7, 6, 6, id="one-more-than-limit"),
    P(7, 0, None, id="limit-zero-means-all"),
    P(7, -1, None, id="negative-limit-means-all"),
    P(0, 0, None, id="no-rows-limit-zero"),
    P(3, 1000, None, id="limit-far-above"),
]


@pytest.mark.parametrize("described", [P(True, id="with-rd"), P(False, id="without-rd")])
@pytest.mark.parametrize(("rows", "max_rows", "suspended_after"), LIMIT_CASES)
def test_limit_rows(rows: int, max_rows: int, suspended_after: int | None, described: bool) -> None:
    body = _result(rows, described=described)
    if suspended_after is None:
        want = body
    else:
        want = (RD if described else b"") + b"".join(_rows(suspended_after)) + SUSPENDED
    assert entry.limit_rows(body, max_rows) == want


def test_portal_suspended_constant_is_the_wire_message() -> None:
    assert entry.PORTAL_SUSPENDED == SUSPENDED == b"s\x00\x00\x00\x04"


def test_limit_rows_keeps_the_original_command_tag() -> None:
    body = RD + b"".join(_rows(2)) + _command_complete(2)
    assert entry.limit_rows(body, 5).endswith(_command_complete(2))
