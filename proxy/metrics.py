"""Metrics: every `pgreactive_*` metric, and the counters the hot path bumps.

The relay bumps plain integer attributes on one `Stats` object (no locks, no label lookups
per message); a Prometheus collector reads them at scrape time.  Latency histograms are
kept the same way (see `Latency`) and observed only on the cache path (hits and misses).
"""

from __future__ import annotations

import bisect
import math
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
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
    invalidations: dict[tuple[str, str], int] = field(default_factory=dict)  # (db, reach)
    invalidation_failures: int = 0
    events_published: int = 0

    def bypassed(self, reason: str) -> None:
        self.bypass[reason] = self.bypass.get(reason, 0) + 1

    # `cache.service.CacheCounters`: what the cache service counts.

    def fill_stored(self) -> None:
        self.fills_stored += 1

    def fill_refused(self) -> None:
        self.fills_refused += 1

    def invalidation_failed(self) -> None:
        self.invalidation_failures += 1

    def event_published(self) -> None:
        self.events_published += 1

    def invalidated(self, database: str, whole_database: bool) -> None:
        """One committed invalidation of `database` (the label is bounded: the write
        committed, so Postgres has that database)."""
        key = (database, "database" if whole_database else "tables")
        self.invalidations[key] = self.invalidations.get(key, 0) + 1


class Histograms(Collector):
    """One histogram family, one histogram per value of its one label, observed on hot paths.

    Kept as plain lists (a bisect and two additions per observation) rather than
    prometheus-client `Histogram`s, which take a lock per observation.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        values: tuple[str, ...],
        registry: CollectorRegistry | None,
        buckets: tuple[float, ...] = _LATENCY_BUCKETS,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.bounds = buckets
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, list[float]] = {}
        self.observers = {value: self._observer(value) for value in values}
        if registry is not None:
            registry.register(self)

    def _observer(self, value: str) -> Callable[[float], None]:
        counts = self._buckets[value] = [0] * (len(self.bounds) + 1)
        total = self._sums[value] = [0.0]
        where = bisect.bisect_left
        bounds = self.bounds

        def observe(seconds: float) -> None:
            counts[where(bounds, seconds)] += 1  # the first bucket whose bound is >= it
            total[0] += seconds

        return observe

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, counts in self._buckets.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
            family.add_metric([value], buckets, self._sums[value][0])
        yield family


class Latency(Histograms):
    """Query latency on the cache path, by outcome: observed on every hit, so kept as
    plain lists; `pgreactive_query_duration_seconds{outcome=hit|miss}`."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        super().__init__(
            "pgreactive_query_duration_seconds",
            "Time from a cacheable request to the end of its response, by outcome",
            "outcome",
            ("hit", "miss"),
            registry,
        )
        self.hit = self.observers["hit"]
        self.miss = self.observers["miss"]


REDIS_OPERATIONS = ("lookup", "fill", "bump", "mark", "publish")


def redis_round_trips(registry: CollectorRegistry | None) -> Histograms:
    """`pgreactive_redis_duration_seconds{operation}`: one round trip each (`cache.timing`)."""
    return Histograms(
        "pgreactive_redis_duration_seconds",
        "Round trips to the cache backend (Redis), by operation; failures included",
        "operation",
        REDIS_OPERATIONS,
        registry,
    )


def upstream_round_trips(registry: CollectorRegistry | None) -> Histograms:
    """`pgreactive_upstream_duration_seconds{operation="connect"}`: opening a connection to
    Postgres for a client (TCP; the relayed start-up and authentication are not in it)."""
    return Histograms(
        "pgreactive_upstream_duration_seconds",
        "Round trips to the upstream Postgres the proxy itself waits for, by operation",
        "operation",
        ("connect",),
        registry,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    )


class BuildInfo(Collector):
    """`pgreactive_build_info{version, python}` = 1."""

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "pgreactive_build_info",
            "Always 1: the pgreactive version and the Python it runs on",
            labels=["version", "python"],
        )
        info.add_metric([version(), platform.python_version()], 1)
        yield info


def version() -> str:
    """The installed pgreactive's version."""
    try:
        return metadata.version("pgreactive")
    except metadata.PackageNotFoundError:
        return "unknown"


def standard_collectors(registry: CollectorRegistry) -> None:
    """The client library's process, platform and garbage-collector metrics (`process_*`,
    `python_info`, `python_gc_*`), and the build info."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(BuildInfo())


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
            "pgreactive_invalidations",
            "Committed invalidations by database and reach",
            labels=["database", "reach"],
        )
        for (database, reach), count in sorted(s.invalidations.items()):
            invalidations.add_metric([database, reach], count)
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


class ReplicationView(Protocol):
    """What the replication metrics read from the stream's reader (`proxy.replication`)."""

    database: str
    slot: str
    state: str
    lease_holder: str
    holder: str
    transactions: int
    lag_seconds: float | None
    retained_wal_bytes: int | None


REPLICATION_STATES = ("starting", "unavailable", "standby", "syncing", "streaming")
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def replication_lag(registry: CollectorRegistry | None, database: str | None) -> Histograms:
    """`pgreactive_replication_lag_seconds{database}`: per transaction read from the stream,
    its commit time (Postgres's clock) to the end of its invalidation (ours)."""
    return Histograms(
        "pgreactive_replication_lag_seconds",
        "Replicated transactions: commit on Postgres to invalidation done (the stream's reader)",
        "database",
        (database,) if database is not None else (),
        registry,
        buckets=_LAG_BUCKETS,
    )


class ReplicationCollector(Collector):
    """The replication stream's state, lease holder, last lag and slot's retained WAL; the
    families are exposed (without samples) when replication is off."""

    def __init__(self, view: Callable[[], ReplicationView | None]) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        r = self.view()
        state = GaugeMetricFamily(
            "pgreactive_replication_state",
            "1 for this instance's replication state (standby: another instance reads)",
            labels=["database", "state"],
        )
        holder = GaugeMetricFamily(
            "pgreactive_replication_lease_holder",
            "1: the instance that holds the replication lease, as this instance last read it",
            labels=["database", "holder", "this_instance"],
        )
        transactions = CounterMetricFamily(
            "pgreactive_replication_transactions",
            "Committed transactions read from the stream and invalidated by this instance",
            labels=["database"],
        )
        lag = GaugeMetricFamily(
            "pgreactive_replication_last_lag_seconds",
            "The last replicated transaction this instance read: commit to invalidation done",
            labels=["database"],
        )
        retained = GaugeMetricFamily(
            "pgreactive_replication_retained_wal_bytes",
            "WAL the slot keeps (pg_current_wal_lsn() - restart_lsn), read by the lease holder",
            labels=["database", "slot"],
        )
        if r is not None:
            for name in REPLICATION_STATES:
                state.add_metric([r.database, name], 1 if name == r.state else 0)
            if r.lease_holder:
                holder.add_metric([r.database, r.lease_holder, r.holder], 1)
            transactions.add_metric([r.database], r.transactions)
            if r.lag_seconds is not None:
                lag.add_metric([r.database], r.lag_seconds)
            if r.retained_wal_bytes is not None:
                retained.add_metric([r.database, r.slot], r.retained_wal_bytes)
        yield from (state, holder, transactions, lag, retained)
