"""The per-query-shape registry behind /stats: counters, the first SQL, the bound, eviction."""

from __future__ import annotations

import pytest

from cache.planner import Bypass
from cache.shapes import BOUND, SQL_CHARS, ShapeStats, excerpt


def by_name(stats: ShapeStats) -> dict[str, dict[str, object]]:
    return {str(shape["name"]): shape for shape in stats.snapshot()}


def test_counters_of_one_shape() -> None:
    stats = ShapeStats()
    stats.miss("agents.getAll", "select * from agents")
    stats.miss_latency("agents.getAll", 0.004)
    stats.hit("agents.getAll", "select * from agents", 0.001)
    stats.hit("agents.getAll", "select * from agents", 0.001)
    stats.bypassed("agents.getAll", "select * from agents", Bypass.IN_TRANSACTION)
    stats.bypassed("agents.getAll", "select * from agents", "in_transaction")
    stats.bypassed("agents.getAll", "select * from agents", "stable_function")
    assert stats.snapshot() == [
        {
            "name": "agents.getAll",
            "database": "",
            "sql": "select * from agents",
            "calls": 6,
            "hits": 2,
            "misses": 1,
            "bypass": {"in_transaction": 2, "stable_function": 1},
            "mean_latency_ms": 2.0,  # (4 + 1 + 1) ms over the 3 timed reads
        }
    ]


def test_a_miss_without_a_timed_response_is_not_in_the_mean() -> None:
    stats = ShapeStats()
    stats.miss("q", "select 1")  # its fill was abandoned: no latency
    assert by_name(stats)["q"]["mean_latency_ms"] is None
    stats.hit("q", "select 1", 0.0005)
    assert by_name(stats)["q"]["mean_latency_ms"] == 0.5


def test_latency_of_an_unknown_shape_is_dropped() -> None:
    stats = ShapeStats()
    stats.miss_latency("gone", 0.01)
    assert len(stats) == 0 and "gone" not in stats


def test_the_first_sql_seen_is_kept_without_its_values() -> None:
    stats = ShapeStats()
    stats.miss("3fa1c2d4e5f60718", "select  *\n  from t where id = 1 and n = 'x' /* y */")
    stats.hit("3fa1c2d4e5f60718", "select * from t where id = 2 and n = 'z'", 0.001)
    assert by_name(stats)["3fa1c2d4e5f60718"]["sql"] == "select * from t where id = $1 and n = $2"


def test_shapes_are_counted_per_database() -> None:
    stats = ShapeStats()
    stats.miss("q", "select 1", "app")
    stats.hit("q", "select 1", 0.001, "app")
    stats.bypassed("q", "select 1", "in_transaction", "billing")
    stats.miss_latency("q", 0.001, "other")  # no such shape there: dropped
    assert [(s["database"], s["calls"], s["mean_latency_ms"]) for s in stats.snapshot()] == [
        ("app", 2, 1.0),
        ("billing", 1, None),
    ]
    assert ("app", "q") in stats and "q" in stats and ("other", "q") not in stats


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("calls", ["c", "a", "b"]),
        ("hits", ["c", "a", "b"]),
        ("misses", ["a", "b", "c"]),
        ("bypass", ["b", "a", "c"]),
        ("latency", ["c", "a", "b"]),
        ("name", ["a", "b", "c"]),
    ],
)
def test_snapshot_sort_and_limit(sort: str, expected: list[str]) -> None:
    stats = ShapeStats()
    for _ in range(3):
        stats.miss("a", "select 1")
    stats.bypassed("b", "select 1", "in_transaction")
    stats.miss("b", "select 1")
    for _ in range(4):
        stats.hit("c", "select 1", 0.002)
    stats.miss_latency("a", 0.001)
    assert [s["name"] for s in stats.snapshot(sort)] == expected
    assert [s["name"] for s in stats.snapshot(sort, 2)] == expected[:2]
    assert stats.document(sort, 1)["total"] == 3


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        pytest.param("select 1", "select 1", id="short"),
        pytest.param(" select\t1\n", "select 1", id="whitespace-collapsed"),
        pytest.param("x" * SQL_CHARS, "x" * SQL_CHARS, id="exactly-the-limit"),
        pytest.param("x" * (SQL_CHARS + 1), "x" * (SQL_CHARS - 3) + "...", id="cut"),
    ],
)
def test_excerpt(sql: str, expected: str) -> None:
    assert excerpt(sql) == expected
    assert len(excerpt(sql)) <= SQL_CHARS


def test_snapshot_is_sorted_by_calls_then_name() -> None:
    stats = ShapeStats()
    for name, calls in (("b", 1), ("a", 3), ("c", 3), ("d", 2)):
        for _ in range(calls):
            stats.bypassed(name, "select 1", "in_transaction")
    assert [s["name"] for s in stats.snapshot()] == ["a", "c", "d", "b"]
    assert stats.document() == {"shapes": stats.snapshot(), "bound": BOUND, "total": 4}


def test_the_registry_never_holds_more_than_its_bound() -> None:
    stats = ShapeStats(bound=50)
    for i in range(500):
        stats.miss(f"s{i}", "select 1")
        assert len(stats) <= 50
    assert "s499" in stats


def test_the_least_recently_seen_tenth_goes_first() -> None:
    stats = ShapeStats(bound=20)
    for i in range(20):
        stats.miss(f"s{i}", "select 1")
    # Seen again, in this order: s0 and s1 are now the most recently seen.
    stats.hit("s0", "select 1", 0.001)
    stats.bypassed("s1", "select 1", "in_transaction")
    stats.miss("new", "select 1")  # full: drops the 2 least recently seen, s2 and s3
    names = {str(s["name"]) for s in stats.snapshot()}
    assert names == {"new", "s0", "s1", *(f"s{i}" for i in range(4, 20))}
    stats.miss("s2", "select x")  # a dropped shape comes back from zero
    assert by_name(stats)["s2"]["misses"] == 1 and by_name(stats)["s2"]["sql"] == "select x"
    assert len(stats) == 20


def test_latency_alone_does_not_keep_a_shape() -> None:
    """Timing a miss is not a sighting: it must not save the shape from eviction."""
    stats = ShapeStats(bound=10)
    for i in range(10):
        stats.miss(f"s{i}", "select 1")
    stats.miss_latency("s0", 0.001)
    stats.miss("new", "select 1")
    assert "s0" not in stats and "s1" in stats


def test_a_bound_of_one() -> None:
    stats = ShapeStats(bound=1)
    stats.miss("a", "select 1")
    stats.miss("b", "select 1")
    assert [s["name"] for s in stats.snapshot()] == ["b"]


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ShapeStats(bound=0)
