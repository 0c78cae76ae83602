"""The server's admission rule (no sockets): the connection limit, the cap on refused
clients waiting for their start-up packet, and the limit the descriptors can hold."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import Config, LimitsConfig
from proxy.server import REFUSED_WAITING_MAX, Server, client_capacity
from proxy.session import Admission


@pytest.mark.parametrize(
    ("open_files", "wanted", "capacity"),
    [
        pytest.param(20000, 1000, 1000, id="plenty"),
        pytest.param(1024, 1000, 462, id="default-ulimit"),
        pytest.param(160, 1000, 30, id="tight"),
        pytest.param(101, 1000, 1, id="reserve-only"),
        pytest.param(40, 1000, 1, id="below-the-reserve"),
        pytest.param(1 << 20, 5, 5, id="configured-is-smaller"),
    ],
)
def test_client_capacity(open_files: int, wanted: int, capacity: int) -> None:
    assert client_capacity(open_files, wanted) == capacity


def _server(limit: int) -> Server:
    return Server(Config(limits=LimitsConfig(max_client_connections=limit)))


def test_admission_admits_then_refuses_then_drops() -> None:
    server = _server(2)
    sessions: list[Any] = [object() for _ in range(2 + REFUSED_WAITING_MAX + 2)]
    got = [server.session_opened(s) for s in sessions]
    assert got == (
        [Admission.ADMITTED] * 2
        + [Admission.REFUSED] * REFUSED_WAITING_MAX
        + [Admission.DROPPED] * 2
    )
    assert server.stats.client_connections == len(sessions)
    assert server.stats.client_connections_refused == REFUSED_WAITING_MAX + 2
    # A refused client that goes frees a waiting place, not a served one...
    server.session_closed(sessions[2], Admission.REFUSED)
    assert server.session_opened(object()) is Admission.REFUSED  # type: ignore[arg-type]
    assert server.session_opened(object()) is Admission.DROPPED  # type: ignore[arg-type]
    # ...and an admitted client that goes frees a served one.
    server.session_closed(sessions[0], Admission.ADMITTED)
    assert server.session_opened(object()) is Admission.ADMITTED  # type: ignore[arg-type]
    assert server.session_opened(object()) is Admission.DROPPED  # type: ignore[arg-type]


def test_closing_twice_counts_once() -> None:
    server = _server(1)
    session: Any = object()
    assert server.session_opened(session) is Admission.ADMITTED
    server.session_closed(session, Admission.ADMITTED)
    server.session_closed(session, Admission.ADMITTED)
    assert server.stats.client_connections == 0
    assert server.session_opened(object()) is Admission.ADMITTED  # type: ignore[arg-type]
