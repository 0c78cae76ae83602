"""HTTP endpoints on the metrics address: /metrics, /healthz, /readyz, /stats.

Shell module, deliberately tiny: HTTP/1.0-style, one request per connection, GET only.
`/readyz` answers 200 when a TCP connection to the upstream succeeds, else 503.
`/stats` answers the per-query-shape counters (`cache.shapes`) as JSON, most called first
(``?sort=calls|hits|misses|bypass|latency|name`` and ``?limit=N`` change that):
``{"shapes": [{name, database, sql, calls, hits, misses, bypass, mean_latency_ms}, ...],
"bound": N, "total": M}``, or ``{"shapes": [], "cache": "off"}`` when the cache is off.

With `metrics.token` set, `/metrics` and `/stats` answer only a request carrying
``Authorization: Bearer TOKEN`` (else 401); `/healthz` and `/readyz` stay open for probes.

`/events` streams the invalidation events as Server-Sent Events (`proxy.sse`); it needs
Redis, and is served only while this port is bound to a loopback address (403 otherwise):
per-client token authorization is not implemented yet.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cache.shapes import SORTS
from proxy.config import Config, events_channel
from proxy.replication import reader_of
from proxy.sse import BadRequest, EventHub, options, serve_events

if TYPE_CHECKING:
    from cache.service import CacheService

log = logging.getLogger("pgreactive.http")


class HttpEndpoints:
    """Serves the observability endpoints for one proxy process."""

    def __init__(
        self, config: Config, registry: CollectorRegistry, cache: CacheService | None = None
    ) -> None:
        self.config = config
        self.registry = registry
        self.cache = cache
        self._server: asyncio.Server | None = None
        self.hub: EventHub | None = None  # made by the first GET /events

    async def start(self) -> None:
        assert self.config.metrics is not None
        address = self.config.metrics
        self._server = await asyncio.start_server(
            self._handle, address.host, address.port, reuse_address=True
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        log.info("metrics on http://%s:%d/metrics", host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.hub is not None:
            await self.hub.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            headers: dict[str, str] = {}
            async with asyncio.timeout(10):
                request = await reader.readline()
                while line := (await reader.readline()).strip():
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
            authorization = headers.get("authorization", "")
            parts = request.decode("latin-1").split()
            path, _, query = (parts[1] if len(parts) >= 2 else "").partition("?")
            method = parts[0] if parts else ""
            if path == "/events" and method == "GET":
                await self._events(reader, writer, query, headers.get("last-event-id", ""))
                return
            if path in _PROTECTED and not self._authorized(authorization):
                status, ctype, body = _UNAUTHORIZED
            else:
                status, ctype, body = await self._route(method, path, query)
            head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
            if status == _UNAUTHORIZED[0]:
                head += 'WWW-Authenticate: Bearer realm="pgreactive"\r\n'
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, TimeoutError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    async def _events(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        query: str,
        last_event_id: str,
    ) -> None:
        refusal = self._events_refusal()
        if refusal is None:
            try:
                keep, since = options(query, last_event_id)
            except BadRequest as exc:
                refusal = ("400 Bad Request", f"{exc}\n")
            else:
                if self.hub is None:
                    assert self.config.redis_url is not None
                    events = self.config.events
                    channel = events_channel(self.config)
                    self.hub = EventHub(self.config.redis_url, channel, events.sse_client_buffer)
                heartbeat = self.config.events.sse_heartbeat_seconds
                await serve_events(self.hub, heartbeat, reader, writer, keep, since)
                return
        status, text = refusal
        body = text.encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        await writer.drain()

    def _events_refusal(self) -> tuple[str, str] | None:
        """Why GET /events is not served here, as (status, text); None: it is."""
        if self.config.redis_url is None:
            return "503 Service Unavailable", "events need Redis (redis.url)\n"
        assert self.config.metrics is not None
        if not _loopback(self.config.metrics.host):
            return (
                "403 Forbidden",
                "GET /events is served only on a loopback metrics.listen address"
                " (token authorization is not implemented yet)\n",
            )
        return None

    def _authorized(self, authorization: str) -> bool:
        token = self.config.metrics_token
        if not token:
            return True
        scheme, _, given = authorization.partition(" ")
        given_bytes = given.strip().encode()  # bytes: compare_digest refuses non-ASCII str
        return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token.encode())

    async def _route(self, method: str, path: str, query: str = "") -> tuple[str, str, bytes]:
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            upstream = await self._upstream_reachable()
            cache = "off"
            if self.cache is not None:
                redis = self.config.redis_url is not None
                healthy = await self.cache.backend.healthy()
                cache = ("redis " if redis else "memory ") + ("up" if healthy else "down")
            ready: dict[str, object] = {"upstream": upstream, "cache": cache}
            reader = reader_of(self.cache)
            if reader is not None:
                ready["replication"] = reader.detail()
            body = json.dumps(ready).encode()
            status = "200 OK" if upstream else "503 Service Unavailable"
            return status, "application/json", body + b"\n"
        if path == "/stats":
            try:
                sort, limit = _stats_options(query)
            except ValueError as exc:
                return "400 Bad Request", "text/plain", f"{exc}\n".encode()
            return "200 OK", "application/json", self._stats(sort, limit) + b"\n"
        return "404 Not Found", "text/plain", b"not found\n"

    def _stats(self, sort: str, limit: int | None) -> bytes:
        if self.cache is None:
            return json.dumps({"shapes": [], "cache": "off"}).encode()
        return json.dumps(self.cache.shapes.document(sort, limit)).encode()

    async def _upstream_reachable(self) -> bool:
        upstream = self.config.upstream
        try:
            async with asyncio.timeout(min(upstream.connect_timeout, 2.0)):
                _, writer = await asyncio.open_connection(upstream.host, upstream.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True


_PROTECTED = frozenset({"/metrics", "/stats"})
_UNAUTHORIZED = ("401 Unauthorized", "text/plain", b"a bearer token is required\n")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _stats_options(query: str) -> tuple[str, int | None]:
    """``sort`` and ``limit`` of a /stats query string (ValueError: the reason)."""
    options = parse_qs(query)
    sort = options.get("sort", ["calls"])[-1]
    if sort not in SORTS:
        raise ValueError(f"sort: expected one of {', '.join(SORTS)}, got {sort!r}")
    limit_text = options.get("limit", [""])[-1]
    if not limit_text:
        return sort, None
    if not limit_text.isdigit():
        raise ValueError(f"limit: expected a number >= 0, got {limit_text!r}")
    return sort, int(limit_text)
