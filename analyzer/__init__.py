"""pgreactive's SQL analyzer: what a statement reads, writes, and whether it may be cached.

A pure package (standard library and pglast only, no I/O): `analyze(sql, options=...)`
returns a frozen `Analysis` and never raises. See `analyzer.model` for the vocabulary and
the relation-naming convention, `analyzer.analyze` for parsing and memoisation.
"""

from __future__ import annotations

from analyzer.engine import analyze, clear_memo
from analyzer.model import (
    DEFAULT_OPTIONS,
    Analysis,
    AnalyzerOptions,
    KeyValue,
    Kind,
    Reason,
    Scope,
    ScopeValue,
    SessionChange,
    StatementAnalysis,
    TransactionInfo,
    TxnCommand,
    WhereKey,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "Analysis",
    "AnalyzerOptions",
    "KeyValue",
    "Kind",
    "Reason",
    "Scope",
    "ScopeValue",
    "SessionChange",
    "StatementAnalysis",
    "TransactionInfo",
    "TxnCommand",
    "WhereKey",
    "analyze",
    "clear_memo",
]
