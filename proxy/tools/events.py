"""``pgreactive events tail``: print the invalidation events, one JSON object per line.

The proxy publishes every event on the Redis channel ``NAMESPACE:CHANNEL``
(`proxy.config.events_channel`) and appends the identical payload, which carries its own
stream id as ``eventId``, to the Redis Stream of the same name
(`cache.store.RedisBackend.publish`).  This tool subscribes to the channel and writes each
payload unchanged to stdout, one per line, flushed at once so a pipe sees it.

The namespace is the one the server registered in its Redis database (`proxy.registry`):
the ``--namespace`` given, or the one derived from the tool's own configuration, or the only
one registered; several registered and none of them meant is an error.  Live events and the
``--since`` replay come from the same channel and stream name, so they always agree.

``--since ID`` replays what came after ID from the stream, then follows live.  The order
closes the race between the two: subscribe first (live events now queue up in the
subscription), then read the stream, then drop every live event whose ``eventId`` is not
newer than the last one printed.  Stream ids increase, and the proxy's script XADDs and
PUBLISHes in one atomic step, so the channel delivers events in id order: nothing is
missed and nothing is printed twice.

Exit codes: 0 on SIGINT or SIGTERM (or when the reader of stdout goes away), 1 with one
line when Redis is not configured, cannot be reached, or is lost (that line names the last
event printed, to resume with ``--since``), 2 for a bad flag or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any, TextIO

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from cache.backend import parse_stream_id
from cache.keys import bare
from proxy.config import Config, ConfigError, events_channel
from proxy.eventfeed import (
    STREAM_ID,
    EventFilter,
    decode,
    newer,
    replay,
    stream_state,
    trimmed_after,
)
from proxy.registry import NotRegistered, adopt, channel_note, choose, registrations
from proxy.tools import EXIT_CONFIG, Subcommands, redacted, tool_command, tool_config

PROG = "pgreactive events tail"
EXIT_REDIS = 1
_CONNECT_TIMEOUT = 5.0  # seconds to reach Redis (and for each replay command)


class RedisFailure(Exception):
    """Redis could not be reached or was lost; the message is the one line to print."""


class Printer:
    """Writes events to stdout, one line each, flushed per line; remembers the last id."""

    def __init__(self, keep: EventFilter, last: str | None, out: TextIO) -> None:
        self.keep = keep
        self.last = last  # the newest event id printed or skipped as replayed
        self.out = out

    def offer(self, payload: bytes, stream_id: str | None = None) -> None:
        """Print `payload` unless it is old (already replayed) or filtered out.

        `stream_id` is given for replayed entries; live ones carry it as ``eventId``.
        """
        event = decode(payload)
        event_id = stream_id or (event or {}).get("eventId")
        if isinstance(event_id, str):
            if not newer(event_id, self.last):
                return
            self.last = event_id
        if event is None:
            print(f"{PROG}: skipped a payload that is not a JSON object", file=sys.stderr)
        elif self.keep.keeps(event):
            self.out.write(payload.decode() + "\n")
            self.out.flush()


async def _replay(client: Redis, channel: str, since: str, printer: Printer) -> int:
    """Print what the stream holds after `since`; the number of entries read."""
    count = 0
    async for entry_id, payload in replay(client, channel, since):
        printer.offer(payload, entry_id)  # sets .last
        count += 1
    return count


async def _trimmed_after(client: Redis, channel: str, since: str) -> str | None:
    """The stream's oldest entry, when events after `since` may have been trimmed."""
    try:
        return trimmed_after(await stream_state(client, channel), since)
    except RedisError:
        return None


async def _subscribe(pubsub: Any, channel: str, where: str) -> None:
    """Subscribe and wait for the confirmation: from then on every event reaches us."""
    try:
        await pubsub.subscribe(channel)
        confirmed: Any = await pubsub.get_message(timeout=_CONNECT_TIMEOUT)
    except (RedisError, OSError) as exc:
        raise RedisFailure(f"cannot reach Redis at {where}: {exc}") from None
    if confirmed is None or confirmed["type"] != "subscribe":
        raise RedisFailure(f"Redis at {where} did not confirm the subscription: {confirmed}")
    print(f"{PROG}: subscribed to {channel} on {where}", file=sys.stderr, flush=True)


async def _catch_up(client: Redis, channel: str, since: str, printer: Printer) -> None:
    """Print the stream's events after `since`, saying on stderr how many and what the
    stream no longer had."""
    oldest = await _trimmed_after(client, channel, since)
    replayed = await _replay(client, channel, since, printer)
    plural = "s" * (replayed != 1)
    print(f"{PROG}: replayed {replayed} event{plural} after {since}", file=sys.stderr)
    if oldest is not None and parse_stream_id(since) != (0, 0):
        print(
            f"{PROG}: events after {since} and before {oldest} may have been trimmed from the"
            " stream (events.stream_maxlen) and could not be replayed",
            file=sys.stderr,
        )


async def _channel(client: Redis, config: Config, where: str) -> str:
    """The channel of the server `config` means, as it registered it in Redis; with no
    registration at all (no server started yet), the one `config` names, said on stderr."""
    try:
        registered = await registrations(client)
    except (RedisError, OSError) as exc:
        raise RedisFailure(f"cannot reach Redis at {where}: {exc}") from None
    try:
        record = choose(config, registered)
    except NotRegistered as exc:
        if registered:
            raise RedisFailure(f"{exc} (Redis at {where})") from None
    else:
        config = adopt(config, record)
        note = channel_note(config, record)
        if note is not None:
            print(f"{PROG}: {note}", file=sys.stderr)
        return events_channel(config)
    channel = events_channel(config)
    print(
        f"{PROG}: no server has registered in Redis at {where} yet; following {channel}",
        file=sys.stderr,
    )
    return channel


async def follow(config: Config, since: str | None, keep: EventFilter, out: TextIO) -> None:
    """Subscribe, replay from `since` if given, then print live events until cancelled."""
    assert config.redis_url is not None
    where = redacted(config.redis_url)
    client = Redis.from_url(
        config.redis_url,
        socket_connect_timeout=_CONNECT_TIMEOUT,
        socket_timeout=_CONNECT_TIMEOUT,  # commands; the subscription's read blocks forever
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),  # a silent reconnect would lose events: fail instead
    )
    pubsub: Any = client.pubsub()  # redis-py leaves PubSub partly untyped
    printer = Printer(keep, since, out)
    try:
        channel = await _channel(client, config, where)
        await _subscribe(pubsub, channel, where)
        try:
            if since is not None:
                await _catch_up(client, channel, since, printer)
            while True:
                message: Any = await pubsub.get_message(timeout=None)
                if message is not None and message["type"] == "message":
                    printer.offer(message["data"])
        except BrokenPipeError:
            raise  # stdout's reader went away: not a Redis failure
        except (RedisError, OSError) as exc:
            resume = f"; resume with --since {printer.last}" if printer.last else ""
            raise RedisFailure(f"Redis at {where} failed: {exc}{resume}") from None
    finally:
        with contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()


async def _run(config: Config, since: str | None, keep: EventFilter) -> int:
    """`follow` until SIGINT/SIGTERM (0), a Redis failure (1) or a closed stdout (0)."""
    task = asyncio.get_running_loop().create_task(follow(config, since, keep, sys.stdout))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        return 0
    except RedisFailure as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_REDIS
    return 0  # (a closed stdout raises BrokenPipeError, which `proxy.cli.main` handles)


def add_commands(subparsers: Subcommands) -> None:
    events = subparsers.add_parser(
        "events", help="follow the invalidation events", description="Invalidation events."
    )
    actions = events.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = tool_command(
        actions,
        "tail",
        "print invalidation events, one JSON per line",
        "Print pgreactive's invalidation events, one JSON per line, as they are published.",
    )
    p.add_argument(
        "--since",
        metavar="ID",
        help="first replay the events after this event id from the stream (0: all it holds)",
    )
    p.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="T",
        help="only events naming table T (repeatable; whole-database events always pass)",
    )
    p.add_argument(
        "--org",
        action="append",
        default=[],
        metavar="X",
        help="only events whose organizationId is X (repeatable)",
    )
    p.set_defaults(run=_tail, parser=p)


def _tail(args: argparse.Namespace) -> int:
    if args.since is not None and not STREAM_ID.fullmatch(args.since):
        args.parser.error(
            f"--since: expected an event id like 1764158400123-0, got {args.since!r}"
        )
    try:
        config = tool_config(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.redis_url is None:
        print(
            f"{PROG}: no Redis configured (--redis, redis.url or PGREACTIVE_REDIS): events are"
            " published only to Redis; a server without Redis (in-memory cache) only logs them",
            file=sys.stderr,
        )
        return EXIT_REDIS
    keep = EventFilter(frozenset(bare(t) for t in args.table), frozenset(args.org))
    with asyncio.Runner() as runner:
        return runner.run(_run(config, args.since, keep))
