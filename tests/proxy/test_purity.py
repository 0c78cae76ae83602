"""The pure protocol core imports nothing that waits: no event loop, sockets, Redis, threads.

CONVENTIONS.md: everything that decides is pure and testable without sockets; everything
that waits lives in a few shell modules.  This reads the source with `ast` (nothing is
imported), so a forbidden import is caught even inside a function or under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_MODULES = [
    "proxy/codec.py",
    "proxy/framing.py",
    "proxy/tracker.py",
    "proxy/config.py",
    "proxy/errors.py",
]
FORBIDDEN = {"asyncio", "socket", "redis", "uvloop", "selectors", "threading"}


def imported_modules(source: str) -> set[str]:
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


@pytest.mark.parametrize("path", PURE_MODULES)
def test_pure_module_imports_nothing_that_waits(path: str) -> None:
    found = imported_modules((ROOT / path).read_text()) & FORBIDDEN
    assert not found, f"{path} imports {sorted(found)}: keep it sans-IO"


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import redis.asyncio as r",
        "from socket import socket",
        "from uvloop import install",
        "def f():\n    import threading",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import selectors",
        "mod = __import__('socket')",
        "import importlib\nmod = importlib.import_module('asyncio.events')",
    ],
)
def test_the_check_catches_each_kind_of_import(source: str) -> None:
    assert imported_modules(source) & FORBIDDEN


def test_the_check_lets_pure_imports_through() -> None:
    source = "import struct\nfrom proxy.codec import BackendTag\nfrom . import errors"
    assert not imported_modules(source) & FORBIDDEN


def test_a_shell_module_is_flagged() -> None:
    """session.py is a shell module: the check must see its asyncio import."""
    assert "asyncio" in imported_modules((ROOT / "proxy/session.py").read_text())
