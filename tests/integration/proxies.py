"""Starting proxies of a test's own: with a config file, and checked for crashes at the end."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator

from tests.conftest import ProxyProcess, start_proxy

# What a Python or asyncio/uvloop crash inside the proxy looks like in its log.
_CRASH = re.compile(
    r"Traceback \(most recent call last\)|Exception in callback|exception was never retrieved"
)


@contextlib.contextmanager
def running_proxy(*args: str, config: str | None = None) -> Iterator[ProxyProcess]:
    """A ``python -m proxy --no-cache ARGS`` (plus ``--config`` with `config` as the YAML)."""
    path = None
    argv = ["--no-cache", *args]
    if config is not None:
        fd, path = tempfile.mkstemp(prefix="pgr-config-", suffix=".yaml")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(config)
        argv += ["--config", path]
    try:
        proxy = start_proxy(*argv)
        try:
            yield proxy
        finally:
            proxy.stop()
    finally:
        if path is not None:
            os.unlink(path)


def assert_no_crash(proxy: ProxyProcess) -> None:
    """The proxy is alive and logged no unhandled exception."""
    assert proxy.process.poll() is None, f"proxy exited ({proxy.process.returncode}):\n{proxy.log}"
    lines = list(proxy.lines)
    first = next((i for i, line in enumerate(lines) if _CRASH.search(line)), None)
    if first is not None:
        excerpt = "\n".join(lines[max(0, first - 5) : first + 40])
        raise AssertionError("unhandled exception in the proxy:\n" + excerpt)
