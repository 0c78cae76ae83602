"""What the cache service is told: the cache-level part of the configuration.

Pure module: one frozen value, no I/O.  `cache.service.CacheService` takes a `CacheSettings`
instead of the proxy's whole `proxy.config.Config`, which the proxy projects onto this value
(`proxy.config.cache_settings`): the cache layer then imports no `proxy/` module, and it sees
only the keys it uses.  A SIGHUP reload hands the service a new value, never a mutated one
(`CacheService.reload`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The configuration `CacheService` runs with (built by `proxy.config.cache_settings`)."""

    upstream_id: str  # "host:port" of the upstream as configured: part of every key
    root: str  # the namespace: every key, the event channel and the stream start with it
    default_ttl: int  # `cache.*`, as in config.example.yaml
    ttl: Mapping[str, int]
    exclude: frozenset[str]
    scope_columns: tuple[str, ...]
    relations: Mapping[str, tuple[str, ...]]
    max_result_bytes: int
    inflight_ttl: float  # seconds an unconfirmed in-flight mark lives
    catalog_max_age: float | None  # `catalog.max_age` (None: reload only after DDL)
    catalog_wait: float  # how long a session's first read waits for its database's catalog
    channel: str  # the full event channel (and stream) name
    stream_maxlen: int
    requires_ack: bool
    source: str  # what events call this instance; empty: host name and `instance_port`
    instance_port: int  # the configured listen port
    in_process: bool  # no Redis: the events are logged, so that they can be seen
