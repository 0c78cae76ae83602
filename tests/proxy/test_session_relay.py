"""The relay-only session's inlined paths agree with the pure tracker, in every split.

`ClientSession` walks client and upstream chunks in place when it relays without a cache
(`_relay_fresh`, `_relay_plain_fresh`) and falls back to `FrontendReader`/`BackendScanner`
when a chunk does not start at a message boundary.  Recorded conversations are fed to a
session with no-op transports whole, byte by byte and cut in two at every offset; after
every round the session's tracker must be where the pure `Tracker` (fed the decoded
messages one by one) is, and the bytes must come out unchanged on both sides.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from proxy.config import load
from proxy.server import Server
from proxy.session import _DECODED, ClientSession, State
from proxy.tracker import Tracker, pending_for
from tests.proxy import recorded

Rounds = list[tuple[bytes, bytes]]

CONVERSATIONS: dict[str, Rounds] = {
    "simple": [(recorded.SIMPLE_SELECT_FE, recorded.SIMPLE_SELECT_BE)],
    "extended": [(recorded.EXTENDED_FE, recorded.EXTENDED_BE)],
    "asyncpg": recorded.ASYNCPG_ROUNDS,
    "psycopg": recorded.PSYCOPG_ROUNDS,
    "pipeline-error": recorded.PIPELINE_ERROR_ROUNDS,
    "suspended": recorded.SUSPENDED_ROUNDS,
    "copy-in-extended": recorded.COPY_IN_EXTENDED_ROUNDS,
    "copy-in-simple": recorded.COPY_IN_SIMPLE_ROUNDS,
    "query-while-skipping": recorded.QUERY_WHILE_SKIPPING_ROUNDS,
    "deferred-at-sync": recorded.DEFERRED_AT_SYNC_ROUNDS,
    "deallocate-all": recorded.DEALLOCATE_ALL_ROUNDS,
}


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _session() -> tuple[ClientSession, _Sink, _Sink]:
    session = ClientSession(Server(load(None, {}, {"cache.enabled": False})))
    client, upstream = _Sink(), _Sink()
    session.client = client  # type: ignore[assignment]
    session.upstream = SimpleNamespace(transport=upstream)  # type: ignore[assignment]
    session.state = State.READY
    session.reader.startup = False
    return session, client, upstream


def _messages(chunk: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos < len(chunk):
        length = int.from_bytes(chunk[pos + 1 : pos + 5], "big")
        yield chunk[pos], chunk[pos + 5 : pos + 1 + length]
        pos += 1 + length


def _snapshot(tracker: Tracker) -> tuple[object, ...]:
    return (
        tracker.status,
        dict(tracker.statements),
        dict(tracker.portals),
        [(e.request, e.name, e.kind) for e in tracker.pending],
        tracker.skipping,
        tracker.copy_in,
    )


def _reference(rounds: Rounds) -> list[tuple[object, ...]]:
    """The pure tracker's state after each round."""
    tracker = Tracker()
    states = []
    for frontend, backend in rounds:
        for tag, payload in _messages(frontend):
            entry = pending_for(tag, payload)
            if entry is not None:
                tracker.push(entry)
        for tag, payload in _messages(backend):
            if tag in _DECODED:
                tracker.on_backend(tag, payload)
        states.append(_snapshot(tracker))
    return states


def _splits(data: bytes, how: str, cut: int = 0) -> list[bytes]:
    if how == "whole":
        return [data]
    if how == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    return [data[:cut], data[cut:]]


def _run(rounds: Rounds, how: str, cut: int = 0) -> None:
    session, client, upstream = _session()
    expected = _reference(rounds)
    sent_up = sent_down = b""
    for (frontend, backend), state in zip(rounds, expected, strict=True):
        for piece in _splits(frontend, how, cut % (len(frontend) + 1)):
            session.data_received(piece)
        for piece in _splits(backend, how, cut % (len(backend) + 1)):
            session.upstream_data(piece)
        sent_up += frontend
        sent_down += backend
        assert _snapshot(session.tracker) == state
        assert bytes(upstream.data) == sent_up
        assert bytes(client.data) == sent_down
    assert session.state is State.READY


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("how", ["whole", "bytes"])
def test_relay_agrees_with_tracker(name: str, how: str) -> None:
    _run(CONVERSATIONS[name], how)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_relay_agrees_with_tracker_cut_anywhere(name: str) -> None:
    longest = max(max(len(f), len(b)) for f, b in CONVERSATIONS[name])
    for cut in range(longest + 1):
        _run(CONVERSATIONS[name], "cut", cut)


def test_shared_entries_are_never_changed() -> None:
    """Relay-only sessions share the entries of Bind, the unnamed Execute/Describe and Sync:
    nothing may change them."""
    session, _, _ = _session()
    for _ in range(2):
        for frontend, backend in recorded.ASYNCPG_ROUNDS:
            session.data_received(frontend)
            session.upstream_data(backend)
    from proxy import session as module

    assert session._binds  # the Bind entries are shared too
    shared_entries = [module._UNNAMED_EXECUTE, module._UNNAMED_PORTAL_DESCRIBE, module.SYNC_ENTRY]
    for bind in session._binds.values():
        assert bind.statement == "__asyncpg_stmt_1__"
        bind.statement = ""  # (so the checks below apply to it unchanged)
        shared_entries.append(bind)
    for shared in shared_entries:
        assert (shared.name, shared.sql, shared.statement, shared.hidden) == ("", "", "", False)
        assert shared.capture is None and shared.analysis is None and shared.params == ()
