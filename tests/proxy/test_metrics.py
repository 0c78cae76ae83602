"""The cache-path latency histogram exposes what prometheus-client's own Histogram would."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from proxy.metrics import _LATENCY_BUCKETS, Latency, ReplicationCollector

durations = st.lists(
    st.one_of(
        st.sampled_from(_LATENCY_BUCKETS),  # exactly on a bound: counted in that bucket (le)
        st.floats(min_value=0, max_value=5, allow_nan=False),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(hits=durations, misses=durations)
def test_latency_exposition_matches_prometheus_histogram(
    hits: list[float], misses: list[float]
) -> None:
    ours = CollectorRegistry()
    latency = Latency(ours)
    theirs = CollectorRegistry()
    reference = Histogram(
        "pgreactive_query_duration_seconds",
        "Time from a cacheable request to the end of its response, by outcome",
        ["outcome"],
        buckets=_LATENCY_BUCKETS,
        registry=theirs,
    )
    for outcome, values in (("hit", hits), ("miss", misses)):
        reference.labels(outcome)  # both outcomes are exposed from the start, as zeros
        observe = latency.hit if outcome == "hit" else latency.miss
        for value in values:
            observe(value)
            reference.labels(outcome).observe(value)

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return sorted(line for line in text.splitlines() if "_created" not in line)

    assert lines(ours) == lines(theirs)


@dataclass
class _Reader:
    """What `ReplicationCollector` reads (a `proxy.replication.Replication` in the server)."""

    database: str = "app"
    slot: str = "pgreactive"
    state: str = "streaming"
    lease_holder: str = "aaa"
    holder: str = "aaa"
    transactions: int = 7
    lag_seconds: float | None = 0.004
    retained_wal_bytes: int | None = 4096


def _exposed(reader: _Reader | None) -> str:
    registry = CollectorRegistry()
    registry.register(ReplicationCollector(lambda: reader))
    return generate_latest(registry).decode()


def test_replication_families_without_samples_when_replication_is_off() -> None:
    text = _exposed(None)
    assert "# TYPE pgreactive_replication_state gauge" in text
    assert "# TYPE pgreactive_replication_retained_wal_bytes gauge" in text
    assert not [line for line in text.splitlines() if line.startswith("pgreactive_")], text


def test_replication_samples_of_the_reader_and_of_a_standby() -> None:
    text = _exposed(_Reader())
    assert 'pgreactive_replication_state{database="app",state="streaming"} 1.0' in text
    assert 'pgreactive_replication_state{database="app",state="standby"} 0.0' in text
    assert (
        'pgreactive_replication_lease_holder{database="app",holder="aaa",this_instance="aaa"} 1.0'
        in text
    )
    assert 'pgreactive_replication_transactions_total{database="app"} 7.0' in text
    assert 'pgreactive_replication_last_lag_seconds{database="app"} 0.004' in text
    assert (
        'pgreactive_replication_retained_wal_bytes{database="app",slot="pgreactive"} 4096.0'
        in text
    )
    standby = _exposed(_Reader(state="standby", holder="bbb", lag_seconds=None,
                               retained_wal_bytes=None))  # fmt: skip
    assert 'pgreactive_replication_state{database="app",state="standby"} 1.0' in standby
    assert 'holder="aaa",this_instance="bbb"} 1.0' in standby
    assert "pgreactive_replication_last_lag_seconds{" not in standby
    assert "pgreactive_replication_retained_wal_bytes{" not in standby
