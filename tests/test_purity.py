"""The pure core imports nothing that waits: no event loop, sockets, TLS, Redis, threads.

CONVENTIONS.md: everything that decides is pure and testable without sockets; everything
that waits lives in a few shell modules.  One list, `PURE`, names every pure module of the
three packages (the whole of `analyzer/`); each must import none of `FORBIDDEN` and, of our
own modules, only pure ones (so a shell module cannot bring asyncio in by the back door).
The sources are read with `ast` (`tests.test_layers`), so an import counts wherever it is:
inside a function, under TYPE_CHECKING, or spelled ``__import__("socket")``.
"""

from __future__ import annotations

import ast

import pytest

from tests.test_layers import GRAPH, modules

PURE = sorted(
    {name for name in GRAPH if name.split(".")[0] == "analyzer"}
    | {
        "proxy.assembly",
        "proxy.capture",
        "proxy.codec",
        "proxy.config",
        "proxy.errors",
        "proxy.framing",
        "proxy.state",
        "proxy.tracker",
        "cache.eligibility",
        "cache.changes",
        "cache.entry",
        "cache.keys",
        "cache.pgoutput",
        "cache.planner",
        "cache.settings",
        "cache.shapes",
    }
)
FORBIDDEN = frozenset(
    {"asyncio", "socket", "ssl", "redis", "uvloop", "selectors", "threading", "hiredis"}
)
SOURCES = modules()


def imported_roots(source: str) -> set[str]:
    """Top-level names of every module `source` imports, wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_nothing_that_waits(module: str) -> None:
    found = imported_roots(SOURCES[module].read_text()) & FORBIDDEN
    assert not found, f"{module} imports {sorted(found)}: keep it sans-IO"


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_only_pure_modules_of_ours(module: str) -> None:
    impure = sorted(GRAPH[module] - set(PURE))
    assert not impure, f"{module} imports shell modules {impure}"


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import redis.asyncio as r",
        "from socket import socket",
        "import ssl",
        "from uvloop import install",
        "def f():\n    import threading",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import selectors",
        "mod = __import__('socket')",
        "import importlib\nmod = importlib.import_module('asyncio.events')",
    ],
)
def test_the_check_catches_each_kind_of_import(source: str) -> None:
    assert imported_roots(source) & FORBIDDEN


def test_the_check_lets_pure_imports_through() -> None:
    source = "import struct\nfrom proxy.codec import BackendTag\nfrom . import errors"
    assert not imported_roots(source) & FORBIDDEN


def test_a_shell_module_is_flagged() -> None:
    """session.py is a shell module: the checks must see its asyncio import, and that it
    is not pure."""
    assert "asyncio" in imported_roots(SOURCES["proxy.session"].read_text())
    assert "proxy.session" not in PURE and "proxy.session" in GRAPH["proxy.server"]
