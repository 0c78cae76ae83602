"""The cache-path latency histogram exposes what prometheus-client's own Histogram would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from proxy.metrics import _LATENCY_BUCKETS, Latency

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
