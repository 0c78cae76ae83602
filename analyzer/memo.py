"""Memoisation: a bounded LRU, and "shapes" for statements that inline their literals.

Knows: `pglast.parser.normalize` replaces each constant of a statement by `$n` (numbered
after the statement's own highest parameter) and keeps everything else verbatim, so two
texts with the same normalised form differ only in their constants. A `Shape` remembers,
for one normalised text, the analysis of the first text seen and which constant regions
feed its WHERE keys and scope; a new text of the same shape only re-reads its constants
and recomputes the predicates (`where_keys`, `scope`), skipping the parse.
Must not know: how the predicates are computed (the caller passes a function).
Invariants: a shape is applied only if the new text aligns with the normalised text
region by region, every constant decodes to the same class of constant (string, number,
boolean, NULL) through a strict grammar, every non-constant region is byte-identical, and
no constant reads the clock or looks like a comment; otherwise the caller parses in full.
Shapes are only made for analyses in which nothing but the predicates depends on
constant values (see `Walker.literal_dependent`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from analyzer.functions import is_time_word
from analyzer.walk import const_text

K = TypeVar("K")
V = TypeVar("V")

_MARKER = re.compile(r"\$\d+")
_STRING = re.compile(r"'((?:[^']|'')*)'")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT = re.compile(r"-?\d+")
_BAD_SEGMENT_START = re.compile(r"[0-9A-Za-z_.'$\"]")
_INT4 = 2**31


class LRU(Generic[K, V]):
    """A dict with a size bound, evicting the least recently used entry."""

    __slots__ = ("_data", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value for `key` (now most recently used), or None."""
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Store `value`, evicting the oldest entry when full."""
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def regions(sql: str, normalized: str) -> list[tuple[int, str]] | None:
    """(start, text) of each part of `sql` that `normalized` shows as `$n`, or None."""
    segments = _MARKER.split(normalized)
    if not sql.startswith(segments[0]):
        return None
    pos = len(segments[0])
    found: list[tuple[int, str]] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments[1:], start=1):
        if segment and _BAD_SEGMENT_START.match(segment):
            return None
        if index == last:
            end = len(sql) - len(segment)
            if end < pos or not sql.endswith(segment):
                return None
        else:
            end = sql.find(segment, pos + 1) if segment else -1
            if end < 0:
                return None
        found.append((pos, sql[pos:end]))
        pos = end + len(segment)
    return found


def decode(text: str) -> dict[str, Any] | None:
    """An A_Const's value fields for a constant's source text, None if not simple."""
    match = _STRING.fullmatch(text)
    if match is not None:
        return {"sval": {"sval": match.group(1).replace("''", "'")}}
    if _NUMBER.fullmatch(text):
        if _INT.fullmatch(text) and -_INT4 < int(text) < _INT4:
            return {"ival": {"ival": int(text)}}
        return {"fval": {"fval": text}}
    lowered = text.lower()
    if lowered in ("true", "false"):
        return {"boolval": {"boolval": lowered == "true"}}
    if lowered == "null":
        return {"isnull": True}
    return None


_VALUE_KEYS = ("sval", "ival", "fval", "boolval", "bsval", "isnull")


def _same_class(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return [k for k in _VALUE_KEYS if k in a] == [k for k in _VALUE_KEYS if k in b]


@dataclass(slots=True)
class Shape(Generic[V]):
    """The analysis of one normalised text, re-usable for texts differing in constants."""

    analysis: V
    consts: list[dict[str, Any] | None]  # per region: the A_Const to patch, or None (fixed)
    fixed: list[str]  # per region: the exact text required when not a constant
    redo: Callable[[V, str], V]  # recomputes the predicates from the (patched) consts

    def apply(self, sql: str, normalized: str) -> V | None:
        """The analysis of `sql`, or None when it does not fit this shape safely."""
        texts = regions(sql, normalized)
        if texts is None or len(texts) != len(self.consts):
            return None
        patches: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for (_, text), const, fixed in zip(texts, self.consts, self.fixed, strict=True):
            if const is None:
                if text != fixed:
                    return None
                continue
            value = decode(text)
            if value is None or not _same_class(value, const) or _suspicious(text):
                return None
            patches.append((const, value))
        for const, value in patches:
            for key in _VALUE_KEYS:
                const.pop(key, None)
            const.update(value)
        return self.redo(self.analysis, sql)


def _suspicious(text: str) -> bool:
    """A constant that reads the clock, or could hide a comment."""
    return text.startswith("'") and (
        is_time_word(text[1:-1]) or "/*" in text or "*/" in text or "--" in text
    )


def make_shape(
    sql: str,
    normalized: str,
    analysis: V,
    consts: dict[int, dict[str, Any]],
    redo: Callable[[V, str], V],
) -> Shape[V] | None:
    """A shape for `analysis` of `sql`, or None when the regions cannot be matched safely."""
    texts = regions(sql, normalized)
    if texts is None:
        return None
    shape_consts: list[dict[str, Any] | None] = []
    for start, text in texts:
        const = consts.get(start)
        if const is not None:
            value = decode(text)
            if value is None or _suspicious(text) or not _same_class(value, const):
                return None
            if const_text(value) != const_text(const):
                return None
        shape_consts.append(const)
    return Shape(analysis, shape_consts, [text for _, text in texts], redo)
