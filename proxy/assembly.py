"""Request assembly: an extended-protocol segment as one cacheable read unit.

Pure module.  The cache path collects a client's extended messages until a Sync or Flush (a
*segment*); it can be answered from the cache only when it is exactly one read of one portal:
``[Parse] Bind [Describe portal] Execute``, the Parse (if any) of the statement the Bind
names, the Describe (if any) of the portal the Execute runs, and a row limit only before a
Sync (a Flush-ended unit goes on, so a suspended portal could be resumed).  Everything else
is relayed as it came.

It knows the wire format (`proxy.codec`), nothing of sockets, SQL or the cache.  Which
statements exist *in the client's view* (a Parse answered from the cache exists there before
it exists upstream) is asked of a `Statements` port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from proxy import codec

_UNIT_SHAPES = (b"BE", b"BDE", b"PBE", b"PBDE")
_UNNAMED_NO_LIMIT = b"\x00\x00\x00\x00\x00"  # Execute of the unnamed portal, all rows


@dataclass(slots=True)
class Unit:
    """One extended-protocol read request: [Parse] Bind [Describe portal] Execute."""

    parse: codec.Parse | None
    parse_raw: bytes | None
    bind: bytes  # the Bind's payload: decoded only when the plan needs its parameters
    statement: str
    describe: bool
    sql: str
    param_oids: tuple[int, ...]
    max_rows: int = 0
    final: bool = True  # ends with Sync (else Flush: the segment goes on)


class Statements(Protocol):
    """Prepared statements as the client sees them."""

    def known(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        """The SQL and parameter types of statement `name`, if the client has it."""
        ...

    def taken(self, name: str) -> bool:
        """Whether a Parse of `name` would fail as a duplicate (42P05)."""
        ...


def read_unit(
    segment: list[tuple[int, bytes]], final: bool, statements: Statements
) -> Unit | None:
    """`segment` ((tag, whole message) pairs, ended by a Sync when `final`, else a Flush)
    as one cacheable read unit, or None."""
    tags = bytes(t for t, _ in segment)
    if tags not in _UNIT_SHAPES:
        return None
    describe = b"D" in tags
    parse = codec.decode_parse(segment[0][1][5:]) if tags[0] == ord("P") else None
    bind = segment[len(tags) - (3 if describe else 2)][1][5:]
    portal, statement = codec.decode_bind_names(bind)
    execute = segment[-1][1][5:]
    if execute == _UNNAMED_NO_LIMIT:
        max_rows, execute_portal = 0, ""
    else:
        decoded = codec.decode_execute(execute)
        max_rows = max(decoded.max_rows, 0)  # Postgres: zero or negative means no limit
        execute_portal = decoded.portal
    if execute_portal != portal or (max_rows and not final):
        return None
    described = b"P" + portal.encode("utf-8", "surrogateescape") + b"\x00"
    if describe and segment[-2][1][5:] != described:
        return None  # a Describe of another portal (or of a statement)
    if parse is not None:
        if parse.statement != statement or (parse.statement and statements.taken(statement)):
            return None  # another statement's Parse, or one Postgres would refuse
        return Unit(parse, segment[0][1], bind, statement, describe, parse.query,
                    parse.param_oids, max_rows, final)  # fmt: skip
    known = statements.known(statement)
    if known is None:
        return None
    sql, oids = known
    return Unit(None, None, bind, statement, describe, sql, oids, max_rows, final)
