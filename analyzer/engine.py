"""`analyze(sql)`: the one entry point the proxy calls for every statement it sees.

Knows: how to parse (pglast's C parser to JSON, then `json.loads`; pglast's Python AST is
too slow for a per-statement hot path), how to combine statements of one string, and
the two memo levels: exact text (a repeated statement costs a dict lookup) and
normalised text (a statement that only inlines different constants re-reads them).
Must not know: sockets, Redis, the session (options carry everything it may depend on).
Invariants: never raises; anything it cannot analyse is `cacheable=False` with a reason
and, when it could be a write, `writes_unknown=True`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pglast import parser

from analyzer.comment import read_comments
from analyzer.memo import LRU, Shape, make_shape
from analyzer.model import (
    DEFAULT_OPTIONS,
    Analysis,
    AnalyzerOptions,
    Kind,
    Reason,
    StatementAnalysis,
    fingerprint_of,
)
from analyzer.predicate import extract
from analyzer.statement import Draft, analyze_statement

MEMO_SIZE = 10_000
_exact: LRU[tuple[str, AnalyzerOptions], Analysis] = LRU(MEMO_SIZE)
_shapes: LRU[tuple[str, AnalyzerOptions], Shape[Analysis]] = LRU(MEMO_SIZE)
_SHAPE_KINDS = frozenset({Kind.SELECT, Kind.INSERT, Kind.UPDATE, Kind.DELETE})


def analyze(sql: str, *, options: AnalyzerOptions = DEFAULT_OPTIONS) -> Analysis:
    """Analyze a query string (one or several statements). Never raises."""
    key = (sql, options)
    found = _exact.get(key)
    if found is None:
        found = _analyze_uncached(sql, options)
        _exact.put(key, found)
    return found


def clear_memo() -> None:
    """Forget every memoised analysis (tests; after a change of function volatility)."""
    _exact.clear()
    _shapes.clear()
    fingerprint_of.cache_clear()


def _analyze_uncached(sql: str, options: AnalyzerOptions) -> Analysis:
    try:
        if not isinstance(sql, str):
            return _unanalysable(Kind.UNKNOWN, Reason.UNPARSEABLE)
        if not options.standard_conforming_strings and "\\" in sql:
            # libpg_query always lexes with standard_conforming_strings=on; with `off` a
            # backslash may end a string early and hide a statement (PITFALLS C7).
            return _unanalysable(Kind.UNKNOWN, Reason.NONSTANDARD_STRINGS)
        normalized = _normalize(sql)
        if normalized is not None and normalized != sql:
            shape = _shapes.get((normalized, options))
            if shape is not None:
                reused = shape.apply(sql, normalized)
                if reused is not None:
                    return reused
        return _analyze_full(sql, options, normalized)
    except Exception:  # the analyzer's own failure must never reach the proxy
        return _unanalysable(Kind.UNKNOWN, Reason.INTERNAL_ERROR)


def _normalize(sql: str) -> str | None:
    if "$" in sql:  # parameterised (extended protocol): texts repeat, the exact memo serves
        return None
    if "'" not in sql and not any(c.isdigit() for c in sql):
        return None
    try:
        return str(parser.normalize(sql))
    except Exception:
        return None


def _analyze_full(sql: str, options: AnalyzerOptions, normalized: str | None) -> Analysis:
    try:
        tree = json.loads(parser.parse_sql_json(sql))
    except Exception:
        return _unanalysable(Kind.UNKNOWN, Reason.UNPARSEABLE)
    stmts = [raw["stmt"] for raw in tree.get("stmts", []) if "stmt" in raw]
    comments = read_comments(sql)
    if not stmts:
        return Analysis(kind=Kind.EMPTY, reason=Reason.EMPTY, reasons=frozenset({Reason.EMPTY}))
    extra = frozenset({Reason.HINT_NO_CACHE}) if comments.no_cache else frozenset()
    if len(stmts) > 1:
        parts = [StatementAnalysis(**analyze_statement(s, options, extra)[0]) for s in stmts]
        return _combine(parts, sql, comments.query_name)
    values, draft = analyze_statement(stmts[0], options, extra)
    result = Analysis(**values, query_name=comments.query_name, sql=sql)
    if normalized is not None and normalized != sql and _shapeable(result, draft):
        shape = make_shape(sql, normalized, result, draft.walker.consts, _redo(draft, options))
        if shape is not None:
            _shapes.put((normalized, options), shape)
    return result


def _shapeable(result: Analysis, draft: Draft) -> bool:
    return (
        result.kind in _SHAPE_KINDS
        and not draft.walker.literal_dependent
        and not result.session_changes
        and not result.changes_session_unknown
    )


def _redo(draft: Draft, options: AnalyzerOptions) -> Any:
    """A function recomputing the predicates of `draft` after its constants were patched."""
    w = draft.walker
    single = w.nested_writes <= 1 and not w.writes_unknown and len(w.written) <= 1
    repeated = frozenset(w.repeated)

    def redo(base: Analysis, sql: str) -> Analysis:
        keys, scope = extract(
            draft.node_type, draft.fields, options.scope_columns, single, repeated
        )
        same_shape_as = base.same_shape_as or base.sql
        return dataclasses.replace(
            base, where_keys=keys, scope=scope, sql=sql, same_shape_as=same_shape_as
        )

    return redo


def _combine(statements: list[StatementAnalysis], sql: str, name: str | None) -> Analysis:
    """A multi-statement string: unions of what its statements do; never cacheable."""
    reasons = frozenset({Reason.MULTI_STATEMENT}).union(*(s.reasons for s in statements))
    return Analysis(
        kind=Kind.MULTI,
        cacheable=False,
        reason=Reason.MULTI_STATEMENT,
        reasons=reasons,
        tables_read=frozenset().union(*(s.tables_read for s in statements)),
        tables_written=frozenset().union(*(s.tables_written for s in statements)),
        writes_unknown=any(s.writes_unknown for s in statements),
        ddl=any(s.ddl for s in statements),
        creates_temp=any(s.creates_temp for s in statements),
        truncate_cascade=any(s.truncate_cascade for s in statements),
        functions=frozenset().union(*(s.functions for s in statements)),
        session_changes=tuple(c for s in statements for c in s.session_changes),
        changes_session_unknown=any(s.changes_session_unknown for s in statements),
        parts=tuple(statements),
        query_name=name,
        sql=sql,
    )


def _unanalysable(kind: Kind, reason: Reason) -> Analysis:
    """Not understood: never cached, and treated as a write of unknown reach."""
    return Analysis(kind=kind, reason=reason, reasons=frozenset({reason}), writes_unknown=True)
