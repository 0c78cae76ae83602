"""One walk over a statement's JSON parse tree, collecting everything at once.

Knows: the shape of libpg_query's JSON (a node is `{"TypeName": {fields}}`; fields typed
as a specific struct, such as `relation` or IntoClause's `rel`, are not wrapped; protobuf
JSON omits zero values, so `{"ival": {}}` is 0 and `{"boolval": {}}` is false); CTE
visibility (a non-recursive WITH item sees earlier items only, a recursive one sees all,
the body sees all; a CTE name shadows a table only when unqualified).
Must not know: what the proxy does with the result; how statements are classified as a
whole (analyzer.statement does that).
Invariants: a relation not shadowed by a CTE is reported exactly once per role (read or
written; a table can be both); every function call is classified; anything not
understood is not cacheable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from analyzer import functions as fn
from analyzer.model import AnalyzerOptions, Reason, SessionChange

Node = Any  # a JSON value: dict, list, str, int, bool
Handler = Callable[["Walker", Any, frozenset[str]], None]

_SVF_NAMES = {
    "SVFOP_CURRENT_DATE": "current_date", "SVFOP_CURRENT_TIME": "current_time",
    "SVFOP_CURRENT_TIME_N": "current_time", "SVFOP_CURRENT_TIMESTAMP": "current_timestamp",
    "SVFOP_CURRENT_TIMESTAMP_N": "current_timestamp", "SVFOP_LOCALTIME": "localtime",
    "SVFOP_LOCALTIME_N": "localtime", "SVFOP_LOCALTIMESTAMP": "localtimestamp",
    "SVFOP_LOCALTIMESTAMP_N": "localtimestamp", "SVFOP_CURRENT_ROLE": "current_role",
    "SVFOP_CURRENT_USER": "current_user", "SVFOP_USER": "user",
    "SVFOP_SESSION_USER": "session_user", "SVFOP_CURRENT_CATALOG": "current_catalog",
    "SVFOP_CURRENT_SCHEMA": "current_schema",
}  # fmt: skip

_UNSAFE_NODES = frozenset({"XmlExpr", "XmlSerialize", "RangeTableFunc", "RangeTableFuncCol"})


def relation_name(fields: dict[str, Any]) -> str:
    """`catalog.schema.rel` as qualified in the SQL, names as Postgres folded them."""
    rel: str = fields.get("relname", "")
    schema = fields.get("schemaname")
    if schema is None:
        return rel
    catalog = fields.get("catalogname")
    return f"{catalog}.{schema}.{rel}" if catalog else f"{schema}.{rel}"


def dotted(names: list[Any]) -> str:
    """Join a list of String nodes (`funcname`, `typeName.names`) with dots."""
    return ".".join(n["String"].get("sval", "") for n in names if "String" in n)


def const_text(fields: dict[str, Any]) -> str | None:
    """An A_Const's value as text (None for NULL)."""
    if "sval" in fields:
        return str(fields["sval"].get("sval", ""))
    if "ival" in fields:
        return str(fields["ival"].get("ival", 0))
    if "fval" in fields:
        return str(fields["fval"].get("fval", "0"))
    if "boolval" in fields:
        return "true" if fields["boolval"].get("boolval") else "false"
    if "bsval" in fields:
        return str(fields["bsval"].get("bsval", ""))
    return None


class Walker:
    """Collects tables, functions and non-cacheable features of one statement."""

    __slots__ = (
        "changes_session_unknown",
        "consts",
        "creates_temp",
        "functions",
        "literal_dependent",
        "nested_writes",
        "options",
        "read",
        "reasons",
        "repeated",
        "session_changes",
        "writes_unknown",
        "written",
    )  # fmt: skip

    def __init__(self, options: AnalyzerOptions) -> None:
        self.options = options
        self.read: set[str] = set()
        self.repeated: set[str] = set()  # tables read more than once
        self.written: set[str] = set()
        self.functions: set[str] = set()
        self.reasons: set[Reason] = set()
        self.writes_unknown = False
        self.nested_writes = 0  # DML statements seen (a writable CTE makes it >= 1)
        self.creates_temp = False
        self.session_changes: list[SessionChange] = []
        self.changes_session_unknown = False
        self.literal_dependent = False  # some result depends on a literal's value
        self.consts: dict[int, dict[str, Any]] = {}  # A_Const fields by location

    def visit(self, node: Node, ctes: frozenset[str]) -> None:
        """Walk any JSON value, dispatching on node type names and special field names.

        Iterative (an explicit stack) because this is the hot loop of the analyzer.
        """
        stack = [node]
        pop, push, get = stack.pop, stack.append, HANDLERS.get
        while stack:
            current = pop()
            if type(current) is dict:
                if "relname" in current:  # an unwrapped RangeVar (pktable, PartitionCmd...)
                    self.range_var(current, ctes, write=False)
                    continue
                for key, value in current.items():
                    handler = get(key)
                    if handler is not None:
                        handler(self, value, ctes)
                    elif type(value) is dict or type(value) is list:
                        push(value)
            elif type(current) is list:
                for item in current:
                    if type(item) is dict or type(item) is list:
                        push(item)

    def visit_fields(self, fields: dict[str, Any], ctes: frozenset[str], skip: str) -> None:
        """Walk the fields of a node except `skip` (and the WITH clause)."""
        for key, value in fields.items():
            if key == skip or key == "withClause" or not isinstance(value, dict | list):
                continue
            handler = HANDLERS.get(key)
            if handler is not None:
                handler(self, value, ctes)
            else:
                self.visit(value, ctes)

    def with_clause(self, fields: dict[str, Any], ctes: frozenset[str]) -> frozenset[str]:
        """Walk a statement's WITH items; return the CTE names visible in its body."""
        with_clause = fields.get("withClause")
        if not with_clause:
            return ctes
        items = [c["CommonTableExpr"] for c in with_clause.get("ctes", [])]
        names = [item.get("ctename", "") for item in items]
        if with_clause.get("recursive"):
            ctes = ctes | frozenset(names)
            for item in items:
                self.visit(item.get("ctequery"), ctes)
            return ctes
        for item, name in zip(items, names, strict=True):
            self.visit(item.get("ctequery"), ctes)
            ctes = ctes | {name}
        return ctes

    def range_var(self, fields: dict[str, Any], ctes: frozenset[str], write: bool) -> None:
        """A relation reference: a table, unless it names a visible CTE."""
        name = relation_name(fields)
        if "schemaname" not in fields and name in ctes:
            return
        if write:
            self.written.add(name)
        elif name in self.read:
            self.repeated.add(name)
        else:
            self.read.add(name)
        if write and (fields.get("relpersistence") == "t" or name.startswith("pg_temp.")):
            self.creates_temp = True

    def func_call(self, fields: dict[str, Any], ctes: frozenset[str]) -> None:
        """Classify a function call by volatility; then walk its arguments."""
        name = dotted(fields.get("funcname", []))
        shown = name
        if fields.get("funcformat") == "COERCE_SQL_SYNTAX" and name.startswith("pg_catalog."):
            shown = name[len("pg_catalog.") :]
        self.functions.add(shown)
        vol, builtin = fn.volatility(name, self.options)
        if vol is None:
            self.reasons.add(Reason.UNKNOWN_FUNCTION)
            self.writes_unknown = True
        elif vol == "s":
            self.reasons.add(Reason.STABLE_FUNCTION)
        elif vol == "v":
            self.reasons.add(Reason.VOLATILE_FUNCTION)
            if not builtin:
                self.writes_unknown = True
            else:
                self.builtin_volatile(name.rpartition(".")[2], fields.get("args", []))
        self.visit_fields(fields, ctes, "funcname")

    def builtin_volatile(self, bare: str, args: list[Any]) -> None:
        """Side effects of volatile built-ins the proxy must know about."""
        if bare in fn.SEQUENCE_WRITERS:
            self.literal_dependent = True
            literal = _literal(args[0]) if args else None
            seq = fn.regclass_name(literal) if literal is not None else None
            if seq is None:
                self.writes_unknown = True
            else:
                self.written.add(seq)
        elif bare == "set_config":
            self.literal_dependent = True
            self.set_config(args)

    def set_config(self, args: list[Any]) -> None:
        """`set_config(name, value, is_local)`: a session change hidden in a SELECT."""
        values = [_literal(a) for a in args]
        if len(values) != 3 or values[0] is None or values[2] not in ("true", "false"):
            self.changes_session_unknown = True
            return
        change = SessionChange("set", values[0].lower(), values[1], values[2] == "true")
        self.session_changes.append(change)


def _literal(node: Any) -> str | None:
    """The text of a constant argument (unwrapping casts), None if not a constant."""
    while isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    if isinstance(node, dict) and "A_Const" in node:
        return const_text(node["A_Const"])
    return None


def _select(w: Walker, fields: dict[str, Any], ctes: frozenset[str]) -> None:
    inner = w.with_clause(fields, ctes)
    if fields.get("lockingClause"):
        w.reasons.add(Reason.LOCKING_CLAUSE)
    into = fields.get("intoClause")
    if into:
        w.range_var(into.get("rel", {}), inner, write=True)
        w.nested_writes += 1
    w.visit_fields(fields, inner, "intoClause")


def _dml(w: Walker, fields: dict[str, Any], ctes: frozenset[str]) -> None:
    inner = w.with_clause(fields, ctes)
    w.nested_writes += 1
    w.range_var(fields.get("relation", {}), inner, write=True)
    w.visit_fields(fields, inner, "relation")


def _range_var(w: Walker, fields: dict[str, Any], ctes: frozenset[str]) -> None:
    w.range_var(fields, ctes, write=False)


def _tablesample(w: Walker, fields: dict[str, Any], ctes: frozenset[str]) -> None:
    w.reasons.add(Reason.TABLESAMPLE)
    w.visit(fields, ctes)


def _sql_value_function(w: Walker, fields: dict[str, Any], ctes: frozenset[str]) -> None:
    w.functions.add(_SVF_NAMES.get(fields.get("op", ""), "sql_value_function"))
    w.reasons.add(Reason.STABLE_FUNCTION)


def _type_cast(w: Walker, fields: dict[str, Any], ctes: frozenset[str]) -> None:
    names = fields.get("typeName", {}).get("names", [])
    if names and names[-1].get("String", {}).get("sval") in fn.STABLE_CAST_TYPES:
        w.reasons.add(Reason.STABLE_CAST)
    w.visit(fields.get("arg"), ctes)


def _a_const(w: Walker, fields: dict[str, Any], ctes: frozenset[str]) -> None:
    w.consts[fields.get("location", -1)] = fields
    sval = fields.get("sval")
    if sval is not None and fn.is_time_word(sval.get("sval", "")):
        w.reasons.add(Reason.STABLE_CAST)


def _unsafe(w: Walker, fields: Any, ctes: frozenset[str]) -> None:
    w.reasons.add(Reason.UNSAFE_EXPRESSION)
    w.visit(fields, ctes)


def _field_relation(w: Walker, value: Any, ctes: frozenset[str]) -> None:
    """An unwrapped RangeVar in a typed field (`relation`, `rel`, `view`, `sequence`)."""
    if isinstance(value, dict) and "relname" in value:
        w.range_var(value, ctes, write=False)
    else:
        w.visit(value, ctes)


def _ignore(w: Walker, fields: Any, ctes: frozenset[str]) -> None:
    return None


HANDLERS: dict[str, Handler] = {
    "SelectStmt": _select,
    "InsertStmt": _dml,
    "UpdateStmt": _dml,
    "DeleteStmt": _dml,
    "MergeStmt": _dml,
    "RangeVar": _range_var,
    "RangeTableSample": _tablesample,
    "FuncCall": lambda w, f, c: w.func_call(f, c),
    "SQLValueFunction": _sql_value_function,
    "TypeCast": _type_cast,
    "A_Const": _a_const,
    "ColumnRef": _ignore,
    "ParamRef": _ignore,
    "typeName": _ignore,
    "String": _ignore,
    "A_Star": _ignore,
    "alias": _ignore,
    **dict.fromkeys(("relation", "rel", "view", "sequence"), _field_relation),
    **dict.fromkeys(_UNSAFE_NODES, _unsafe),
}
