"""`cache.pgoutput`: real bytes captured from PostgreSQL 15 (pgoutput, proto_version 1,
``messages 'true'``), decoded whole, truncated at every length, and with trailing bytes."""

from __future__ import annotations

import pytest

from cache.pgoutput import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    PgOutputMessage,
    PrimaryKeepalive,
    Relation,
    ReplicationProtocolError,
    Truncate,
    Update,
    XLogData,
    decode_copy_data,
    decode_pgoutput,
    encode_standby_status,
    format_lsn,
    parse_lsn,
    pg_time_us,
    unix_seconds,
)

INT4, TEXT = 23, 25
CAP_T = Relation(
    16389, "public", "cap_t", "f",
    (Column("id", INT4, -1, True), Column("organization_id", TEXT, -1, True),
     Column("v", TEXT, -1, True)),
)  # fmt: skip
CAP_CHILD = Relation(
    16401, "public", "cap_child", "d",
    (Column("id", INT4, -1, True), Column("parent_id", INT4, -1, False)),
)  # fmt: skip

# (id, bytes as hex, decoded) -- captured with the SQL named in the id.
CASES: list[tuple[str, str, PgOutputMessage]] = [
    ("begin", "42000000000158ce48000304cfabb409a4000002e0",
     Begin(22597192, 849714915576228, 736)),
    ("relation-replica-identity-full",
     "52000040057075626c6963006361705f74006600030169640000000017ffffffff016f7267616e697a"
     "6174696f6e5f69640000000019ffffffff01760000000019ffffffff", CAP_T),
    ("relation-default-identity",
     "52000040117075626c6963006361705f6368696c64006400020169640000000017ffffffff00706172"
     "656e745f69640000000017ffffffff", CAP_CHILD),
    ("insert", "49000040054e0003740000000131740000000141740000000178",
     Insert(16389, (b"1", b"A", b"x"))),
    ("insert-null", "49000040054e00037400000001327400000001426e",
     Insert(16389, (b"2", b"B", None))),
    ("update-old-row", "55000040054f00037400000001317400000001417400000001784e00037400000001"
     "31740000000141740000000179",
     Update(16389, "O", (b"1", b"A", b"x"), (b"1", b"A", b"y"))),
    ("update-no-old", "55000040114e0002740000000131740000000132",
     Update(16401, "", None, (b"1", b"2"))),
    ("update-unchanged-toast", "55000040054e0003740000000131740000000141" "75",
     Update(16389, "", None, (b"1", b"A", UNCHANGED))),
    ("delete-old-row", "44000040054f00037400000001327400000001426e",
     Delete(16389, "O", (b"2", b"B", None))),
    ("delete-key-cascade", "44000040114b00027400000001316e", Delete(16401, "K", (b"1", None))),
    ("truncate-cascade", "540000000301000040050000400c00004011",
     Truncate((16389, 16396, 16401), True, False)),
    ("message-transactional",
     "4d01000000000158eca0706772656163746976652e64646c000000000364646c",
     Message(True, 22604960, "pgreactive.ddl", b"ddl")),
    ("message-non-transactional", "4d00000000000158ed106f74686572000000000178",
     Message(False, 22605072, "other", b"x")),
    ("commit", "4300000000000158e9b8000000000158ec58000304cfabb42e18",
     Commit(0, 22604216, 22604888, 849714915585560)),
]  # fmt: skip


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decode(data: str, expected: PgOutputMessage) -> None:
    assert decode_pgoutput(bytes.fromhex(data)) == expected


@pytest.mark.parametrize("data", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_truncated_and_trailing_bytes_are_refused(data: str) -> None:
    raw = bytes.fromhex(data)
    for size in range(len(raw)):
        with pytest.raises(ReplicationProtocolError):
            decode_pgoutput(raw[:size])
    with pytest.raises(ReplicationProtocolError):
        decode_pgoutput(raw + b"\x00")


@pytest.mark.parametrize(
    "data", ["", "5a", "49000040054e0001780000", "49000040055800"], ids=["empty", "unknown-tag",
    "unknown-value-kind", "bad-tuple-marker"],
)  # fmt: skip
def test_malformed(data: str) -> None:
    with pytest.raises(ReplicationProtocolError):
        decode_pgoutput(bytes.fromhex(data))


def test_copy_data_layer() -> None:
    keepalive = bytes.fromhex("6b000000000158ed10000304cfabb42ae600")
    assert decode_copy_data(keepalive) == PrimaryKeepalive(22605072, 0x304CFABB42AE6, False)
    inner = bytes.fromhex(CASES[0][1])
    xlog = b"w" + (22597192).to_bytes(8, "big") * 2 + (5).to_bytes(8, "big") + inner
    assert decode_copy_data(xlog) == XLogData(22597192, 22597192, 5, inner)
    for bad in (b"", b"k\x00", b"w\x00\x00", b"?", keepalive + b"\x00"):
        with pytest.raises(ReplicationProtocolError):
            decode_copy_data(bad)


def test_standby_status_update() -> None:
    payload = encode_standby_status(0x158ED10, 7, reply_requested=True)
    assert payload == (b"r" + (0x158ED10).to_bytes(8, "big") * 3 + (7).to_bytes(8, "big") + b"\x01")
    written = encode_standby_status(5, 0, written=9)
    assert written[1:9] == (9).to_bytes(8, "big") and written[9:17] == (5).to_bytes(8, "big")


def test_lsn_and_time() -> None:
    assert format_lsn(0x158ED10) == "0/158ED10"
    assert format_lsn((3 << 32) | 0xA) == "3/A"
    assert parse_lsn("3/A") == (3 << 32) | 0xA
    with pytest.raises(ValueError):
        parse_lsn("nope")
    assert pg_time_us(946_684_800) == 0
    assert unix_seconds(pg_time_us(1_700_000_000.5)) == 1_700_000_000.5
