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
