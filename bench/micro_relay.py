"""Micro-benchmarks of pgreactive's per-transaction relay work, on real pgbench -S bytes.

Usage: .venv/bin/python bench/micro_relay.py          (PYTHONPATH=DIR to time another copy)

The byte strings below were captured between pgbench 15 and Postgres 15 (one transaction of
`pgbench -S`): in simple mode the client sends one Query and Postgres answers RowDescription,
DataRow, CommandComplete, ReadyForQuery; in prepared mode libpq sends Bind, Describe(portal),
Execute, Sync in one write and Postgres answers BindComplete, RowDescription, DataRow,
CommandComplete, ReadyForQuery in one write.

Part 3 is a sketch of the
whole round trip done lean (offsets instead of copies, names only, no dataclasses, int tags,
the chunk forwarded as is) to show what the same bookkeeping can cost.
Part 1 times the proxy's own code: a whole round trip through `ClientSession` with no-op
transports (everything pgreactive does in Python per transaction except the event loop and
the two socket writes), then each piece alone.  Part 2 times sketches of cheaper
alternatives (not the proxy's code) on the same bytes, to estimate what a change could save.
Numbers are the best of 5 repeats, in µs per call: this machine is noisy, so trust only
differences well above ~0.2 µs.
"""

from __future__ import annotations

import struct
import sys
import timeit
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

from proxy import codec, framing, session, tracker
from proxy.codec import BackendTag
from proxy.config import load
from proxy.server import Server

F_SIMPLE = b"Q\x00\x00\x00>SELECT abalance FROM pgbench_accounts WHERE aid = 246310;\x00"
B_SIMPLE = bytes.fromhex(
    "540000002100016162616c616e6365000000402b00030000001700"
    "04ffffffff0000440000000b00010000000130430000000d53454c454354203100"
    "5a0000000549"
)
F_PREPARED = (
    b"B\x00\x00\x00\x1b\x00P_0\x00\x00\x00\x00\x01\x00\x00\x00\x06720559\x00\x01\x00\x00"
    b"D\x00\x00\x00\x06P\x00E\x00\x00\x00\t\x00\x00\x00\x00\x00S\x00\x00\x00\x04"
)
B_PREPARED = b"2\x00\x00\x00\x04" + B_SIMPLE
_DECODED = session._DECODED


def best(stmt: object, number: int = 20000) -> float:
    """µs per call, best of 5."""
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


class _Sink:
    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1)


def ready_session() -> session.ClientSession:
    """A session in READY state with no-op client and upstream transports."""
    server = Server(load(None, {}, {"cache.enabled": False}))
    s = session.ClientSession(server)
    s.client = _Sink()  # type: ignore[assignment]
    s.upstream = SimpleNamespace(transport=_Sink())  # type: ignore[assignment]
    s.state = session.State.READY
    s.reader.startup = False
    return s


def messages(chunk: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(chunk):
        length = int.from_bytes(chunk[pos + 1 : pos + 5], "big")
        out.append((chunk[pos], chunk[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def show(label: str, fn: Callable[[], object], number: int = 20000) -> None:
    print(f"  {label:<48s} {best(fn, number):6.2f}")


def part1() -> None:
    pending_for = getattr(tracker, "pending_for", None) or vars(session)["_pending_for"]
    print("part 1: pgreactive's own code (µs per call)")
    for mode, f, b in (("simple", F_SIMPLE, B_SIMPLE), ("prepared", F_PREPARED, B_PREPARED)):
        s = ready_session()
        try:
            s.data_received(f)
            s.upstream_data(b)
            show(f"{mode}: whole round trip", partial(round_trip, s, f, b))
        except Exception as exc:  # the tree may be mid-refactor
            print(f"  {mode}: whole round trip failed ({exc!r})")
        reader = framing.FrontendReader(1 << 20)
        reader.startup = False
        show(f"{mode}:   FrontendReader.feed", partial(reader.feed, f))
        show(f"{mode}:   BackendScanner.feed", partial(framing.BackendScanner(_DECODED).feed, b))
        for tag, payload in messages(f):
            show(f"{mode}:   pending_for({chr(tag)})", partial(pending_for, tag, payload))
        entries = [e for e in (pending_for(t, p) for t, p in messages(f)) if e is not None]
        decoded = [(t, p) for t, p in messages(b) if t in _DECODED]
        tr = tracker.Tracker()
        show(
            f"{mode}:   Tracker: {len(entries)} push + {len(decoded)} on_backend",
            partial(tracker_cycle, tr, entries, decoded),
        )
        show(f"{mode}:   Tracker: {len(entries)} push alone", partial(pushes, tr, entries))
    show("Tracker() construction", tracker.Tracker)
    show("Pending(Request.SYNC)", partial(tracker.Pending, tracker.Request.SYNC))
    show(
        "Pending(BIND, name=, statement=)",
        partial(tracker.Pending, tracker.Request.BIND, name="", statement="P_0"),
    )
    show("codec.decode_bind (parameters too)", partial(codec.decode_bind, F_PREPARED[5:28]))
    show("BackendTag.READY_FOR_QUERY == 90", partial(BackendTag.READY_FOR_QUERY.__eq__, 90))


def round_trip(s: session.ClientSession, f: bytes, b: bytes) -> None:
    s.data_received(f)
    s.upstream_data(b)


def tracker_cycle(tr: tracker.Tracker, entries: list[Any], decoded: list[Any]) -> None:
    for entry in entries:
        tr.push(entry)
    for tag, payload in decoded:
        tr.on_backend(tag, payload)


def pushes(tr: tracker.Tracker, entries: list[Any]) -> None:
    for entry in entries:
        tr.push(entry)
    tr.pending.clear()


# --- part 2: sketches of cheaper alternatives ---------------------------------------------

_unpack_len = struct.Struct("!I").unpack_from


def feed_offsets(data: bytes) -> list[tuple[int, int, int]]:
    """FrontendReader fast path when its buffer is empty: offsets, no copies, no bytearray."""
    out = []
    pos, n = 0, len(data)
    while n - pos >= 5:
        (length,) = _unpack_len(data, pos + 1)
        end = pos + 1 + length
        if end > n:
            break  # the rest goes to the buffer (slow path)
        out.append((data[pos], pos + 5, end))
        pos = end
    return out


def bind_names(data: bytes, start: int) -> tuple[str, str]:
    """Portal and statement names of a Bind, nothing else (parameters not decoded)."""
    z1 = data.index(0, start)
    z2 = data.index(0, z1 + 1)
    return data[start:z1].decode(), data[z1 + 1 : z2].decode()


_DECODE_SET = {ord("2"), ord("T"), ord("C"), ord("Z")}


def scan_offsets(data: bytes) -> list[tuple[int, int, int]]:
    """BackendScanner without payload slices: (tag, start, end) of decoded messages."""
    out = []
    pos, n = 0, len(data)
    while pos < n:
        (length,) = _unpack_len(data, pos + 1)
        tag = data[pos]
        end = pos + 1 + length
        if tag in _DECODE_SET:
            out.append((tag, pos + 5, end))
        pos = end
    return out


class Slot:
    """A Pending with __slots__ and a positional __init__ (no dataclass keyword defaults)."""

    __slots__ = ("kind", "name", "request", "sql", "statement")

    def __init__(self, request: object, name: str = "", statement: str = "") -> None:
        self.request = request
        self.name = name
        self.statement = statement
        self.sql = ""
        self.kind = ""


def part2() -> None:
    print("part 2: sketches of alternatives (µs per call)")
    reader = framing.FrontendReader(1 << 20)
    reader.startup = False
    show("FrontendReader.feed(prepared) now", partial(reader.feed, F_PREPARED))
    show("  offsets fast path, no copies", partial(feed_offsets, F_PREPARED))
    out = [F_PREPARED[:28], F_PREPARED[28:35], F_PREPARED[35:45], F_PREPARED[45:]]
    show("  b''.join of the 4 messages (avoidable)", partial(b"".join, out))
    show("codec.decode_bind now", partial(codec.decode_bind, F_PREPARED[5:28]))
    show("  names only (two index + decode)", partial(bind_names, F_PREPARED, 5))
    show("codec.decode_execute(unnamed) now", partial(codec.decode_execute, F_PREPARED[40:45]))
    show("  unnamed fast path (payload == const)", partial(bytes(5).__eq__, F_PREPARED[40:45]))
    show(
        "BackendScanner.feed(prepared) now",
        partial(framing.BackendScanner(_DECODED).feed, B_PREPARED),
    )
    show("  offsets, no payload slices", partial(scan_offsets, B_PREPARED))
    req = tracker.Request
    show(
        "Pending(BIND, ...) dataclass now",
        partial(tracker.Pending, req.BIND, name="", statement="P_0"),
    )
    show("  __slots__ class, positional", partial(Slot, req.BIND, "", "P_0"))
    show("  shared immutable SYNC entry (no alloc)", partial(id, None))
    table = {int(t): i for i, t in enumerate(BackendTag)}
    show("dict dispatch table[tag] (vs a match chain)", partial(table.__getitem__, 90))


# --- part 3: a lean round trip doing the same tracking, as one sketch ----------------------

_T_Q, _T_B, _T_D, _T_E, _T_S = b"QBDES"
_T_ROW, _T_CC, _T_RFQ, _T_BC, _T_RD, _T_ND = b"DCZ2Tn"
_BIND, _DESCRIBE, _EXECUTE, _QUERY, _SYNC = "BIND", "DESCRIBE", "EXECUTE", "QUERY", "SYNC"
_SYNC_ENTRY = Slot(_SYNC)  # shared: a Sync entry carries nothing


class LeanTracker:
    __slots__ = ("pending", "portals", "status")

    def __init__(self) -> None:
        from collections import deque

        self.pending: deque[Slot] = deque()
        self.portals: dict[str, str] = {}
        self.status = 73


def lean_client(tr: LeanTracker, data: bytes, write: object) -> None:
    """Client chunk (buffer empty, whole messages): record pending entries, forward as is."""
    pend, pos, n = tr.pending, 0, len(data)
    while pos < n:
        tag = data[pos]
        (length,) = _unpack_len(data, pos + 1)
        end = pos + 1 + length
        if tag == _T_B:
            z1 = data.index(0, pos + 5)
            z2 = data.index(0, z1 + 1)
            pend.append(Slot(_BIND, data[pos + 5 : z1].decode(), data[z1 + 1 : z2].decode()))
        elif tag == _T_E:
            pend.append(
                Slot(_EXECUTE, "" if data[pos + 5] == 0 else data[pos + 5 : end - 5].decode())
            )
        elif tag == _T_S:
            pend.append(_SYNC_ENTRY)
        elif tag == _T_D:
            pend.append(
                Slot(_DESCRIBE, "" if data[pos + 6] == 0 else data[pos + 6 : end - 1].decode())
            )
        elif tag == _T_Q:
            e = Slot(_QUERY)
            e.sql = data[pos + 5 : end - 1].decode()
            pend.append(e)
        pos = end
    write(data)  # type: ignore[operator]


def lean_backend(tr: LeanTracker, data: bytes, write: object) -> None:
    """Backend chunk: pop what each message answers; DataRow costs one header read."""
    pend, pos, n = tr.pending, 0, len(data)
    while pos < n:
        tag = data[pos]
        (length,) = _unpack_len(data, pos + 1)
        if tag == _T_ROW:
            pass
        elif tag == _T_CC:
            if pend and pend[0].request is _EXECUTE:
                pend.popleft()
            if data.startswith((b"DEALLOCATE ALL", b"DISCARD ALL"), pos + 5):
                tr.portals.clear()
        elif tag == _T_RFQ:
            tr.status = data[pos + 5]
            while pend:
                if pend.popleft().request in (_SYNC, _QUERY):
                    break
            if tr.status == 73:
                tr.portals.clear()
        elif tag in (_T_BC, _T_RD, _T_ND) and pend and pend[0].request is not _QUERY:
            head = pend.popleft()
            if tag == _T_BC:
                tr.portals[head.name] = head.statement
        pos += 1 + length
    write(data)  # type: ignore[operator]


def part3() -> None:
    print("part 3: lean sketch of the whole round trip (µs per transaction)")
    sink = _Sink().write
    for mode, f, b in (("simple", F_SIMPLE, B_SIMPLE), ("prepared", F_PREPARED, B_PREPARED)):
        tr = LeanTracker()

        lean_round_trip(tr, f, b, sink)
        assert not tr.pending
        show(f"{mode}: lean round trip", partial(lean_round_trip, tr, f, b, sink))


def lean_round_trip(tr: LeanTracker, f: bytes, b: bytes, sink: object) -> None:
    lean_client(tr, f, sink)
    lean_backend(tr, b, sink)


if __name__ == "__main__":
    print(f"python {sys.version.split()[0]}, proxy from {session.__file__}")
    part1()
    part2()
    part3()
