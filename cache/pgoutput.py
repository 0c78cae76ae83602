"""The logical replication stream, sans-IO: CopyData payloads and `pgoutput` messages.

Theory of operation.  After ``START_REPLICATION SLOT s LOGICAL ...`` the server answers
CopyBothResponse and from then on every message in either direction is a CopyData whose
payload starts with a one-byte tag (PG docs, "Streaming Replication Protocol"):

* ``w`` XLogData (B): Int64 start LSN, Int64 end of WAL, Int64 send time, then one message
  of the output plugin;
* ``k`` Primary keepalive (B): Int64 end of WAL (what the walsender has sent), Int64 send
  time, Byte1 1 if the server asks for a reply at once;
* ``r`` Standby status update (F): Int64 written, flushed, applied LSN, Int64 clock, Byte1
  reply requested.  "flushed" is what the server may forget: it is confirmed only after the
  invalidation of everything before it succeeded.

``pgoutput`` (proto_version 1, PG docs "Logical Replication Message Formats") sends, per
committed transaction, Begin, then Relation (before the first change to a relation in the
session, and again after its definition changes), Type, Origin, Insert/Update/Delete/
Truncate and transactional Message, then Commit.  A non-transactional Message may come on
its own.  Tuple data: per column ``n`` (null), ``u`` (unchanged TOASTed value: not sent) or
``t`` + Int32 length + text.

What this module knows: the byte layouts, and nothing else.  It does not know what a table
means to the cache (see `cache.changes`), nor sockets.  Times are microseconds since
2000-01-01 as the server sends them.  Malformed input raises `ReplicationProtocolError`.

Pure: no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

PG_EPOCH_UNIX_US: Final = 946_684_800_000_000  # 2000-01-01 in Unix microseconds


class ReplicationProtocolError(Exception):
    """Bytes that do not follow the replication protocol (SQLSTATE 08P01)."""

    sqlstate = "08P01"


class CopyTag(IntEnum):
    """The first byte of a CopyData payload in a replication stream."""

    XLOG_DATA = ord("w")
    PRIMARY_KEEPALIVE = ord("k")
    STANDBY_STATUS_UPDATE = ord("r")


class PgOutputTag(IntEnum):
    """The first byte of a pgoutput message."""

    BEGIN = ord("B")
    COMMIT = ord("C")
    ORIGIN = ord("O")
    RELATION = ord("R")
    TYPE = ord("Y")
    INSERT = ord("I")
    UPDATE = ord("U")
    DELETE = ord("D")
    TRUNCATE = ord("T")
    MESSAGE = ord("M")


class Unchanged:
    """A TOASTed column value the server did not send (it did not change)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged()

Value = bytes | None | Unchanged
Tuple = tuple[Value, ...]


# --- the CopyData layer ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class XLogData:
    """XLogData (B): one output plugin message starting at WAL position `start`."""

    start: int
    wal_end: int
    send_time: int
    data: bytes


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    """Primary keepalive message (B)."""

    wal_end: int
    send_time: int
    reply_requested: bool


_XLOG = struct.Struct("!QQQ")
_KEEPALIVE = struct.Struct("!QQ?")
_STATUS = struct.Struct("!cQQQQ?")


def decode_copy_data(payload: bytes) -> XLogData | PrimaryKeepalive:
    """Decode the payload of one CopyData the server sent in a replication stream."""
    if not payload:
        raise ReplicationProtocolError("empty CopyData in the replication stream")
    tag = payload[0]
    try:
        if tag == CopyTag.XLOG_DATA:
            start, end, sent = _XLOG.unpack_from(payload, 1)
            return XLogData(start, end, sent, payload[1 + _XLOG.size :])
        if tag == CopyTag.PRIMARY_KEEPALIVE:
            if len(payload) != 1 + _KEEPALIVE.size:
                raise ReplicationProtocolError("keepalive of the wrong length")
            end, sent, reply = _KEEPALIVE.unpack_from(payload, 1)
            return PrimaryKeepalive(end, sent, reply)
    except struct.error as exc:
        raise ReplicationProtocolError(f"truncated {chr(tag)!r} message") from exc
    raise ReplicationProtocolError(f"unknown replication message {chr(tag)!r}")


def encode_standby_status(
    flushed: int, clock_us: int, *, written: int | None = None, reply_requested: bool = False
) -> bytes:
    """The CopyData payload of a Standby status update (F) confirming `flushed`."""
    written = flushed if written is None else max(written, flushed)
    return _STATUS.pack(b"r", written, flushed, flushed, clock_us, reply_requested)


def pg_time_us(unix_seconds: float) -> int:
    """A Unix time as the server counts (microseconds since 2000-01-01)."""
    return int(unix_seconds * 1_000_000) - PG_EPOCH_UNIX_US


def unix_seconds(pg_us: int) -> float:
    return (pg_us + PG_EPOCH_UNIX_US) / 1_000_000


def format_lsn(lsn: int) -> str:
    """``0x16B3748`` → ``"0/16B3748"`` (as Postgres prints a pg_lsn)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


# --- pgoutput messages ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """Begin: the transaction's final (commit) LSN, commit time and xid."""

    final_lsn: int
    commit_time: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit: the commit record's LSN, the LSN just past it, the commit time."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass(frozen=True, slots=True)
class Origin:
    """Origin: the transaction was replicated from another node."""

    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a Relation message."""

    name: str
    type_oid: int
    type_modifier: int
    key: bool  # part of the replica identity


@dataclass(frozen=True, slots=True)
class Relation:
    """Relation: the columns of a relation, as later tuples of it are laid out."""

    oid: int
    namespace: str  # "" for pg_catalog
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> str:
        return f"{self.namespace or 'pg_catalog'}.{self.name}"


@dataclass(frozen=True, slots=True)
class Type:
    """Type: a data type's name (sent before a relation using a non-built-in type)."""

    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """Insert: the new row."""

    relation: int
    new: Tuple


@dataclass(frozen=True, slots=True)
class Update:
    """Update: the old key (``K``) or whole old row (``O``) when sent, and the new row."""

    relation: int
    old_kind: str  # "K", "O" or "" (not sent: the key did not change, identity default)
    old: Tuple | None
    new: Tuple


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete: the old key (``K``) or whole old row (``O``)."""

    relation: int
    old_kind: str
    old: Tuple


@dataclass(frozen=True, slots=True)
class Truncate:
    """Truncate: every relation truncated by one TRUNCATE (CASCADE included)."""

    relations: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Message:
    """Logical decoding message (``pg_logical_emit_message``; needs ``messages 'true'``)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


PgOutputMessage = (
    Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | Message
)


class _Reader:
    """A cursor over one message's bytes; every read checks it stays inside them."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 1  # after the tag

    def take(self, fmt: struct.Struct) -> tuple[int, ...]:
        values = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return values

    def int8(self) -> int:
        return self.take(_U8)[0]

    def int16(self) -> int:
        return self.take(_I16)[0]

    def int32(self) -> int:
        return self.take(_I32)[0]

    def uint32(self) -> int:
        return self.take(_U32)[0]

    def int64(self) -> int:
        return self.take(_I64)[0]

    def uint64(self) -> int:
        return self.take(_U64)[0]

    def string(self) -> str:
        end = self.data.index(b"\x00", self.pos)
        text = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return text

    def raw(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise struct.error("value past the end of the message")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def tuple_data(self) -> Tuple:
        values: list[Value] = []
        for _ in range(self.int16()):
            kind = self.int8()
            if kind == ord("n"):
                values.append(None)
            elif kind == ord("u"):
                values.append(UNCHANGED)
            elif kind in (ord("t"), ord("b")):
                values.append(self.raw(self.int32()))
            else:
                raise ReplicationProtocolError(f"unknown tuple value kind {chr(kind)!r}")
        return tuple(values)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ReplicationProtocolError("trailing bytes after a pgoutput message")


_U8 = struct.Struct("!B")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_U64 = struct.Struct("!Q")


def _begin(r: _Reader) -> Begin:
    return Begin(r.uint64(), r.int64(), r.uint32())


def _commit(r: _Reader) -> Commit:
    return Commit(r.int8(), r.uint64(), r.uint64(), r.int64())


def _origin(r: _Reader) -> Origin:
    return Origin(r.uint64(), r.string())


def _relation(r: _Reader) -> Relation:
    oid, namespace, name, identity = r.uint32(), r.string(), r.string(), chr(r.int8())
    columns = []
    for _ in range(r.int16()):
        flags, column = r.int8(), r.string()
        columns.append(Column(column, r.uint32(), r.int32(), bool(flags & 1)))
    return Relation(oid, namespace, name, identity, tuple(columns))


def _type(r: _Reader) -> Type:
    return Type(r.uint32(), r.string(), r.string())


def _expect(r: _Reader, wanted: bytes) -> str:
    kind = chr(r.int8())
    if kind.encode() not in wanted:
        raise ReplicationProtocolError(f"unexpected tuple marker {kind!r}")
    return kind


def _insert(r: _Reader) -> Insert:
    oid = r.uint32()
    _expect(r, b"N")
    return Insert(oid, r.tuple_data())


def _update(r: _Reader) -> Update:
    oid = r.uint32()
    kind = _expect(r, b"KON")
    old = None
    if kind != "N":
        old = r.tuple_data()
        _expect(r, b"N")
    return Update(oid, "" if old is None else kind, old, r.tuple_data())


def _delete(r: _Reader) -> Delete:
    oid = r.uint32()
    kind = _expect(r, b"KO")
    return Delete(oid, kind, r.tuple_data())


def _truncate(r: _Reader) -> Truncate:
    count, options = r.int32(), r.int8()
    oids = tuple(r.uint32() for _ in range(count))
    return Truncate(oids, bool(options & 1), bool(options & 2))


def _message(r: _Reader) -> Message:
    flags, lsn, prefix = r.int8(), r.uint64(), r.string()
    return Message(bool(flags & 1), lsn, prefix, r.raw(r.int32()))


_DECODERS = {
    PgOutputTag.BEGIN: _begin,
    PgOutputTag.COMMIT: _commit,
    PgOutputTag.ORIGIN: _origin,
    PgOutputTag.RELATION: _relation,
    PgOutputTag.TYPE: _type,
    PgOutputTag.INSERT: _insert,
    PgOutputTag.UPDATE: _update,
    PgOutputTag.DELETE: _delete,
    PgOutputTag.TRUNCATE: _truncate,
    PgOutputTag.MESSAGE: _message,
}


def decode_pgoutput(data: bytes) -> PgOutputMessage:
    """Decode one pgoutput message (the `data` of an XLogData)."""
    if not data:
        raise ReplicationProtocolError("empty pgoutput message")
    decoder = _DECODERS.get(data[0])  # type: ignore[call-overload]
    if decoder is None:
        raise ReplicationProtocolError(f"unknown pgoutput message {chr(data[0])!r}")
    reader = _Reader(data)
    try:
        message: PgOutputMessage = decoder(reader)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ReplicationProtocolError(f"malformed pgoutput {chr(data[0])!r} message") from exc
    reader.end()
    return message
