"""Which deployments use a Redis database: the servers register, the tools look them up.

Every key, the event channel and the stream of a deployment start with its namespace
(`proxy.config.namespace`), and per-database keys also hash the upstream *as the server
spells it*.  A tool run with a different spelling (``localhost`` for ``127.0.0.1``) or
without the server's exact configuration would compute other names and silently act on
nothing.  So a server writes what it uses into the one un-namespaced key `REGISTRY_KEY` (a
hash: namespace → JSON) when it starts, and the tools (`pgreactive cache flush`,
`pgreactive events tail`) take the namespace, upstream identity and channel from there
(`choose`, `adopt`) instead of recomputing them.  The channel's suffix (`events.channel`)
still comes from the tool's configuration: give the tools the server's configuration file.

A registration is overwritten by the next server of the same namespace and never removed
(a stopped server's entry stays: it names keys that still exist).

It lives in `proxy/` (it was `cache/registry.py`): what it registers and how a tool picks a
deployment is the proxy's `Config` (namespace, upstream, channel), and the cache layer
never needs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.config import Config, events_channel, namespace
from proxy.metrics import version

log = logging.getLogger("pgreactive.registry")

REGISTRY_KEY = "pgreactive:namespaces"
_RETRY_SECONDS = 5.0


class NotRegistered(Exception):
    """No registration fits; the message is the one line to print."""


@dataclass(frozen=True, slots=True)
class Registration:
    """What one deployment's servers use in this Redis database."""

    namespace: str
    upstream_host: str
    upstream_port: int
    channel: str  # the full channel (and stream) name
    version: str = ""
    registered: str = ""  # when, ISO 8601 UTC

    @property
    def upstream(self) -> str:
        return f"{self.upstream_host}:{self.upstream_port}"

    def describe(self) -> str:
        return f"{self.namespace} (upstream {self.upstream})"


def registration(config: Config) -> Registration:
    """What a server running with `config` registers."""
    return Registration(
        namespace=namespace(config),
        upstream_host=config.upstream.host,
        upstream_port=config.upstream.port,
        channel=events_channel(config),
        version=version(),
        registered=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )


async def register(client: Redis, config: Config) -> bool:
    """Register the server's namespace (one attempt); False if Redis failed."""
    record = registration(config)
    value = json.dumps(asdict(record), separators=(",", ":"))
    try:
        await client.hset(REGISTRY_KEY, record.namespace, value)
    except (RedisError, OSError) as exc:
        log.debug("could not register namespace %s: %s", record.namespace, exc)
        return False
    log.info("namespace %s: events on %s", record.namespace, record.channel)
    return True


async def keep_registering(client: Redis, config: Config) -> None:
    """Retry `register` until it succeeds (Redis was down when the server started)."""
    while not await register(client, config):
        await asyncio.sleep(_RETRY_SECONDS)


async def registrations(client: Redis) -> dict[str, Registration]:
    """Every namespace registered in `client`'s database (entries it cannot read skipped)."""
    raw: Any = await client.hgetall(REGISTRY_KEY)
    out: dict[str, Registration] = {}
    for name, value in raw.items():
        try:
            record = Registration(**json.loads(value))
        except (TypeError, ValueError):
            continue
        out[name.decode() if isinstance(name, bytes) else str(name)] = record
    return out


def choose(config: Config, registered: Mapping[str, Registration]) -> Registration:
    """The registration a tool run with `config` means: its namespace (given, or derived
    from its own upstream and Redis database); else, when no namespace was given and only
    one deployment is registered, that one.  Raises NotRegistered."""
    name = namespace(config)
    if name in registered:
        return registered[name]
    known = ", ".join(r.describe() for r in sorted(registered.values(), key=_by_name))
    if config.namespace:
        also = f" (registered: {known})" if known else ""
        raise NotRegistered(f"no pgreactive server registered namespace {name} here{also}")
    if len(registered) == 1:
        return next(iter(registered.values()))
    if not registered:
        raise NotRegistered(
            "no pgreactive server has registered here (a server with the cache on registers"
            " its namespace in its Redis database when it starts)"
        )
    raise NotRegistered(
        f"{len(registered)} namespaces are registered here, none of them {name} (derived from"
        f" upstream {config.upstream.host}:{config.upstream.port}): {known}; give --namespace"
    )


def _by_name(record: Registration) -> str:
    return record.namespace


def adopt(config: Config, record: Registration) -> Config:
    """`config` with the registered namespace and upstream: keys, channel and stream named
    as that server names them.  The channel's name after the namespace stays `config`'s
    (instances of one deployment may publish on several); `channel_note` tells when the
    registering server used another."""
    return replace(
        config,
        namespace=record.namespace,
        upstream=replace(config.upstream, host=record.upstream_host, port=record.upstream_port),
    )


def channel_note(config: Config, record: Registration) -> str | None:
    """A note when `config` (adopted) names another channel than the server registered."""
    channel = events_channel(config)
    if channel == record.channel:
        return None
    return f"note: the server registered channel {record.channel}; using {channel} (events.channel)"
