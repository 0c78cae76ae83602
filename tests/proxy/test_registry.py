"""`proxy.registry.choose`: which registered deployment a tool means (issue 13: no host
spelling games, and never a silent guess between several)."""

from __future__ import annotations

import pytest

from proxy.config import Config, events_channel, load, namespace
from proxy.registry import NotRegistered, Registration, adopt, choose, registration


def _config(**overrides: str) -> Config:
    return load(None, {}, {"redis.url": "redis://r:6379/3", **overrides})


SERVER = registration(_config(**{"upstream.url": "postgresql://127.0.0.1:5432"}))
OTHER = registration(_config(namespace="other", **{"upstream.url": "postgresql://db2:5432"}))


def test_the_derived_namespace_is_found_by_name() -> None:
    tool = _config(**{"upstream.url": "postgresql://127.0.0.1:5432"})
    assert choose(tool, {r.namespace: r for r in (SERVER, OTHER)}) == SERVER


def test_another_spelling_of_the_upstream_finds_the_only_registered_server() -> None:
    tool = _config(**{"upstream.url": "postgresql://localhost:5432"})
    record = choose(tool, {SERVER.namespace: SERVER})
    adopted = adopt(tool, record)
    # Keys and channel are named as the server names them, not as the tool spells it.
    assert (adopted.upstream.host, namespace(adopted)) == ("127.0.0.1", SERVER.namespace)
    assert events_channel(adopted) == SERVER.channel


@pytest.mark.parametrize(
    ("overrides", "registered", "message"),
    [
        ({"namespace": "nope"}, [SERVER], "no pgreactive server registered namespace nope"),
        ({}, [], "no pgreactive server has registered here"),
        ({"upstream.url": "postgresql://localhost:5432"}, [SERVER, OTHER], "give --namespace"),
    ],
    ids=["unknown-namespace", "none-registered", "ambiguous"],
)
def test_no_fitting_registration_is_an_error(
    overrides: dict[str, str], registered: list[Registration], message: str
) -> None:
    with pytest.raises(NotRegistered, match=message):
        choose(_config(**overrides), {r.namespace: r for r in registered})
