"""A/B of server-side TLS: `proxy.tls.ClientTLS` (ssl.MemoryBIO) against uvloop's
`loop.start_tls`, as server CPU per round trip of a TLS echo (not a test, not pass/fail).

Usage: .venv/bin/python bench/tls_ab.py CERT KEY [ROUND_TRIPS]   (e.g. from `make dev-certs`)

Each rep starts a uvloop echo server in a subprocess whose protocol puts TLS on its socket
after the first byte (as the proxy does after SSLRequest), either way; one client does
120-byte ping-pongs; the server's user+system CPU comes from /proc/PID/stat.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def serve(mode: str, port: int, cert: str, key: str) -> None:
    import uvloop

    from proxy.tls import ClientTLS

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Echo(asyncio.Protocol):
        def __init__(self) -> None:
            self.transport: asyncio.Transport | None = None
            self.first = True

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            assert self.transport is not None
            if not self.first:
                self.transport.write(data)
                return
            self.first = False
            if mode == "bio":
                self.transport = ClientTLS(
                    context, self.transport, self, alpn_required=False, conn=0
                )
            else:
                asyncio.get_running_loop().create_task(self._start_tls())

        async def _start_tls(self) -> None:
            assert self.transport is not None
            loop = asyncio.get_running_loop()
            self.transport = await loop.start_tls(
                self.transport, self, context, server_side=True
            )

    loop = uvloop.new_event_loop()
    loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", port))
    print("ready", flush=True)
    loop.run_forever()


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _ping_pong(port: int, n: int) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"x")  # the server's cue to start TLS
    time.sleep(0.05)
    with context.wrap_socket(sock) as tls:
        message = b"Q" * 120
        for _ in range(n):
            tls.sendall(message)
            got = 0
            while got < len(message):
                got += len(tls.recv(65536))


def main(cert: str, key: str, n: int) -> None:
    for rep in range(3):
        for mode in ("bio", "start_tls"):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            server = subprocess.Popen(
                [sys.executable, __file__, "--serve", mode, str(port), cert, key],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert server.stdout is not None
            server.stdout.readline()
            before = _cpu(server.pid)
            _ping_pong(port, n)
            used = _cpu(server.pid) - before
            print(f"rep {rep} {mode:9} {used / n * 1e6:5.1f} µs server CPU per round trip")
            server.kill()
            server.wait()


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 20000)
