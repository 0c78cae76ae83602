"""``GET /events``: the invalidation events as Server-Sent Events, on the HTTP port.

Theory of operation.  One `EventHub` per process holds ONE Redis subscription to the events
channel (`proxy.config.events_channel`) and fans every payload out to the SSE clients in
process; each client has a bounded queue (`events.sse_client_buffer`).  The hub never waits
for a client: one whose queue is full is marked and disconnected (it reconnects with
``Last-Event-ID`` and replays what it missed), so a slow reader slows nobody else.  When the
subscription fails, every client is disconnected the same way and the next client
subscribes again: events are never silently lost in between.

A client (`serve_events`) joins the hub first (the subscription is confirmed by then, and
live events queue up for it from that moment), then, when it sent ``Last-Event-ID`` (the
header, or ``?lastEventId=``), replays the stream after that id, then delivers live events,
dropping every one whose id is not newer than the last one handled: no gap and no duplicate,
the technique `proxy.eventfeed` describes (shared with ``events tail --since``).  When the
stream no longer holds everything after that id (trimmed by ``events.stream_maxlen``, or
recreated), one ``event: resync`` (its ``id:`` the stream's newest) tells the client to
revalidate everything it holds, and live events follow.

Every message is ``id: <stream id>``, ``event: invalidation``, ``data: <the event JSON>``;
``?tables=a,b`` and ``?org=X`` filter (`proxy.eventfeed.EventFilter`).  A ``: ping``
comment goes out after `events.sse_heartbeat_seconds` without a message.  A client that
goes away ends its stream quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from typing import Any
from urllib.parse import parse_qs

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from cache.keys import bare
from proxy.eventfeed import (
    STREAM_ID,
    EventFilter,
    decode,
    lost_after,
    newer,
    replay,
    stream_state,
)

log = logging.getLogger("pgreactive.sse")

_REDIS_TIMEOUT = 5.0  # seconds to connect, subscribe, and for each replay command
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection
_HEAD = (
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n"
)


class Subscriber:
    """One SSE client's bounded queue of live payloads; `closed` says why it must end."""

    def __init__(self, size: int, writer: asyncio.StreamWriter) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.writer = writer
        self.closed: str | None = None

    def offer(self, payload: bytes) -> None:
        if self.closed is not None:
            return
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            log.info("events: disconnected a client too slow to read: its buffer filled")
            self.close("too slow: its buffer (events.sse_client_buffer) filled")

    def close(self, reason: str) -> None:
        """End the client's stream at once, even when it is stuck writing to the client:
        the connection is reset, dropping what the kernel still buffers for it (the client
        reconnects with Last-Event-ID)."""
        if self.closed is None:
            self.closed = reason
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)  # wakes a reader waiting on an empty queue
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            self.writer.transport.abort()


class EventHub:
    """One Redis subscription to `channel`, shared by every SSE client of this process."""

    def __init__(self, redis_url: str, channel: str, buffer: int) -> None:
        self.channel = channel
        self.buffer = buffer
        self.client = Redis.from_url(
            redis_url,
            socket_connect_timeout=_REDIS_TIMEOUT,
            socket_timeout=_REDIS_TIMEOUT,  # commands; the subscription's read blocks forever
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),  # a silent reconnect would lose events: fail instead
        )
        self.subscribers: set[Subscriber] = set()
        self.subscriptions = 0  # how many times the hub subscribed (one while Redis holds)
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def join(self, writer: asyncio.StreamWriter) -> Subscriber:
        """A new subscriber writing to `writer`: every event published from now on reaches
        its queue (raises RedisError or OSError when the subscription cannot be made)."""
        async with self._lock:
            if self._task is None or self._task.done():
                await self._subscribe()
            subscriber = Subscriber(self.buffer, writer)
            self.subscribers.add(subscriber)
            return subscriber

    def leave(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    async def _subscribe(self) -> None:
        pubsub: Any = self.client.pubsub()
        try:
            async with asyncio.timeout(_REDIS_TIMEOUT):
                await pubsub.subscribe(self.channel)
                confirmed: Any = await pubsub.get_message(timeout=_REDIS_TIMEOUT)
            if confirmed is None or confirmed["type"] != "subscribe":
                raise RedisError(f"the subscription was not confirmed: {confirmed}")
        except BaseException:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
            raise
        self._pubsub = pubsub
        self.subscriptions += 1
        self._task = asyncio.get_running_loop().create_task(self._fan_out(pubsub))

    async def _fan_out(self, pubsub: Any) -> None:
        try:
            while True:
                message: Any = await pubsub.get_message(timeout=None)
                if message is not None and message["type"] == "message":
                    for subscriber in list(self.subscribers):
                        subscriber.offer(message["data"])
        except (RedisError, OSError) as exc:
            log.warning("events: the subscription to %s failed: %s", self.channel, exc)
            self._drop_all("the Redis subscription failed")
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    def _drop_all(self, reason: str) -> None:
        for subscriber in self.subscribers:
            subscriber.close(reason)
        self.subscribers.clear()

    async def close(self) -> None:
        self._drop_all("the server is stopping")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


class BadRequest(ValueError):
    """A malformed query or Last-Event-ID; the message says which."""


def options(query: str, last_event_id: str) -> tuple[EventFilter, str | None]:
    """The filter and the id to resume after, from the query string and the header (the
    header wins over ``?lastEventId=``, as a browser's EventSource sends it on reconnect)."""
    params = parse_qs(query)
    tables = {bare(t) for v in params.get("tables", []) for t in v.split(",") if t.strip()}
    orgs = {o for v in params.get("org", []) for o in v.split(",") if o}
    since = last_event_id.strip() or params.get("lastEventId", [""])[-1].strip() or None
    if since is not None and not STREAM_ID.fullmatch(since):
        raise BadRequest(f"Last-Event-ID: expected an event id like 1764158400123-0, got {since!r}")
    return EventFilter(frozenset(t.strip() for t in tables), frozenset(orgs)), since


def message(event_id: str, event: str, data: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"id: {event_id}\nevent: {event}\n{lines}\n".encode()


class _Stream:
    """The events one client gets: deduplicated against what it already has, filtered."""

    def __init__(self, writer: asyncio.StreamWriter, keep: EventFilter, last: str | None):
        self.writer = writer
        self.keep = keep
        self.last = last

    async def offer(self, payload: bytes, stream_id: str | None = None) -> None:
        event = decode(payload)
        event_id = stream_id or (event or {}).get("eventId")
        if not isinstance(event_id, str) or event is None:
            return  # not an event of ours: nothing to resume from
        if not newer(event_id, self.last):
            return  # replayed already
        self.last = event_id
        if self.keep.keeps(event):
            _send(self.writer, message(event_id, "invalidation", payload.decode()))
            await self.writer.drain()


async def serve_events(
    hub: EventHub,
    heartbeat: float,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    keep: EventFilter,
    since: str | None,
) -> None:
    """Stream events to one client until it goes away, falls behind, or the hub drops it.
    A Redis failure before the stream starts answers 503."""
    try:
        subscriber = await hub.join(writer)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("events: cannot subscribe to %s: %s", hub.channel, exc)
        _send(
            writer,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Connection: close\r\n\r\nthe event subscription failed\n",
        )
        await writer.drain()
        return
    watcher = asyncio.get_running_loop().create_task(_until_eof(reader))
    try:
        _send(writer, _HEAD.encode())
        stream = _Stream(writer, keep, since)
        if since is not None:
            await _catch_up(hub, stream, since)
        await _live(subscriber, stream, heartbeat, watcher)
    except (RedisError, TimeoutError) as exc:
        log.warning("events: replay from %s failed: %s", hub.channel, exc)
    finally:
        hub.leave(subscriber)
        watcher.cancel()


async def _catch_up(hub: EventHub, stream: _Stream, since: str) -> None:
    state = await stream_state(hub.client, hub.channel)
    if lost_after(state, since):
        newest = state.last if state is not None else "0-0"
        data = json.dumps({"reason": "events after the given id are no longer kept"})
        _send(stream.writer, message(newest, "resync", data))
        stream.last = newest
        await stream.writer.drain()
        return
    async for entry_id, payload in replay(hub.client, hub.channel, since):
        await stream.offer(payload, entry_id)


async def _live(
    subscriber: Subscriber, stream: _Stream, heartbeat: float, watcher: asyncio.Task[None]
) -> None:
    while subscriber.closed is None and not watcher.done():
        if subscriber.queue.empty():
            await stream.writer.drain()
            getter = asyncio.ensure_future(subscriber.queue.get())
            done, _ = await asyncio.wait(
                {getter, watcher}, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                if not done:
                    _send(stream.writer, b": ping\n\n")
                continue
            payload = getter.result()
        else:
            payload = subscriber.queue.get_nowait()
        if payload is not None and subscriber.closed is None:
            await stream.offer(payload)


def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write, or raise ConnectionResetError when the connection is gone (uvloop raises
    RuntimeError for a write to a closed transport)."""
    if writer.is_closing():
        raise ConnectionResetError("the client went away")
    writer.write(data)


async def _until_eof(reader: asyncio.StreamReader) -> None:
    """Returns when the client closes its side (an SSE client sends nothing more)."""
    with contextlib.suppress(OSError):
        while await reader.read(4096):
            pass
