"""A fault-injecting TCP relay for tests: put it between the proxy and Postgres, then cut.

One background thread runs a selector loop that accepts on 127.0.0.1:<port>, connects each
accepted socket to the target and copies bytes both ways.  `cut()` aborts every relayed
connection at once (RST on both sides, as when a server or a network path dies) while the
relay keeps accepting new ones, so a test can check that the proxy survives and serves new
sessions.  With `record=True` it keeps what each accepted connection sent towards the
target, so a test can assert that nothing reached Postgres.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any


class FaultRelay:
    """Relay 127.0.0.1:`port` → `target`, with faults on command."""

    def __init__(self, target_host: str, target_port: int, *, record: bool = False) -> None:
        self.target = (target_host, target_port)
        self.record = record
        self.recorded: list[bytearray] = []  # per accepted connection: bytes sent to target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._commands: queue.Queue[tuple[Callable[[], Any], threading.Event, list[Any]]] = (
            queue.Queue()
        )
        self._peers: dict[socket.socket, socket.socket] = {}
        self._records: dict[socket.socket, bytearray] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="fault-relay", daemon=True)
        self._thread.start()

    # --- commands (any thread) -------------------------------------------------------

    def cut(self) -> int:
        """Reset every relayed connection now; return how many there were."""
        return int(self._call(self._cut))

    def connections(self) -> int:
        """How many connections are being relayed."""
        return int(self._call(lambda: len(self._peers) // 2))

    def close(self) -> None:
        """Cut everything and stop the relay thread."""
        if not self._thread.is_alive():
            return
        self._call(self._stop)
        self._thread.join(10)

    def __enter__(self) -> FaultRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], Any]) -> Any:
        done = threading.Event()
        result: list[Any] = []
        self._commands.put((fn, done, result))
        self._wake_w.send(b"x")
        if not done.wait(10):
            raise RuntimeError("fault relay did not answer")
        return result[0]

    # --- the loop (relay thread) -----------------------------------------------------

    def _run(self) -> None:
        sel = self._selector
        sel.register(self._listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping:
                for key, _ in sel.select(0.5):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._run_commands()
                    else:
                        self._pump(key.fileobj)  # type: ignore[arg-type]
        finally:
            self._cut()
            sel.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _run_commands(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)
        while not self._commands.empty():
            fn, done, result = self._commands.get()
            result.append(fn())
            done.set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(True)
            s.settimeout(5)  # sendall to a stuck peer must not wedge the relay forever
        self._peers[client] = upstream
        self._peers[upstream] = client
        if self.record:
            record = bytearray()
            self.recorded.append(record)
            self._records[client] = record
        self._selector.register(client, selectors.EVENT_READ, "pump")
        self._selector.register(upstream, selectors.EVENT_READ, "pump")

    def _pump(self, sock: socket.socket) -> None:
        peer = self._peers.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(sock, reset=False)
            return
        record = self._records.get(sock)
        if record is not None:
            record += data
        try:
            peer.sendall(data)
        except OSError:
            self._drop(sock, reset=True)

    def _drop(self, sock: socket.socket, *, reset: bool) -> None:
        peer = self._peers.pop(sock, None)
        pair = [sock] if peer is None else [sock, peer]
        if peer is not None:
            self._peers.pop(peer, None)
        for s in pair:
            self._records.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            if reset:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    def _cut(self) -> int:
        count = len(self._peers) // 2
        for s in list(self._peers):
            if s in self._peers:
                self._drop(s, reset=True)
        return count

    def _stop(self) -> None:
        self._stopping = True
