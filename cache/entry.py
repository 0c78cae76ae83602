"""The cached-result codec: the exact backend bytes of one read, behind a format header.

A cached result is the byte-exact response Postgres sent for one read — RowDescription when
the request asked for one, the DataRows, the CommandComplete — so a hit can be replayed
without re-encoding anything (PITFALLS F5).  The blob starts with a format-version byte, so
a proxy upgrade never misreads an older entry (an unknown version is a miss), and a flags
byte; bodies above `COMPRESS_ABOVE` bytes are zlib-compressed.  Pure.
"""

from __future__ import annotations

import zlib

FORMAT_VERSION = 1
COMPRESS_ABOVE = 64 * 1024
_ZLIB = 1


def encode(body: bytes) -> bytes:
    """Wrap the response bytes of one read for storage."""
    if len(body) > COMPRESS_ABOVE:
        return bytes((FORMAT_VERSION, _ZLIB)) + zlib.compress(body, 1)
    return bytes((FORMAT_VERSION, 0)) + body


def decode(blob: bytes) -> bytes | None:
    """The response bytes, or None for a blob this version cannot read."""
    if len(blob) < 2 or blob[0] != FORMAT_VERSION:
        return None
    if blob[1] == _ZLIB:
        try:
            return zlib.decompress(blob[2:])
        except zlib.error:
            return None
    return blob[2:] if blob[1] == 0 else None


_DATA_ROW = ord("D")
_COMMAND_COMPLETE = ord("C")
PORTAL_SUSPENDED = b"s\x00\x00\x00\x04"


def limit_rows(body: bytes, max_rows: int) -> bytes:
    """The reply to an Execute with a row limit, from a whole cached result.

    Postgres sends at most `max_rows` DataRows and, once it has sent that many, ends with
    PortalSuspended instead of CommandComplete — even when no row is left (it stops
    without looking further; PortalRunSelect).  `body` is a cached result
    (RowDescription?, DataRows, CommandComplete).
    """
    if max_rows <= 0:
        return body
    pos, rows, end = 0, 0, len(body)
    while pos < end:
        tag = body[pos]
        if tag == _DATA_ROW:
            if rows == max_rows:
                return body[:pos] + PORTAL_SUSPENDED
            rows += 1
        elif tag == _COMMAND_COMPLETE:
            return body[:pos] + PORTAL_SUSPENDED if rows == max_rows else body
        pos += 1 + int.from_bytes(body[pos + 1 : pos + 5], "big")
    return body
