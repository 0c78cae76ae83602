"""Command line: ``pgreactive [--config FILE] [--listen HOST:PORT] [--upstream URL] ...``.

Precedence, lowest first: defaults, the config file, `PGREACTIVE_*` environment variables,
flags.  A bad flag or config value prints one line naming the key and exits with code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from typing import Any, NoReturn

from prometheus_client import CollectorRegistry

from proxy.config import Config, ConfigError, load

EXIT_CONFIG = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"pgreactive: {message}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pgreactive", description="Reactive caching PostgreSQL proxy.")
    p.add_argument("--config", metavar="FILE", help="YAML configuration file")
    p.add_argument("--listen", metavar="HOST:PORT", help="address clients connect to")
    p.add_argument("--upstream", metavar="postgresql://HOST:PORT", help="the Postgres server")
    p.add_argument("--redis", metavar="redis://HOST:PORT/DB", help="Redis for the cache")
    p.add_argument("--no-cache", action="store_true", help="relay only, never cache")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve /metrics, /healthz, /readyz")
    p.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR")
    return p


def config_from_args(argv: list[str], environ: dict[str, str]) -> Config:
    """Parse flags and build the configuration (raises ConfigError)."""
    args = _parser().parse_args(argv)
    text = None
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {args.config}: {exc.strerror}") from None
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("listen", "listen"),
        ("upstream", "upstream.url"),
        ("redis", "redis.url"),
        ("metrics", "metrics.listen"),
        ("log_level", "log.level"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.no_cache:
        overrides["cache.enabled"] = False
    return load(text, environ, overrides)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        return json.dumps(entry)


def setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)


async def serve(config: Config) -> None:
    """Run the proxy until SIGTERM/SIGINT, then shut down gracefully."""
    from proxy.http import HttpEndpoints
    from proxy.metrics import Latency, Stats, StatsCollector
    from proxy.server import Server

    registry = CollectorRegistry()
    stats = Stats()
    cache = None
    if config.cache.enabled:
        cache = _cache_service(config, stats, Latency(registry))
        await cache.start()
    server = Server(config, cache, stats)
    await server.start()
    http = None
    if config.metrics is not None:
        registry.register(
            StatsCollector(stats, lambda: cache.available if cache is not None else None)
        )
        http = HttpEndpoints(config, registry, cache)
        await http.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    if http is not None:
        http.close()
    await server.shutdown()
    if cache is not None:
        await cache.close()


def _cache_service(config: Config, stats: Any, latency: Any) -> Any:
    from cache.backend import Backend
    from cache.memory import MemoryBackend
    from cache.service import CacheService
    from cache.store import RedisBackend

    backend: Backend
    if config.redis_url:
        backend = RedisBackend.from_url(
            config.redis_url, op_timeout=config.redis_timeout, connect_timeout=config.redis_timeout
        )
    else:
        logging.getLogger("pgreactive").info(
            "no Redis configured: in-memory cache for this process only"
        )
        backend = MemoryBackend()
    return CacheService(config, backend, stats, latency)


# Subcommands: the first argument names a tool module with `main(argv) -> int`.
TOOLS = {
    "check-config": "proxy.tools.check_config",
    "events": "proxy.tools.events",
    "stats": "proxy.tools.stats",
    "cache": "proxy.tools.cache",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        tool: Any = importlib.import_module(TOOLS[argv[0]])
        return int(tool.main(argv[1:]))
    try:
        config = config_from_args(argv, dict(os.environ))
    except ConfigError as exc:
        print(f"pgreactive: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
