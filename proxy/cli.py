"""Command line: ``pgreactive [--config FILE] [--listen HOST:PORT] [--upstream URL] ...``.

Precedence, lowest first: defaults, the config file, `PGREACTIVE_*` environment variables,
flags.  A bad flag or config value prints one line naming the key and exits with code 2.

SIGHUP re-reads the file (the environment and flags still win over it) and applies what may
change while clients stay connected (`proxy.config.RELOADABLE`); a changed key that needs a
restart is logged as a warning, and a bad file is logged as one error line and ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from proxy import tls
from proxy.config import (
    Config,
    ConfigError,
    cache_settings,
    load,
    namespace,
    plan_reload,
    read_config_file,
)
from proxy.metrics import Histograms, Stats, version

if TYPE_CHECKING:
    from cache.service import CacheService
    from proxy.server import Server

EXIT_CONFIG = 2
log = logging.getLogger("pgreactive")


class ListenError(Exception):
    """A listening address could not be bound; the message is the one line to print."""


def _parser() -> argparse.ArgumentParser:
    from proxy.tools import ToolParser, cache, check_config, events, replication, stats

    p = ToolParser(
        prog="pgreactive",
        description="Reactive caching PostgreSQL proxy. Without a command it runs the proxy"
        " with the options below; each command has its own --help.",
    )
    p.add_argument("--version", action="version", version=f"pgreactive {version()}")
    p.add_argument("--config", metavar="FILE", help="YAML configuration file")
    p.add_argument("--listen", metavar="HOST:PORT", help="address clients connect to")
    p.add_argument("--upstream", metavar="postgresql://HOST:PORT", help="the Postgres server")
    p.add_argument("--redis", metavar="redis://HOST:PORT/DB", help="Redis for the cache")
    p.add_argument(
        "--namespace", metavar="NS", help="prefix of Redis keys and event channel (see docs)"
    )
    p.add_argument("--no-cache", action="store_true", help="relay only, never cache")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve /metrics, /healthz, /readyz")
    p.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--log-format", metavar="FORMAT", help="text, or json: one object per line")
    p.set_defaults(run=None)
    commands = p.add_subparsers(title="commands", metavar="COMMAND")
    for tool in (check_config, stats, events, cache, replication):
        tool.add_commands(commands)
    return p


def config_from_args(argv: list[str], environ: dict[str, str]) -> Config:
    """Parse flags and build the configuration (raises ConfigError)."""
    return _config(_parser().parse_args(argv), environ)


def _config(args: argparse.Namespace, environ: dict[str, str]) -> Config:
    """The configuration for parsed flags: read the file, merge environment and flags."""
    text = read_config_file(args.config)
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("listen", "listen"),
        ("upstream", "upstream.url"),
        ("redis", "redis.url"),
        ("namespace", "namespace"),
        ("metrics", "metrics.listen"),
        ("log_level", "log.level"),
        ("log_format", "log.format"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.no_cache:
        overrides["cache.enabled"] = False
    return load(text, environ, overrides, source=args.config or "config file")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC), level, logger, msg, conn (the connection id, for
    a message about one connection), exc (a traceback, kept on the same line)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        conn = connection_id(record)
        if conn is not None:
            entry["conn"] = conn
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def connection_id(record: logging.LogRecord) -> int | None:
    """The connection a log record is about: ``extra={"conn": N}``, or the first argument
    of a message that starts ``conn=%d`` (as every per-connection message does), read
    without formatting anything."""
    conn = getattr(record, "conn", None)
    if isinstance(conn, int):
        return conn
    args = record.args
    if (
        isinstance(record.msg, str)
        and record.msg.startswith("conn=%d")
        and isinstance(args, tuple)
        and args
        and isinstance(args[0], int)
    ):
        return args[0]
    return None


def setup_logging(config: Config) -> None:
    """Send log records to stderr in the configured format and level (again on reload)."""
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)


class Reloader:
    """SIGHUP: load the configuration again (same file, environment and flags) and apply
    what may change without dropping a connection; a bad file changes nothing."""

    def __init__(
        self,
        running: Config,
        reread: Callable[[], Config],
        server: Server,
        cache: CacheService | None,
    ) -> None:
        self.running = running
        self.reread = reread
        self.server = server
        self.cache = cache

    def __call__(self) -> None:
        try:
            loaded = self.reread()
        except ConfigError as exc:
            log.error("config reload failed, keeping the running configuration: %s", exc)
            return
        plan = plan_reload(self.running, loaded)
        self.running = plan.config
        if {"log.level", "log.format"} & set(plan.applied):
            setup_logging(plan.config)
        self.server.config = plan.config
        self.server.reload_tls()
        if self.cache is not None:
            self.cache.reload(cache_settings(plan.config))
        for key in plan.restart:
            log.warning("config reload: %s changed, but that needs a restart; not applied", key)
        changed = f"changed {', '.join(plan.applied)}" if plan.applied else "no changes"
        log.info("config reloaded: %s", changed)


async def serve(config: Config, reread: Callable[[], Config] | None = None) -> None:
    """Run the proxy until SIGTERM/SIGINT, then shut down gracefully; on SIGHUP, reload
    the configuration from `reread` (when given)."""
    from proxy.http import HttpEndpoints
    from proxy.metrics import (
        Latency,
        ReplicationCollector,
        Stats,
        StatsCollector,
        redis_round_trips,
        standard_collectors,
        upstream_round_trips,
    )
    from proxy.replication import reader_of
    from proxy.server import Server

    registry = CollectorRegistry()
    standard_collectors(registry)
    stats = Stats()
    cache = None
    registering = None
    if config.cache.enabled:
        redis = redis_round_trips(registry) if config.redis_url else None
        cache = _cache_service(config, stats, redis)
        _replication_metrics(registry, cache)
        await cache.start()
        registering = await _register(cache, config)
    connect = upstream_round_trips(registry).observers["connect"]
    server = Server(config, cache, stats, connect, Latency(registry))
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if reread is not None:  # before listening: an early SIGHUP must not end the process
        loop.add_signal_handler(signal.SIGHUP, Reloader(config, reread, server, cache))
    http = None
    try:
        await _listen(server.start(), f"listen {config.listen}")
        if config.metrics is not None:
            registry.register(
                StatsCollector(stats, lambda: cache.available if cache is not None else None)
            )
            registry.register(
                ReplicationCollector(lambda: reader_of(cache))
            )
            http = HttpEndpoints(config, registry, cache)
            await _listen(http.start(), f"metrics.listen {config.metrics}")
    except ListenError:
        if registering is not None:
            registering.cancel()
        await server.shutdown()  # (nothing to wait for: no client got in yet)
        if cache is not None:
            await cache.close()
        raise
    await stopping.wait()
    if registering is not None:
        registering.cancel()
    if http is not None:
        await http.close()
    await server.shutdown()
    if cache is not None:
        await cache.close()


def _replication_metrics(registry: CollectorRegistry, cache: CacheService) -> None:
    """The lag histogram (its family without samples when replication is off)."""
    from proxy.metrics import replication_lag
    from proxy.replication import reader_of

    reader = reader_of(cache)
    lag = replication_lag(registry, reader.database if reader is not None else None)
    if reader is not None:
        reader.observe_lag = lag.observers[reader.database]


async def _register(cache: CacheService, config: Config) -> asyncio.Task[None] | None:
    """Register the namespace in Redis for the tools (`proxy.registry`); when Redis is not
    there yet, a task retries until it is."""
    from cache.store import RedisBackend
    from proxy.registry import keep_registering, register

    backend = getattr(cache.backend, "inner", cache.backend)  # under a TimedBackend
    if not isinstance(backend, RedisBackend) or await register(backend.client, config):
        return None
    return asyncio.get_running_loop().create_task(keep_registering(backend.client, config))


async def _listen(start: Awaitable[None], what: str) -> None:
    """Bind a listener; a taken or unusable address is a ListenError."""
    try:
        await start
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError(f"{what}: cannot listen there: {reason}") from None


def _cache_service(
    config: Config, stats: Stats, round_trips: Histograms | None
) -> CacheService:
    from cache.backend import Backend
    from cache.keys import global_epoch
    from cache.memory import MemoryBackend
    from cache.service import CacheService
    from cache.store import RedisBackend
    from cache.timing import TimedBackend
    from proxy.pgclient import CatalogLogin

    backend: Backend
    epoch = global_epoch(namespace(config))
    if config.redis_url:
        backend = RedisBackend.from_url(
            config.redis_url,
            epoch_key=epoch,
            op_timeout=config.redis_timeout,
            connect_timeout=config.redis_timeout,
        )
        if round_trips is not None:
            backend = TimedBackend(backend, round_trips.observers)
    else:
        logging.getLogger("pgreactive").info(
            "no Redis configured: in-memory cache for this process only"
        )
        backend = MemoryBackend(epoch_key=epoch)
    service = CacheService(
        cache_settings(config), backend, stats, CatalogLogin.from_config(config)
    )
    if config.replication.enabled:
        from proxy.replication import Replication

        service.replication = Replication(service, config)
    return service


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # The reader of stdout went away (``pgreactive stats | head``): stop quietly, and
        # keep the interpreter's final flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.run is not None:
        code = int(args.run(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler
        return code
    try:
        config = _config(args, dict(os.environ))
        tls.contexts(config)  # the certificate files can be used (the server loads them again)
    except ConfigError as exc:
        print(f"pgreactive: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config)
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(config, lambda: _config(args, dict(os.environ))))
    except ListenError as exc:
        print(f"pgreactive: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
