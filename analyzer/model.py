"""What an analysis says: the result types of `analyzer.analyze`.

Knows: the vocabulary the proxy and the cache use to decide (kinds of statement, reasons a
statement may not be cached, tables read and written, scope values, session changes).
Must not know: how SQL is parsed or walked, sockets, Redis, the session's state.
Invariants: every result is a frozen dataclass or an enum; an `Analysis` with
`cacheable=True` has `reason is None`, kind SELECT and no tables written; `reason` is
None exactly when `cacheable` is True.

Naming convention for relations: the name as Postgres sees it after case folding
(unquoted identifiers lower-cased, quoted ones kept verbatim), joined with "." exactly as
qualified in the SQL text: `agents`, `public.agents`, `db.public.agents`. A quoted name
that contains a dot is reported verbatim too (`"a.b"` -> `a.b`): ambiguity there only
ever over-invalidates.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from pglast import parser

#: Postgres's provolatile letters: 'i' immutable, 's' stable, 'v' volatile.
VolatilityLookup = Callable[[str], "str | None"]

EMPTY_MAPPING: Mapping[str, object] = MappingProxyType({})


class Kind(enum.StrEnum):
    """What a statement (or a whole string) is."""

    SELECT = "select"  # SELECT, VALUES, TABLE t, WITH ... SELECT
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    MERGE = "merge"
    TRUNCATE = "truncate"
    COPY_FROM = "copy_from"
    COPY_TO = "copy_to"
    DDL = "ddl"  # CREATE/ALTER/DROP/RENAME/COMMENT/REFRESH..., CREATE TABLE AS, SELECT INTO
    GRANT = "grant"  # GRANT/REVOKE, role membership, ALTER DEFAULT PRIVILEGES
    TRANSACTION = "transaction"  # BEGIN/START/COMMIT/ROLLBACK/SAVEPOINT/RELEASE/2PC
    SESSION = "session"  # SET/RESET/DISCARD, SET ROLE, SET SESSION AUTHORIZATION
    SHOW = "show"
    LISTEN_NOTIFY = "listen_notify"  # LISTEN/UNLISTEN/NOTIFY
    CURSOR = "cursor"  # DECLARE/FETCH/MOVE/CLOSE
    CALL = "call"  # CALL and DO
    PREPARE = "prepare"  # SQL-level PREPARE
    EXECUTE = "execute"  # SQL-level EXECUTE
    DEALLOCATE = "deallocate"
    EXPLAIN = "explain"
    MULTI = "multi"  # several statements in one string
    EMPTY = "empty"  # nothing but whitespace, comments or semicolons
    OTHER = "other"  # LOCK, VACUUM, ANALYZE, CHECKPOINT, ...
    UNKNOWN = "unknown"  # unparseable, or not analysable safely


class Reason(enum.StrEnum):
    """Why a statement is not cacheable (the first that applies, in this order)."""

    UNPARSEABLE = "unparseable"
    NONSTANDARD_STRINGS = "nonstandard_strings"  # standard_conforming_strings=off + backslash
    INTERNAL_ERROR = "internal_error"  # the analyzer itself failed: never cache
    EMPTY = "empty"
    MULTI_STATEMENT = "multi_statement"
    NOT_A_READ = "not_a_read"  # any kind but SELECT
    WRITES = "writes"  # a SELECT that writes: writable CTE, SELECT INTO
    HINT_NO_CACHE = "hint_no_cache"  # /* NO CACHE */, /*+ no_cache */
    LOCKING_CLAUSE = "locking_clause"  # FOR UPDATE/SHARE/NO KEY UPDATE/KEY SHARE anywhere
    SYSTEM_CATALOG = "system_catalog"  # pg_catalog, information_schema, pg_* relations
    TABLESAMPLE = "tablesample"
    UNKNOWN_FUNCTION = "unknown_function"  # volatility not known: may do anything
    VOLATILE_FUNCTION = "volatile_function"
    STABLE_FUNCTION = "stable_function"  # incl. SQL value functions (current_user, ...)
    STABLE_CAST = "stable_cast"  # cast to date/time or reg* types, 'now'-like literals
    UNSAFE_EXPRESSION = "unsafe_expression"  # XML expressions and similar


class TxnCommand(enum.StrEnum):
    """Which transaction-control statement."""

    BEGIN = "begin"
    START = "start"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    SAVEPOINT = "savepoint"
    RELEASE = "release"
    ROLLBACK_TO = "rollback_to"
    PREPARE = "prepare"
    COMMIT_PREPARED = "commit_prepared"
    ROLLBACK_PREPARED = "rollback_prepared"
    SET_TRANSACTION = "set_transaction"  # SET TRANSACTION ... (characteristics of this one)


@dataclass(frozen=True, slots=True)
class AnalyzerOptions:
    """How to analyze. Hashable: it is part of the memo key.

    `function_volatility` maps a function name (schema-qualified when the SQL qualifies it)
    to 'i' | 's' | 'v', or None when unknown. It is compared by identity: when its answers
    change (after DDL), pass a new options object or bump `version`, otherwise memoised
    analyses keep the old answers. A Mapping is accepted and used through its `.get`.
    """

    scope_columns: frozenset[str] = frozenset({"organization_id"})
    function_volatility: VolatilityLookup | Mapping[str, str] | None = None
    standard_conforming_strings: bool = True
    version: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.function_volatility, Mapping):
            object.__setattr__(self, "function_volatility", self.function_volatility.get)
        object.__setattr__(self, "scope_columns", frozenset(self.scope_columns))

    def lookup(self, name: str) -> str | None:
        """The caller's volatility for `name`, None if it does not know."""
        fn = self.function_volatility
        if fn is None or isinstance(fn, Mapping):
            return None
        answer = fn(name)
        return answer if answer in ("i", "s", "v") else None


DEFAULT_OPTIONS = AnalyzerOptions()


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A constant in a predicate: a literal (as text) or a parameter reference ($n)."""

    literal: str | None = None
    param: int | None = None

    def resolve(self, params: Sequence[str | None]) -> str | None:
        """The value as text, taking `$n` from the bound (text) parameters."""
        if self.param is None:
            return self.literal
        index = self.param - 1
        return params[index] if 0 <= index < len(params) else None


ScopeValue = KeyValue


@dataclass(frozen=True, slots=True)
class WhereKey:
    """A top-level AND-ed equality predicate: `column = v`, `IN (...)`, `= ANY($n)`."""

    column: str
    op: str  # '=', 'in' or 'any'
    values: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class Scope:
    """Scope columns pinned by top-level AND-ed equalities, and write confinement.

    `pinned[table][column]` is the one value the statement pins `column` of `table` to.
    `confined` (writes only) is True when the write provably touches rows of the pinned
    value(s) of its target only (see DESIGN.md, "Scoped invalidation"); `confined_to` gives
    those values per scope column for the written table.
    """

    pinned: Mapping[str, Mapping[str, KeyValue]] = field(default_factory=dict)
    confined: bool = False
    confined_to: Mapping[str, KeyValue] = field(default_factory=dict)

    def value(self, column: str, table: str | None = None) -> KeyValue | None:
        """The value pinned for `column` (in `table`, or in the only table that pins it)."""
        if table is not None:
            return self.pinned.get(table, {}).get(column)
        found = [cols[column] for cols in self.pinned.values() if column in cols]
        return found[0] if len(set(found)) == 1 else None


NO_SCOPE = Scope()


@dataclass(frozen=True, slots=True)
class SessionChange:
    """A change of session state the proxy must track.

    action: 'set' | 'reset' | 'reset_all' | 'discard_all' | 'discard_temp' |
    'discard_plans' | 'discard_sequences'. `name` is the lower-cased GUC name
    ('role', 'session_authorization', 'timezone' for the special spellings);
    `value` is the value as Postgres flattens it to text (None for resets or when not a
    literal); `local` is SET LOCAL / SET TRANSACTION / set_config(..., true).
    """

    action: str
    name: str | None = None
    value: str | None = None
    local: bool = False


@dataclass(frozen=True, slots=True)
class TransactionInfo:
    """Details of a transaction-control statement."""

    command: TxnCommand
    isolation: str | None = None  # 'serializable', 'repeatable read', 'read committed', ...
    read_only: bool | None = None
    deferrable: bool | None = None
    savepoint: str | None = None
    gid: str | None = None  # two-phase commit identifier
    chain: bool = False


@dataclass(frozen=True, slots=True)
class StatementAnalysis:
    """The analysis of one statement of a string."""

    kind: Kind
    cacheable: bool = False
    reason: Reason | None = None
    reasons: frozenset[Reason] = frozenset()
    tables_read: frozenset[str] = frozenset()
    tables_written: frozenset[str] = frozenset()
    writes_unknown: bool = False  # CALL, DO, EXECUTE, volatile/unknown user functions, ...
    ddl: bool = False  # catalog changed: the proxy bumps the database epoch
    creates_temp: bool = False
    truncate_cascade: bool = False
    scope: Scope = NO_SCOPE
    where_keys: Mapping[str, tuple[WhereKey, ...]] = field(default_factory=dict)
    columns: tuple[str, ...] = ()
    functions: frozenset[str] = frozenset()
    session_changes: tuple[SessionChange, ...] = ()
    changes_session_unknown: bool = False  # set_config() with non-literal arguments
    transaction: TransactionInfo | None = None
    statement_name: str | None = None  # PREPARE/EXECUTE/DEALLOCATE name, cursor name

    @property
    def session_change(self) -> SessionChange | None:
        """The first session change, if any (SET TRANSACTION may make several)."""
        return self.session_changes[0] if self.session_changes else None


_UNKNOWN, _EMPTY = Kind.UNKNOWN, Kind.EMPTY


@functools.lru_cache(maxsize=10_000)
def fingerprint_of(sql: str) -> str | None:
    """pglast's fingerprint of `sql` (hex), None if it does not parse."""
    try:
        return str(parser.fingerprint(sql))
    except Exception:
        return None


@dataclass(frozen=True, slots=True)
class Analysis(StatementAnalysis):
    """The analysis of a whole query string: `StatementAnalysis` fields plus these."""

    parts: tuple[StatementAnalysis, ...] = ()  # the statements of a multi-statement string
    query_name: str | None = None
    sql: str = field(default="", repr=False, compare=False)
    # A text differing from `sql` only in constants (the analysis was derived from it): the
    # two share a fingerprint, so new literal texts of a known shape cost no parse for it.
    same_shape_as: str = field(default="", repr=False, compare=False)

    @property
    def statements(self) -> tuple[StatementAnalysis, ...]:
        """One entry per statement; a single statement's entry is this analysis itself."""
        return self.parts or (self,)

    @property
    def fingerprint(self) -> str | None:
        """pglast's fingerprint of the whole string; None if unparseable or empty.

        Computed on first use and memoised by text: it costs as much as a parse, and
        the proxy needs it only for some statements (metrics, logs).
        """
        kind = self.kind
        if kind is _UNKNOWN or kind is _EMPTY:  # (module aliases: `Kind.X` costs ~90 ns)
            return None
        return fingerprint_of(self.same_shape_as or self.sql)
