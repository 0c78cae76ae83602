"""Comments that carry meaning: sqlcommenter tags and no-cache hints.

Knows: the sqlcommenter format (`/*key='value',key2='value2'*/`, URL-encoded values, at
the start or the end of a statement) and the hint spellings `/* NO CACHE */`,
`/*+ no_cache */`, `/*NO QUERY CACHE*/`, `-- no-cache`.
Must not know: anything about the statement itself.
Invariants: a pure function of the text. Comments are found by a regex, not the lexer,
so a string literal that looks like a comment may count as one: that can only add a
no-cache hint (safe) or a wrong query name (cosmetic).

query_name: the `query` (or `name`) tag if present; else `controller.action` when both
are present; else `route`; else `action`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_COMMENT = re.compile(r"/\*(.*?)\*/|--([^\n]*)", re.DOTALL)
_PAIR = re.compile(r"\s*([^=,\s]+)\s*=\s*'((?:[^'\\]|\\.)*)'\s*,?")
_HINT = re.compile(r"\bno[\s_-]*(?:query[\s_-]*)?cache\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class CommentInfo:
    """What the comments of a statement say."""

    query_name: str | None = None
    no_cache: bool = False


NO_COMMENT = CommentInfo()


def read_comments(sql: str) -> CommentInfo:
    """Query name and no-cache hint from the comments in `sql`."""
    if "/*" not in sql and "--" not in sql:
        return NO_COMMENT
    name: str | None = None
    no_cache = False
    for match in _COMMENT.finditer(sql):
        text = match.group(1) if match.group(1) is not None else match.group(2)
        if _HINT.search(text):
            no_cache = True
        if name is None and "=" in text:
            name = _query_name(_tags(text))
    return CommentInfo(name, no_cache)


def _tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for match in _PAIR.finditer(text):
        value = re.sub(r"\\(.)", r"\1", match.group(2))
        tags[unquote(match.group(1))] = unquote(value)
    return tags


def _query_name(tags: dict[str, str]) -> str | None:
    for key in ("query", "name"):
        if tags.get(key):
            return tags[key]
    action, controller = tags.get("action"), tags.get("controller")
    if action and controller:
        return f"{controller}.{action}"
    return tags.get("route") or action or None
