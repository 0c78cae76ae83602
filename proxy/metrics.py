"""Metrics: every `pgreactive_*` metric, and the counters the hot path bumps.

The relay bumps plain integer attributes on one `Stats` object (no locks, no label lookups
per message); a Prometheus collector reads them at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(slots=True)
class Stats:
    """Counters and gauges of the relay, bumped in place."""

    client_connections: int = 0
    client_connections_total: int = 0
    upstream_connections: int = 0
    bytes_to_upstream: int = 0
    bytes_to_client: int = 0
    protocol_errors: int = 0


class StatsCollector(Collector):
    """Exposes a `Stats` object in Prometheus form."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

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
