"""Which functions, casts, literals and relations make a read non-deterministic.

Knows: the built-in volatility table (generated from pg_proc), the caller's lookup for
user functions, the type casts whose result depends on the clock or the catalog, the
date/time input words that read the clock, and what a system catalog name looks like.
Must not know: the parse tree's shape (callers pass names and strings).
Invariants: an unknown function is never "immutable"; unqualified and `pg_catalog.`
names are looked up in the built-in table first (pg_catalog is searched first unless a
search_path says otherwise), then in the caller's lookup; other qualified names only in
the caller's lookup.
"""

from __future__ import annotations

import re

from analyzer.builtin_volatility import BUILTIN_VOLATILITY
from analyzer.model import AnalyzerOptions

#: Sequence functions: volatile built-ins that write the sequence named by their argument.
SEQUENCE_WRITERS = frozenset({"nextval", "setval"})

#: Casts to these types read the clock, the TimeZone or the catalog at run time
#: (`'now'::timestamptz`, `'t'::regclass`): conservatively never cached.
STABLE_CAST_TYPES = frozenset(
    {
        "timestamptz", "timestamp", "date", "time", "timetz", "interval", "abstime", "reltime",
        "regclass", "regproc", "regprocedure", "regoper", "regoperator", "regtype",
        "regconfig", "regdictionary", "regnamespace", "regrole", "regcollation",
    }
)  # fmt: skip

#: Date/time input words evaluated against the current time ('now', 'today', ...).
_TIME_WORD = re.compile(r"\s*(now|today|tomorrow|yesterday)\b", re.IGNORECASE)

_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})


def volatility(name: str, options: AnalyzerOptions) -> tuple[str | None, bool]:
    """(provolatile letter or None if unknown, whether the name is a built-in)."""
    schema, _, bare = name.rpartition(".")
    if schema in ("", "pg_catalog"):
        builtin = BUILTIN_VOLATILITY.get(bare)
        if builtin is not None:
            return builtin, True
    return options.lookup(name), False


def is_time_word(literal: str) -> bool:
    """True for string constants that date/time input evaluates against the clock."""
    return len(literal) < 64 and _TIME_WORD.match(literal) is not None


def is_system_relation(name: str) -> bool:
    """pg_catalog.*, information_schema.*, or an unqualified/any-schema `pg_*` relation."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in _SYSTEM_SCHEMAS:
        return True
    return parts[-1].startswith("pg_")


_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED = re.compile(rf"\s*({_IDENT})(?:\.({_IDENT}))?(?:\.({_IDENT}))?\s*")


def regclass_name(text: str) -> str | None:
    """The relation named by a regclass literal (`'public."S"'` -> `public.S`), or None."""
    match = _QUALIFIED.fullmatch(text)
    if match is None:
        return None
    parts = [p for p in match.groups() if p is not None]
    return ".".join(p[1:-1].replace('""', '"') if p[0] == '"' else p.lower() for p in parts)
