"""Codec: decoders and encoders of the pure protocol core, driven by real wire bytes.

Modelled on h11's ``test_io.py``: tables of (message, bytes) cases drive both directions.
Every frontend case is fed through `FrontendReader` whole, one byte at a time and with the
start of another message behind it, and the payload it returns must decode to the expected
message; every strict prefix of a payload, and every payload with a byte too many, must be a
protocol violation (08P01).  Backend cases go the same way through `BackendScanner`.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import codec
from proxy.codec import (
    Bind,
    CancelRequest,
    Close,
    Describe,
    Execute,
    GSSENCRequest,
    Parse,
    SSLRequest,
    StartupMessage,
    TxnStatus,
)
from proxy.errors import (
    MessageTooLarge,
    ProtocolViolation,
    ProxyError,
    ShuttingDown,
    UpstreamUnavailable,
)
from proxy.framing import BackendScanner, FrontendReader
from tests.proxy import recorded

MAX = 1 << 20
TRAILING = b"S\x00\x00"  # the first bytes of a Sync that has not fully arrived


def feed_modes(data: bytes) -> dict[str, list[bytes]]:
    """The three ways every input is fed: whole, byte by byte, and with trailing bytes."""
    return {
        "whole": [data],
        "bytewise": [data[i : i + 1] for i in range(len(data))],
        "trailing": [data + TRAILING],
    }


FEED_MODES = ["whole", "bytewise", "trailing"]


def read_frontend(
    data: bytes, mode: str, *, startup: bool
) -> tuple[list[tuple[int, bytes]], bytes]:
    reader = FrontendReader(MAX)
    reader.startup = startup
    out: list[tuple[int, bytes]] = []
    for chunk in feed_modes(data)[mode]:
        out += reader.feed(chunk)
    return out, reader.pending()


# --- frontend messages: (id, raw message, expected decoded value) ----------------------

DECODERS: dict[int, Callable[[bytes], Any]] = {
    ord("Q"): codec.decode_query,
    ord("P"): codec.decode_parse,
    ord("B"): codec.decode_bind,
    ord("D"): codec.decode_describe,
    ord("E"): codec.decode_execute,
    ord("C"): codec.decode_close,
}

FRONTEND_CASES: list[tuple[str, bytes, object]] = [
    ("query-psycopg", recorded.SIMPLE_SELECT_FE, "select 1 as a, 'x'::text as b"),
    ("query-empty", b"Q\x00\x00\x00\x05\x00", ""),
    ("query-utf8", b"Q\x00\x00\x00\x10select '\xc3\xa9'\x00", "select 'é'"),
    (
        "parse-asyncpg-named-no-oids",
        b"P\x00\x00\x00=__asyncpg_stmt_1__\x00select $1::int4 as i, $2::text as t\x00\x00\x00",
        Parse("__asyncpg_stmt_1__", "select $1::int4 as i, $2::text as t", ()),
    ),
    (
        "parse-psycopg-oids",
        b"P\x00\x00\x00)_pg3_0\x00select $1::int8, $2\x00\x00\x02\x00\x00\x00\x15\x00\x00\x00\x00",
        Parse("_pg3_0", "select $1::int8, $2", (21, 0)),
    ),
    (
        "parse-unnamed-oid-0",
        b"P\x00\x00\x00\x15\x00select $1\x00\x00\x01\x00\x00\x00\x00",
        Parse("", "select $1", (0,)),
    ),
    (
        "parse-oid-above-2**31",
        b"P\x00\x00\x00\x15\x00select $1\x00\x00\x01\xff\xff\xff\xfe",
        Parse("", "select $1", (4294967294,)),
    ),
    (
        "bind-asyncpg-binary-null",
        b"B\x00\x00\x000\x00__asyncpg_stmt_1__\x00\x00\x02\x00\x01\x00\x01\x00\x02\x00\x00\x00\x04"
        b"\x00\x00\x00\x05\xff\xff\xff\xff\x00\x01\x00\x01",
        Bind("", "__asyncpg_stmt_1__", (1, 1), (b"\x00\x00\x00\x05", None), (1,)),
    ),
    (
        "bind-psycopg-mixed-formats",
        b'B\x00\x00\x00"\x00_pg3_0\x00\x00\x02\x00\x01\x00\x00\x00\x02\x00\x00\x00\x02\x00\x07'
        b"\xff\xff\xff\xff\x00\x01\x00\x01",
        Bind("", "_pg3_0", (1, 0), (b"\x00\x07", None), (1,)),
    ),
    (
        "bind-text-param",
        b"B\x00\x00\x00\x15\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01a\x00\x01\x00\x00",
        Bind("", "", (0,), (b"a",), (0,)),
    ),
    (
        "bind-no-params",
        b"B\x00\x00\x00\x0e\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00",
        Bind("", "", (), (), (0,)),
    ),
    (
        "bind-empty-value-is-not-null",
        b"B\x00\x00\x00\x12p\x00s\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00",
        Bind("p", "s", (), (b"",), ()),
    ),
    (
        "describe-statement",
        b"D\x00\x00\x00\x18S__asyncpg_stmt_1__\x00",
        Describe("S", "__asyncpg_stmt_1__"),
    ),
    ("describe-unnamed-portal", b"D\x00\x00\x00\x06P\x00", Describe("P", "")),
    ("execute-unnamed-unlimited", b"E\x00\x00\x00\t\x00\x00\x00\x00\x00", Execute("", 0)),
    ("execute-named-max-rows", b"E\x00\x00\x00\np\x00\x00\x00\x00\x02", Execute("p", 2)),
    ("close-statement", b"C\x00\x00\x00\x0cS_pg3_0\x00", Close("S", "_pg3_0")),
    ("close-unnamed-portal", b"C\x00\x00\x00\x06P\x00", Close("P", "")),
]
FRONTEND_IDS = [case[0] for case in FRONTEND_CASES]


@pytest.mark.parametrize("mode", FEED_MODES)
@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in FRONTEND_CASES], ids=FRONTEND_IDS)
def test_frontend_message_framed_and_decoded(raw: bytes, expected: object, mode: str) -> None:
    messages, rest = read_frontend(raw, mode, startup=False)
    assert messages == [(raw[0], raw)]
    assert rest == (TRAILING if mode == "trailing" else b"")
    assert DECODERS[raw[0]](messages[0][1][5:]) == expected


@pytest.mark.parametrize("raw", [c[1] for c in FRONTEND_CASES], ids=FRONTEND_IDS)
def test_frontend_payload_truncated_anywhere_is_a_violation(raw: bytes) -> None:
    payload = raw[5:]
    for cut in range(len(payload)):
        with pytest.raises(ProtocolViolation) as info:
            DECODERS[raw[0]](payload[:cut])
        assert info.value.sqlstate == "08P01"


@pytest.mark.parametrize("raw", [c[1] for c in FRONTEND_CASES], ids=FRONTEND_IDS)
def test_frontend_payload_with_a_byte_too_many_is_a_violation(raw: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="trailing bytes"):
        DECODERS[raw[0]](raw[5:] + b"\x00")


@pytest.mark.parametrize(
    ("decoder", "payload", "message"),
    [
        (codec.decode_describe, b"X\x00", "invalid DESCRIBE message subtype 88"),
        (codec.decode_close, b"s\x00", "invalid CLOSE message subtype 115"),
        (codec.decode_bind, b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00", "too short"),
        (codec.decode_bind, b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05ab\x00\x00", "too short"),
    ],
    ids=["describe-kind", "close-kind", "bind-length-minus-2", "bind-overrun"],
)
def test_frontend_malformed_payload(
    decoder: Callable[[bytes], object], payload: bytes, message: str
) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        decoder(payload)


def test_query_in_another_client_encoding_is_kept_not_refused() -> None:
    """A LATIN1 client sends non-UTF-8 bytes: relayed, and recoverable byte for byte."""
    text = codec.decode_query(b"select '\xe9'\x00")
    assert text.encode("utf-8", "surrogateescape") == b"select '\xe9'"


def test_parse_and_bind_counts_are_unsigned_like_postgres() -> None:
    """PG reads Int16 counts with pq_getmsgint(msg, 2), i.e. 0..65535; libpq sends up to
    65535 parameters.  A bulk INSERT with 40000 parameters is valid and was recorded as
    working against PostgreSQL 15 (a signed read made it a "negative count")."""
    n = 40000
    parse_payload = b"\x00select\x00" + struct.pack("!H", n) + b"\x00\x00\x00\x17" * n
    assert codec.decode_parse(parse_payload).param_oids == (23,) * n
    bind_payload = (
        b"\x00\x00"
        + struct.pack("!H", n)
        + b"\x00\x00" * n
        + struct.pack("!H", n)
        + b"\x00\x00\x00\x011" * n
        + b"\x00\x00"
    )
    bind = codec.decode_bind(bind_payload)
    assert len(bind.param_formats) == n and bind.params == (b"1",) * n
    assert bind.result_formats == ()


# --- start-up packets: (id, raw packet, decoded) drive decode and encode ----------------

STARTUP_CASES: list[tuple[str, bytes, codec.StartupPacket]] = [
    (
        "psycopg-startup",
        recorded.PSYCOPG_STARTUP,
        StartupMessage(3, 0, {"user": "alice", "database": "shop", "application_name": "app1"}),
    ),
    (
        "asyncpg-startup",
        recorded.ASYNCPG_STARTUP,
        StartupMessage(
            3, 0, {"client_encoding": "'utf-8'", "user": "postgres", "database": "test"}
        ),
    ),
    (
        "protocol-3.2-with-option",
        b"\x00\x00\x00%\x00\x03\x00\x02user\x00u\x00_pq_.opt\x00on\x00options\x00\x00\x00",
        StartupMessage(3, 2, {"user": "u", "_pq_.opt": "on", "options": ""}),
    ),
    ("no-parameters", b"\x00\x00\x00\x09\x00\x03\x00\x00\x00", StartupMessage(3, 0, {})),
    (
        "cancel-4-byte-key",
        b"\x00\x00\x00\x10\x04\xd2\x16.\x00\x00'G\x9d\xbd\x11\"",
        CancelRequest(10055, b'\x9d\xbd\x11"'),
    ),
    (
        "cancel-32-byte-key",
        b"\x00\x00\x00\x2c\x04\xd2\x16.\x00\x00\x00\x07" + bytes(range(32)),
        CancelRequest(7, bytes(range(32))),
    ),
    (
        "cancel-256-byte-key",
        b"\x00\x00\x01\x0c\x04\xd2\x16.\x00\x00\x00\x07" + b"k" * 256,
        CancelRequest(7, b"k" * 256),
    ),
]
STARTUP_IDS = [case[0] for case in STARTUP_CASES]


@pytest.mark.parametrize("mode", FEED_MODES)
@pytest.mark.parametrize(
    ("raw", "expected"),
    [c[1:] for c in STARTUP_CASES]
    + [(recorded.SSL_REQUEST, SSLRequest())]
    + [(recorded.GSSENC_REQUEST, GSSENCRequest())],
    ids=[*STARTUP_IDS, "ssl-request", "gssenc-request"],
)
def test_startup_packet_framed_and_decoded(
    raw: bytes, expected: codec.StartupPacket, mode: str
) -> None:
    packets, rest = read_frontend(raw, mode, startup=True)
    assert packets == [(0, raw)]
    assert rest == (TRAILING if mode == "trailing" else b"")
    assert codec.decode_startup(raw[4:]) == expected


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in STARTUP_CASES], ids=STARTUP_IDS)
def test_startup_packet_encoded(raw: bytes, expected: codec.StartupPacket) -> None:
    match expected:
        case StartupMessage():
            assert codec.encode_startup(expected) == raw
        case CancelRequest(pid=pid, secret=secret):
            assert codec.encode_cancel_request(pid, secret) == raw


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "invalid length of startup packet"),
        (b"\x00\x03\x00", "invalid length of startup packet"),
        (b"\x04\xd2\x16.\x00\x00\x00\x07", "cancel request"),  # no key at all
        (b"\x04\xd2\x16.\x00\x00\x00\x07abc", "cancel request"),  # 3-byte key
        (b"\x04\xd2\x16.\x00\x00\x00\x07" + b"k" * 257, "cancel request"),
        (b"\x04\xd2\x16.\x00\x00", "cancel request"),  # pid cut short
        (b"\x00\x02\x00\x00user\x00u\x00\x00", "unsupported frontend protocol 2.0"),
        (b"\x00\x04\x00\x00user\x00u\x00\x00", "unsupported frontend protocol 4.0"),
        (b"\x04\xd2\x161", "unsupported frontend protocol 1234.5681"),
        (b"\x00\x03\x00\x00", "not terminated"),
        (b"\x00\x03\x00\x00user\x00u\x00", "not terminated"),
        (b"\x00\x03\x00\x00user\x00\x00", "name without a value"),
        (b"\x00\x03\x00\x00\x00\x00", "name without a value"),
        (b"\x00\x03\x00\x00\x00u\x00\x00", "expected terminator as last byte"),
        (b"\x00\x03\x00\x00user\x00\xff\x00\x00", "not valid UTF-8"),
    ],
    ids=[
        "empty",
        "short-code",
        "cancel-no-key",
        "cancel-3-byte-key",
        "cancel-257-byte-key",
        "cancel-short-pid",
        "protocol-2",
        "protocol-4",
        "unknown-request-code",
        "version-only",
        "unterminated",
        "name-without-value",
        "lone-terminators",
        "empty-name",
        "not-utf8",
    ],
)
def test_startup_packet_rejected(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message) as info:
        codec.decode_startup(payload)
    # Postgres answers an unsupported major version with feature_not_supported.
    expected = "0A000" if "unsupported frontend protocol" in message else "08P01"
    assert info.value.sqlstate == expected


def test_startup_parameter_with_empty_value_is_kept() -> None:
    assert codec.decode_startup(b"\x00\x03\x00\x00user\x00\x00\x00") == StartupMessage(
        3, 0, {"user": ""}
    )


_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1)
_values = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))


@given(st.dictionaries(_names, _values, max_size=6), st.integers(0, 0xFFFF))
def test_startup_message_round_trips(parameters: dict[str, str], minor: int) -> None:
    message = StartupMessage(3, minor, parameters)
    raw = codec.encode_startup(message)
    assert int.from_bytes(raw[:4], "big") == len(raw)
    assert codec.decode_startup(raw[4:]) == message


@given(st.integers(0, 2**32 - 1), st.binary(min_size=4, max_size=256))
def test_cancel_request_round_trips(pid: int, secret: bytes) -> None:
    raw = codec.encode_cancel_request(pid, secret)
    assert codec.decode_startup(raw[4:]) == CancelRequest(pid, secret)


def _bind_bytes(bind: Bind) -> bytes:
    """Bind payload built independently of the decoder, field by field as the docs list."""
    out = bind.portal.encode() + b"\x00" + bind.statement.encode() + b"\x00"
    out += struct.pack(
        f"!H{len(bind.param_formats)}h", len(bind.param_formats), *bind.param_formats
    )
    out += struct.pack("!H", len(bind.params))
    for value in bind.params:
        out += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    out += struct.pack(
        f"!H{len(bind.result_formats)}h", len(bind.result_formats), *bind.result_formats
    )
    return out


_formats = st.lists(st.sampled_from([0, 1]), max_size=4).map(tuple)


@given(
    st.builds(
        Bind,
        _values,
        _values,
        _formats,
        st.lists(st.none() | st.binary(max_size=20), max_size=5).map(tuple),
        _formats,
    )
)
def test_bind_decodes_what_a_driver_encodes(bind: Bind) -> None:
    assert codec.decode_bind(_bind_bytes(bind)) == bind


ALL_DECODERS: list[Callable[[bytes], object]] = [
    codec.decode_startup,
    codec.decode_query,
    codec.decode_parse,
    codec.decode_bind,
    codec.decode_describe,
    codec.decode_execute,
    codec.decode_close,
    codec.decode_parameter_status,
    codec.decode_command_tag,
    codec.decode_error_fields,
    codec.decode_backend_key_data,
    codec.auth_code,
    codec.decode_sasl_initial_response,
    codec.sasl_mechanisms,
]


@pytest.mark.parametrize("decoder", ALL_DECODERS, ids=lambda d: d.__name__)
@given(payload=st.binary(max_size=64))
def test_garbage_payload_raises_only_protocol_violation(
    decoder: Callable[[bytes], object], payload: bytes
) -> None:
    with contextlib.suppress(ProtocolViolation):
        decoder(payload)


# --- backend messages the proxy reads -----------------------------------------------------


def _scan_all(data: bytes, decode: set[int], mode: str) -> list[tuple[int, bytes]]:
    scanner = BackendScanner(decode)
    out: list[tuple[int, bytes]] = []
    for chunk in feed_modes(data)[mode]:
        out += [(t, p) for t, p, _ in scanner.feed(chunk)]
    assert scanner.at_boundary() is (mode != "trailing")
    return out


@pytest.mark.parametrize("mode", FEED_MODES)
def test_startup_reply_parameter_status_and_backend_key_data(mode: str) -> None:
    decode = {ord("R"), ord("S"), ord("K"), ord("Z")}
    messages = _scan_all(recorded.STARTUP_REPLY, decode, mode)
    assert [chr(tag) for tag, _ in messages] == ["R"] + ["S"] * 13 + ["K", "Z"]
    assert codec.auth_code(messages[0][1]) == codec.AuthCode.OK
    params = dict(codec.decode_parameter_status(p) for t, p in messages if t == ord("S"))
    assert params["server_version"] == "15.20 (Debian 15.20-0+deb12u1)"
    assert params["application_name"] == ""
    assert params["DateStyle"] == "ISO, MDY"
    assert codec.decode_backend_key_data(messages[-2][1]) == (10055, b'\x9d\xbd\x11"')
    assert TxnStatus(messages[-1][1][0]) is TxnStatus.IDLE


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x00\x00\x00\x00", codec.AuthCode.OK),
        (b"\x00\x00\x00\x03", codec.AuthCode.CLEARTEXT_PASSWORD),
        (b"\x00\x00\x00\x05\x8a\x12\x0e\x01", codec.AuthCode.MD5_PASSWORD),
        (b"\x00\x00\x00\nSCRAM-SHA-256\x00\x00", codec.AuthCode.SASL),
        (b"\x00\x00\x00\x0br=abc,s=xyz,i=4096", codec.AuthCode.SASL_CONTINUE),
        (b"\x00\x00\x00\x0cv=sig", codec.AuthCode.SASL_FINAL),
    ],
    ids=["ok", "cleartext", "md5", "sasl", "sasl-continue", "sasl-final"],
)
def test_auth_code(payload: bytes, expected: codec.AuthCode) -> None:
    assert codec.auth_code(payload) == expected


# Postgres 15 on a TLS connection; libpq's SASLInitialResponse there without -PLUS offered.
SASL_OFFER_TLS = b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"
SASL_INITIAL_Y = b"SCRAM-SHA-256\x00\x00\x00\x00\x20y,,n=,r=3RxK8bIJhd1ck2Ax5S4cMmHs"


def test_sasl_offer_without_plus_is_re_encoded() -> None:
    assert codec.sasl_mechanisms(SASL_OFFER_TLS[5:]) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    stripped = codec.authentication_sasl(["SCRAM-SHA-256"])
    assert stripped == b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"
    assert codec.sasl_mechanisms(stripped[5:]) == ["SCRAM-SHA-256"]


def test_sasl_initial_response_gives_the_gs2_flag() -> None:
    mechanism, data = codec.decode_sasl_initial_response(SASL_INITIAL_Y)
    assert (mechanism, data[:3]) == ("SCRAM-SHA-256", b"y,,")
    # A length of -1: no initial data.
    assert codec.decode_sasl_initial_response(b"X\x00\xff\xff\xff\xff") == ("X", b"")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"SELECT 1\x00", "SELECT 1"),
        (b"INSERT 0 1\x00", "INSERT 0 1"),
        (b"COPY 2\x00", "COPY 2"),
        (b"DEALLOCATE ALL\x00", "DEALLOCATE ALL"),
        (b"BEGIN\x00", "BEGIN"),
    ],
)
def test_command_tag(payload: bytes, expected: str) -> None:
    assert codec.decode_command_tag(payload) == expected


def test_error_fields_of_a_real_error_response() -> None:
    assert codec.decode_error_fields(recorded.SYNTAX_ERROR_PAYLOAD) == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42601",
        "M": 'syntax error at or near "selec"',
        "P": "1",
        "F": "scan.l",
        "L": "1188",
        "R": "scanner_yyerror",
    }


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x00\x00'G\x9d\xbd\x11\"", (10055, b'\x9d\xbd\x11"')),
        (b"\x00\x00\x00\x07" + bytes(range(32)), (7, bytes(range(32)))),  # protocol 3.2
    ],
    ids=["4-byte-key", "32-byte-key"],
)
def test_backend_key_data(payload: bytes, expected: tuple[int, bytes]) -> None:
    assert codec.decode_backend_key_data(payload) == expected


@pytest.mark.parametrize(
    ("decoder", "payload"),
    [
        (codec.decode_backend_key_data, b"\x00\x00'G\x9d\xbd\x11"),
        (codec.auth_code, b"\x00\x00\x00"),
        (codec.decode_parameter_status, b"TimeZone\x00UTC"),
    ],
    ids=["key-data-3-byte-key", "auth-short", "parameter-status-unterminated"],
)
def test_backend_payload_too_short(decoder: Callable[[bytes], object], payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decoder(payload)


# --- what the proxy sends itself: (id, encoded, tag, decoded) ------------------------------

ENCODE_CASES: list[tuple[str, bytes, bytes, object]] = [
    (
        "error-response",
        codec.error_response("FATAL", "08P01", "invalid frontend message type 0"),
        b"E\x00\x00\x00;SFATAL\x00VFATAL\x00C08P01\x00Minvalid frontend message type 0\x00\x00",
        {"S": "FATAL", "V": "FATAL", "C": "08P01", "M": "invalid frontend message type 0"},
    ),
    (
        "error-response-with-detail",
        codec.error_response("ERROR", "57P01", "bye", detail="admin"),
        b"E\x00\x00\x00&SERROR\x00VERROR\x00C57P01\x00Mbye\x00Dadmin\x00\x00",
        {"S": "ERROR", "V": "ERROR", "C": "57P01", "M": "bye", "D": "admin"},
    ),
    (
        "ready-for-query-idle",
        codec.ready_for_query(TxnStatus.IDLE),
        b"Z\x00\x00\x00\x05I",
        TxnStatus.IDLE,
    ),
    (
        "ready-for-query-in-transaction",
        codec.ready_for_query(TxnStatus.IN_TRANSACTION),
        b"Z\x00\x00\x00\x05T",
        TxnStatus.IN_TRANSACTION,
    ),
    (
        "ready-for-query-failed",
        codec.ready_for_query(TxnStatus.IN_FAILED_TRANSACTION),
        b"Z\x00\x00\x00\x05E",
        TxnStatus.IN_FAILED_TRANSACTION,
    ),
    (
        "negotiate-protocol-version",
        codec.negotiate_protocol_version(codec.PROTOCOL_3_0, ["_pq_.opt"]),
        b"v\x00\x00\x00\x15\x00\x03\x00\x00\x00\x00\x00\x01_pq_.opt\x00",
        (codec.PROTOCOL_3_0, ["_pq_.opt"]),
    ),
    (
        "negotiate-protocol-version-no-options",
        codec.negotiate_protocol_version(0, []),
        b"v\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00",
        (0, []),
    ),
]


def _decode_sent(tag: int, payload: bytes) -> object:
    if tag == ord("E"):
        return codec.decode_error_fields(payload)
    if tag == ord("Z"):
        return TxnStatus(payload[0])
    newest = int.from_bytes(payload[:4], "big")
    names = payload[8:].split(b"\x00")[:-1]
    assert int.from_bytes(payload[4:8], "big") == len(names)
    return (newest, [n.decode() for n in names])


@pytest.mark.parametrize("mode", FEED_MODES)
@pytest.mark.parametrize(
    ("encoded", "raw", "decoded"), [c[1:] for c in ENCODE_CASES], ids=[c[0] for c in ENCODE_CASES]
)
def test_proxy_sent_message_encoded_and_read_back(
    encoded: bytes, raw: bytes, decoded: object, mode: str
) -> None:
    assert encoded == raw
    messages = _scan_all(raw, {raw[0]}, mode)
    assert messages == [(raw[0], raw[5:])]
    assert _decode_sent(raw[0], messages[0][1]) == decoded


def test_terminate_and_message_framing() -> None:
    assert codec.terminate() == b"X\x00\x00\x00\x04"
    assert codec.message(codec.FrontendTag.SYNC) == b"S\x00\x00\x00\x04"
    assert codec.message(codec.BackendTag.COMMAND_COMPLETE, b"SELECT 1\x00") == (
        b"C\x00\x00\x00\rSELECT 1\x00"
    )


@pytest.mark.parametrize(
    ("error", "sqlstate"),
    [
        (ProtocolViolation("invalid frontend message type 0"), "08P01"),
        (MessageTooLarge("message of type 'Q' is too long"), "08P01"),
        (UpstreamUnavailable("could not connect to upstream server"), "08006"),
        (ShuttingDown("terminating connection due to administrator command"), "57P01"),
    ],
    ids=["violation", "too-large", "upstream", "shutdown"],
)
def test_proxy_error_renders_its_sqlstate(error: ProxyError, sqlstate: str) -> None:
    raw = error.as_error_response()
    assert raw[:1] == b"E" and int.from_bytes(raw[1:5], "big") == len(raw) - 1
    fields = codec.decode_error_fields(raw[5:])
    assert (fields["S"], fields["V"], fields["C"], fields["M"]) == (
        "FATAL",
        "FATAL",
        sqlstate,
        str(error),
    )


def test_tags_are_the_documented_bytes() -> None:
    """Spot checks against the protocol's message-format page, so a typo cannot hide."""
    tags = {t.name: chr(t) for t in (*codec.FrontendTag, *codec.BackendTag)}
    documented = {
        "PARSE": "P", "SYNC": "S", "FLUSH": "H", "COPY_DONE": "c", "COPY_FAIL": "f",
        "PARSE_COMPLETE": "1", "BIND_COMPLETE": "2", "CLOSE_COMPLETE": "3",
        "PORTAL_SUSPENDED": "s", "NO_DATA": "n", "PARAMETER_DESCRIPTION": "t",
        "COPY_IN_RESPONSE": "G", "COPY_OUT_RESPONSE": "H", "READY_FOR_QUERY": "Z",
    }  # fmt: skip
    assert {name: tags[name] for name in documented} == documented
    codes = (codec.SSL_REQUEST_CODE, codec.GSSENC_REQUEST_CODE, codec.CANCEL_REQUEST_CODE)
    assert [(c >> 16, c & 0xFFFF) for c in codes] == [(1234, 5679), (1234, 5680), (1234, 5678)]
    assert sorted(chr(t) for t in codec.FRONTEND_TAGS) == sorted("BCdcfDEHFPpQSX")


@pytest.mark.parametrize(
    ("name", "query", "oids"),
    [("", "SELECT 1", ()), ("s1", "SELECT $1::int, $2", (23, 0)), ("ünï", "SELECT 'é'", (25,))],
)
def test_encode_parse_round_trips(name: str, query: str, oids: tuple[int, ...]) -> None:
    raw = codec.encode_parse(name, query, oids)
    assert raw[0] == codec.FrontendTag.PARSE
    assert int.from_bytes(raw[1:5], "big") == len(raw) - 1
    assert codec.decode_parse(raw[5:]) == codec.Parse(name, query, oids)
