"""config.example.yaml is the configuration reference: it must state exactly the defaults and
name every key of the schema (walked from the `Config` dataclasses), each under a comment, so
that adding a setting without documenting it fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from proxy.config import Config, load, settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
SCHEMA = frozenset(settings(Config()))
_KEY_LINE = re.compile(r"^( *)([a-z_]+):")


def _file_keys(raw: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted keys of a loaded file; a mapping is walked into only where the schema has
    keys below it (`cache`), not where its keys are the user's (`cache.ttl`, `relations`)."""
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and any(s.startswith(key + ".") for s in SCHEMA):
            yield from _file_keys(value, key + ".")
        else:
            yield key


def _commented_keys(text: str) -> dict[str, bool]:
    """Each key line's dotted key, and whether the line just above it is a comment."""
    out: dict[str, bool] = {}
    path: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = _KEY_LINE.match(line)
        if match is None:
            continue
        depth = len(match[1]) // 2
        path = [*path[:depth], match[2]]
        above = lines[number - 1].strip() if number else ""
        out[".".join(path)] = above.startswith("#")
    return out


def test_schema_walk_finds_the_nested_and_renamed_keys() -> None:
    """The walk itself: sections are walked into, renamed fields have their file keys."""
    assert {"cache.ttl", "upstream.url", "redis.url", "log.level", "metrics.listen"} <= SCHEMA
    assert not {"cache", "upstream.host", "redis_url", "log_level", "metrics"} & SCHEMA


def test_loading_the_example_gives_exactly_the_defaults() -> None:
    assert load(EXAMPLE.read_text(), {}, {}) == load(None, {}, {})


def test_every_schema_key_is_in_the_example_and_nothing_else() -> None:
    keys = list(_file_keys(yaml.safe_load(EXAMPLE.read_text())))
    assert sorted(SCHEMA - set(keys)) == [], "keys missing from config.example.yaml"
    assert sorted(set(keys) - SCHEMA) == [], "keys in config.example.yaml the schema lacks"


def test_every_key_has_a_comment_above_it() -> None:
    commented = _commented_keys(EXAMPLE.read_text())
    assert set(commented) >= SCHEMA
    assert sorted(key for key in SCHEMA if not commented[key]) == []
