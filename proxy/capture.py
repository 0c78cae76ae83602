"""Result capture: a cache miss copied as it streams to the client, for the fill.

Pure module.  `Capture.add` sees each backend message of the read (RowDescription, DataRows,
CommandComplete, and whatever else comes) before it is relayed: it keeps a copy of what an
entry holds while the result stays under `limit` bytes, gives up on anything that makes the
result not an entry (an error, a notice, COPY, a suspended portal), and rewrites what the
client must see when the upstream was asked for one row more than the client's limit.  It
knows message tags and the cached-entry format, nothing of sockets or the backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cache import entry
from cache.planner import ReadPlan
from proxy import codec
from proxy.codec import BackendTag

_CAPTURED = frozenset(b"TDC")
_HARMLESS = frozenset(b"SAZ123")  # ParameterStatus, notifications, completion messages


@dataclass(slots=True)
class Capture:
    """A miss being copied as it streams to the client, to fill the cache at the end."""

    key: str
    plan: ReadPlan
    gens: str
    database: str
    shape: str | None
    started: float
    limit: int
    max_rows: int = 0  # the client's row limit; upstream was asked for one row more
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    rows: int = 0
    ok: bool = True
    complete: bool = False

    def add(self, tag: int, payload: bytes) -> bytes | None:
        """Copy one message; return what the client gets instead of it (None: itself).

        With a row limit N the upstream Execute asked for N+1 rows, so the result is whole
        when it ends in CommandComplete; the client still sees exactly Postgres's reply to
        N: the (N+1)-th row is dropped, and CommandComplete after exactly N rows becomes
        PortalSuspended (Postgres suspends as soon as it has sent N rows).
        """
        replacement = None
        if tag == BackendTag.DATA_ROW:
            self.rows += 1
            if self.max_rows and self.rows > self.max_rows:
                self.ok = False  # more rows than the client asked for: not the whole result
                return b""
        elif tag == BackendTag.COMMAND_COMPLETE and self.max_rows and self.rows == self.max_rows:
            replacement = entry.PORTAL_SUSPENDED
        if not self.ok:
            return replacement
        if tag in _CAPTURED:
            self.size += len(payload) + 5
            if self.size > self.limit:
                self.ok = False  # too big: abandon the fill, the rest streams on
                self.parts.clear()
                return replacement
            self.parts.append(codec.message(tag, payload))
            if tag == BackendTag.COMMAND_COMPLETE:
                self.complete = True
        elif tag not in _HARMLESS:
            self.ok = False  # an error, a notice, an empty query, a suspended portal, COPY
        return replacement
