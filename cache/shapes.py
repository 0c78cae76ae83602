"""Per-query-shape statistics: the "why wasn't this cached?" view behind ``/stats``.

Pure module: counters only, no event loop, no sockets.  Every session of a process bumps
the one `ShapeStats` its `CacheService` holds (all on the event-loop thread, so no locks).
It lives in `cache/` because a shape is a cache concept: the cache's outcomes (hit, miss,
bypass reason) are counted per shape, and the same shapes name an event's
``affectedQueries``; the proxy only serves the counts (``/stats``).

A *shape* is what a read is known by in events too: the sqlcommenter name the application
put in a comment when there is one (``/* name='agents.getAll' */``), else the statement's
fingerprint (the same for texts differing only in their literal values); it is counted per
database.  Per shape it keeps the first SQL text seen *without its values*
(`analyzer.redaction.display_sql`: constants become ``$1``, comments go; whitespace
collapsed, at most `SQL_CHARS` characters; the endpoint must not show personal data), hits,
misses, bypasses by reason (the reasons of the ``pgreactive_cache_queries_total`` metric)
and the latency of hits and of misses whose response was timed (for the mean).  Calls are
hits + misses + bypasses, summed when read rather than counted on the hot path.

Bound: at most `BOUND` shapes (default 1,000) per process, so a flood of distinct shapes
(or of names in comments) cannot grow memory.  A new shape arriving with the registry full
first drops the least recently seen tenth, oldest first: one partial sort per hundred new
shapes instead of a scan per shape, and a hit never reorders anything -- it only stamps a
tick.  A shape's counters restart from zero if it comes back after being dropped.

Hot path: a hit costs one dict lookup, one tick, two additions; no allocation except for
a shape seen for the first time (the only time its SQL is normalised).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from operator import attrgetter

from analyzer.redaction import display_sql

BOUND = 1000
SQL_CHARS = 200
_ELLIPSIS = "..."
_SEEN = attrgetter("seen")


class Shape:
    """The counters of one query shape."""

    __slots__ = (
        "bypass", "database", "hits", "latency", "misses", "name", "seen", "sql", "timed_misses",
    )  # fmt: skip

    def __init__(self, database: str, name: str, sql: str) -> None:
        self.database = database
        self.name = name
        self.sql = sql
        self.hits = 0
        self.misses = 0
        self.timed_misses = 0  # misses whose latency was measured (the fill was stored)
        self.latency = 0.0  # seconds, over the hits and the timed misses
        self.bypass: dict[str, int] = {}
        self.seen = 0  # the registry's tick when this shape was last counted

    @property
    def calls(self) -> int:
        return self.hits + self.misses + sum(self.bypass.values())

    def mean_latency_ms(self) -> float | None:
        """Mean of the measured latencies, None before the first one."""
        timed = self.hits + self.timed_misses
        return round(self.latency * 1000 / timed, 3) if timed else None

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "database": self.database,
            "sql": self.sql,
            "calls": self.calls,
            "hits": self.hits,
            "misses": self.misses,
            "bypass": {str(reason): n for reason, n in sorted(self.bypass.items())},
            "mean_latency_ms": self.mean_latency_ms(),
        }


_ShapeKey = tuple[str, str]  # (database, name)

# `snapshot` orders (ascending keys: the highest count first, then by name and database).
SORTS: dict[str, Callable[[Shape], tuple[object, ...]]] = {
    "calls": lambda s: (-s.calls, s.name, s.database),
    "hits": lambda s: (-s.hits, s.name, s.database),
    "misses": lambda s: (-s.misses, s.name, s.database),
    "bypass": lambda s: (-sum(s.bypass.values()), s.name, s.database),
    "latency": lambda s: (-(s.mean_latency_ms() or 0.0), s.name, s.database),
    "name": lambda s: (s.name, s.database),
}


class ShapeStats:
    """A bounded registry of `Shape` counters, keyed by database and shape name; see the
    module docstring."""

    def __init__(self, bound: int = BOUND) -> None:
        if bound < 1:
            raise ValueError("the shape bound must be at least 1")
        self.bound = bound
        self._shapes: dict[_ShapeKey, Shape] = {}
        self._tick = 0

    def __len__(self) -> int:
        return len(self._shapes)

    def __contains__(self, key: object) -> bool:
        """`(database, name)` is held (a bare name: in any database)."""
        if isinstance(key, str):
            return any(name == key for _, name in self._shapes)
        return key in self._shapes

    def hit(self, name: str, sql: str, seconds: float, database: str = "") -> None:
        """A read of `name` answered from the cache in `seconds`."""
        shape = self._shapes.get((database, name)) or self._add(database, name, sql)
        self._tick = shape.seen = self._tick + 1
        shape.hits += 1
        shape.latency += seconds

    def miss(self, name: str, sql: str, database: str = "") -> None:
        """A read of `name` sent upstream to fill the cache (its latency comes later)."""
        shape = self._shapes.get((database, name)) or self._add(database, name, sql)
        self._tick = shape.seen = self._tick + 1
        shape.misses += 1

    def miss_latency(self, name: str, seconds: float, database: str = "") -> None:
        """A miss of `name` was answered and stored after `seconds` (nothing if the shape
        was dropped meanwhile: a miss without its shape is not worth a new entry)."""
        shape = self._shapes.get((database, name))
        if shape is not None:
            shape.timed_misses += 1
            shape.latency += seconds

    def bypassed(self, name: str, sql: str, reason: str, database: str = "") -> None:
        """A read of `name` forwarded without the cache, for `reason`."""
        shape = self._shapes.get((database, name)) or self._add(database, name, sql)
        self._tick = shape.seen = self._tick + 1
        shape.bypass[reason] = shape.bypass.get(reason, 0) + 1

    def snapshot(self, sort: str = "calls", limit: int | None = None) -> list[dict[str, object]]:
        """The shapes as JSON-ready data, ordered by `sort` (a key of `SORTS`), at most
        `limit` of them."""
        shapes = sorted(self._shapes.values(), key=SORTS[sort])
        return [shape.as_dict() for shape in shapes[:limit]]

    def document(self, sort: str = "calls", limit: int | None = None) -> dict[str, object]:
        """The ``/stats`` reply body."""
        return {"shapes": self.snapshot(sort, limit), "bound": self.bound, "total": len(self)}

    def _add(self, database: str, name: str, sql: str) -> Shape:
        if len(self._shapes) >= self.bound:
            self._evict()
        shape = self._shapes[(database, name)] = Shape(database, name, excerpt(display_sql(sql)))
        return shape

    def _evict(self) -> None:
        """Drop the least recently seen tenth (at least one shape)."""
        count = max(1, self.bound // 10)
        for shape in heapq.nsmallest(count, self._shapes.values(), key=_SEEN):
            del self._shapes[(shape.database, shape.name)]


def excerpt(sql: str, limit: int = SQL_CHARS) -> str:
    """`sql` on one line (whitespace runs collapsed), cut to at most `limit` characters."""
    text = " ".join(sql.split())
    if len(text) <= limit:
        return text
    return text[: limit - len(_ELLIPSIS)] + _ELLIPSIS
