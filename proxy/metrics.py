"""Metrics: every `pgreactive_*` metric, and the counters the hot path bumps.

The relay bumps plain integer attributes on one `Stats` object (no locks, no label lookups
per message); a Prometheus collector reads them at scrape time.  Latency histograms are
kept the same way (see `Latency`) and observed only on the cache path (hits and misses).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)


@dataclass(slots=True)
class Stats:
    """Counters and gauges of the relay and the cache, bumped in place."""

    client_connections: int = 0
    client_connections_total: int = 0
    client_connections_refused: int = 0  # past limits.max_client_connections
    upstream_connections: int = 0
    bytes_to_upstream: int = 0
    bytes_to_client: int = 0
    protocol_errors: int = 0
    hits: int = 0
    misses: int = 0
    bypass: dict[str, int] = field(default_factory=dict)
    fills_stored: int = 0
    fills_refused: int = 0
    fills_abandoned: int = 0
    invalidations: int = 0
    database_invalidations: int = 0
    invalidation_failures: int = 0
    events_published: int = 0

    def bypassed(self, reason: str) -> None:
        self.bypass[reason] = self.bypass.get(reason, 0) + 1


class Latency(Collector):
    """Histograms of query latency on the cache path, by outcome.

    Observed on every hit, so kept as plain lists (a bisect and two additions) rather
    than prometheus-client `Histogram`s, which take a lock per observation; exposed as
    the histogram `pgreactive_query_duration_seconds{outcome=hit|miss}`.
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, list[float]] = {}
        self.hit = self._observer("hit")
        self.miss = self._observer("miss")
        if registry is not None:
            registry.register(self)

    def _observer(self, outcome: str) -> Callable[[float], None]:
        counts = self._buckets[outcome] = [0] * (len(_LATENCY_BUCKETS) + 1)
        total = self._sums[outcome] = [0.0]
        where = bisect.bisect_left
        bounds = _LATENCY_BUCKETS

        def observe(seconds: float) -> None:
            counts[where(bounds, seconds)] += 1  # the first bucket whose bound is >= it
            total[0] += seconds

        return observe

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "pgreactive_query_duration_seconds",
            "Time from a cacheable request to the end of its response, by outcome",
            labels=["outcome"],
        )
        for outcome, counts in self._buckets.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*_LATENCY_BUCKETS, math.inf), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
            family.add_metric([outcome], buckets, self._sums[outcome][0])
        yield family


class StatsCollector(Collector):
    """Exposes a `Stats` object (and the cache's availability) in Prometheus form."""

    def __init__(self, stats: Stats, cache_available: Callable[[], bool | None]) -> None:
        self.stats = stats
        self.cache_available = cache_available

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield GaugeMetricFamily(
            "pgreactive_client_connections", "Client connections open now", s.client_connections
        )
        yield CounterMetricFamily(
            "pgreactive_client_connections_accepted",
            "Client connections accepted",
            s.client_connections_total,
        )
        yield CounterMetricFamily(
            "pgreactive_client_connections_refused",
            "Client connections refused with 53300: limits.max_client_connections reached",
            s.client_connections_refused,
        )
        yield GaugeMetricFamily(
            "pgreactive_upstream_connections",
            "Upstream (Postgres) connections open now",
            s.upstream_connections,
        )
        relayed = CounterMetricFamily(
            "pgreactive_relayed_bytes", "Bytes relayed", labels=["direction"]
        )
        relayed.add_metric(["to_upstream"], s.bytes_to_upstream)
        relayed.add_metric(["to_client"], s.bytes_to_client)
        yield relayed
        yield CounterMetricFamily(
            "pgreactive_protocol_errors",
            "Client sessions ended for a protocol violation (SQLSTATE 08P01)",
            s.protocol_errors,
        )
        queries = CounterMetricFamily(
            "pgreactive_cache_queries",
            "Cacheable-path decisions: hit, miss, or bypass with its reason",
            labels=["outcome", "reason"],
        )
        queries.add_metric(["hit", ""], s.hits)
        queries.add_metric(["miss", ""], s.misses)
        for reason, count in sorted(s.bypass.items()):
            queries.add_metric(["bypass", reason], count)
        yield queries
        fills = CounterMetricFamily(
            "pgreactive_cache_fills", "Cache fills by result", labels=["result"]
        )
        fills.add_metric(["stored"], s.fills_stored)
        fills.add_metric(["refused"], s.fills_refused)
        fills.add_metric(["abandoned"], s.fills_abandoned)
        yield fills
        invalidations = CounterMetricFamily(
            "pgreactive_invalidations", "Committed invalidations by reach", labels=["reach"]
        )
        invalidations.add_metric(["tables"], s.invalidations - s.database_invalidations)
        invalidations.add_metric(["database"], s.database_invalidations)
        yield invalidations
        yield CounterMetricFamily(
            "pgreactive_invalidation_failures",
            "Invalidations that could not be written (the cache pauses until it heals)",
            s.invalidation_failures,
        )
        yield CounterMetricFamily(
            "pgreactive_events_published", "Invalidation events published", s.events_published
        )
        available = self.cache_available()
        if available is not None:
            yield GaugeMetricFamily(
                "pgreactive_cache_available",
                "1 when the cache backend (Redis) is reachable and healed, else 0",
                1 if available else 0,
            )
