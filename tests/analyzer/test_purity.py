"""Pure packages never import I/O or concurrency machinery (CONVENTIONS.md).

Generic: extend PURE_PACKAGES with other pure packages or modules (e.g. "proxy.codec").
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

PURE_PACKAGES = ["analyzer"]
FORBIDDEN = frozenset({"asyncio", "socket", "redis", "uvloop", "selectors", "threading"})


def module_files(name: str) -> list[tuple[str, Path]]:
    """(module name, source path) of a module or of every module of a package."""
    module = importlib.import_module(name)
    found = [(name, Path(module.__file__ or ""))]
    if hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{name}."):
            sub = importlib.import_module(info.name)
            found.append((info.name, Path(sub.__file__ or "")))
    return found


def imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


CASES = [
    pytest.param(path, id=name) for package in PURE_PACKAGES for name, path in module_files(package)
]


@pytest.mark.parametrize("path", CASES)
def test_module_is_pure(path: Path) -> None:
    assert not imported_roots(path.read_text()) & FORBIDDEN


def test_the_check_can_fail() -> None:
    assert imported_roots("import asyncio\nfrom redis import Redis\n") & FORBIDDEN == {
        "asyncio",
        "redis",
    }
