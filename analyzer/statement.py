"""Classify one parsed statement and decide whether it may be cached.

Knows: every top-level statement type of the JSON tree and what it does to tables and to
the session (kind, tables read/written, DDL, temp objects, transaction control), and the
cacheability rule: only a SELECT that writes nothing, locks nothing, calls only immutable
functions, reads no system catalog and samples nothing.
Must not know: comments, multi-statement strings, memoisation (analyzer.analyze).
Invariants: a statement type not listed here is OTHER with `writes_unknown=True`;
`cacheable` is True exactly when `reasons` is empty; `reason` is the first reason in
`Reason`'s declaration order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from analyzer import predicate, session
from analyzer.functions import is_system_relation
from analyzer.model import (
    NO_SCOPE,
    AnalyzerOptions,
    Kind,
    Reason,
    SessionChange,
    TransactionInfo,
)
from analyzer.walk import Walker, dotted, relation_name

_REASON_ORDER = {reason: index for index, reason in enumerate(Reason)}
_DML_KINDS = {
    "SelectStmt": Kind.SELECT, "InsertStmt": Kind.INSERT, "UpdateStmt": Kind.UPDATE,
    "DeleteStmt": Kind.DELETE, "MergeStmt": Kind.MERGE,
}  # fmt: skip
_SIMPLE_KINDS = {
    "VariableShowStmt": Kind.SHOW, "ListenStmt": Kind.LISTEN_NOTIFY,
    "UnlistenStmt": Kind.LISTEN_NOTIFY, "NotifyStmt": Kind.LISTEN_NOTIFY,
    "LockStmt": Kind.OTHER, "VacuumStmt": Kind.OTHER, "CheckPointStmt": Kind.OTHER,
    "LoadStmt": Kind.OTHER, "ReindexStmt": Kind.OTHER, "ClusterStmt": Kind.OTHER,
    "ConstraintsSetStmt": Kind.OTHER, "AlterSystemStmt": Kind.OTHER,
}  # fmt: skip
_GRANT_TYPES = frozenset({"GrantStmt", "GrantRoleStmt", "AlterDefaultPrivilegesStmt"})
_DDL_TYPES = frozenset(
    {"RenameStmt", "IndexStmt", "ViewStmt", "RuleStmt", "CommentStmt", "DefineStmt",
     "CompositeTypeStmt", "SecLabelStmt", "ReassignOwnedStmt", "RefreshMatViewStmt",
     "ImportForeignSchemaStmt"}
)  # fmt: skip
_RELATION_OBJECTS = frozenset(
    {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE", "OBJECT_SEQUENCE"}
)


@dataclass(slots=True)
class Draft:
    """A statement's analysis under construction."""

    kind: Kind
    walker: Walker
    fields: dict[str, Any] = field(default_factory=dict)
    node_type: str = ""
    ddl: bool = False
    writes_unknown: bool = False
    truncate_cascade: bool = False
    session_changes: tuple[SessionChange, ...] = ()
    transaction: TransactionInfo | None = None
    statement_name: str | None = None
    columns: tuple[str, ...] = ()


def analyze_statement(
    stmt: dict[str, Any], options: AnalyzerOptions, extra: frozenset[Reason] = frozenset()
) -> tuple[dict[str, Any], Draft]:
    """Analyze one `{"SelectStmt": {...}}`-style statement node; `extra`: added reasons.

    Returns the `StatementAnalysis` field values (the caller builds the one object it
    needs: a `StatementAnalysis`, or directly an `Analysis` for a single statement).
    """
    ((node_type, fields),) = stmt.items()
    draft = _classify(node_type, fields, options)
    draft.node_type, draft.fields = node_type, fields
    return finish(draft, options, extra), draft


def finish(
    draft: Draft, options: AnalyzerOptions, extra: frozenset[Reason] = frozenset()
) -> dict[str, Any]:
    """The final field values of a draft's `StatementAnalysis`."""
    w = draft.walker
    reasons = set(w.reasons) | extra
    if draft.kind is not Kind.SELECT:
        reasons.add(Reason.NOT_A_READ)
    elif w.nested_writes or w.written:
        reasons.add(Reason.WRITES)
    if any(is_system_relation(t) for t in w.read | w.written):
        reasons.add(Reason.SYSTEM_CATALOG)
    where_keys: Any = {}
    scope = NO_SCOPE
    if draft.node_type in ("SelectStmt", "UpdateStmt", "DeleteStmt", "InsertStmt"):
        single = w.nested_writes <= 1 and not w.writes_unknown and len(w.written) <= 1
        where_keys, scope = predicate.extract(
            draft.node_type, draft.fields, options.scope_columns, single, frozenset(w.repeated)
        )
    return dict(
        kind=draft.kind,
        cacheable=not reasons,
        reason=min(reasons, key=_REASON_ORDER.__getitem__) if reasons else None,
        reasons=frozenset(reasons),
        tables_read=frozenset(w.read),
        tables_written=frozenset(w.written),
        writes_unknown=draft.writes_unknown or w.writes_unknown,
        ddl=draft.ddl,
        creates_temp=w.creates_temp,
        truncate_cascade=draft.truncate_cascade,
        scope=scope,
        where_keys=where_keys,
        columns=draft.columns,
        functions=frozenset(w.functions),
        session_changes=draft.session_changes + tuple(w.session_changes),
        changes_session_unknown=w.changes_session_unknown,
        transaction=draft.transaction,
        statement_name=draft.statement_name,
    )


def _classify(node_type: str, fields: dict[str, Any], options: AnalyzerOptions) -> Draft:
    w = Walker(options)
    handler = _HANDLERS.get(node_type)
    if handler is not None:
        return handler(node_type, fields, w)
    if node_type in _DML_KINDS:
        return _dml(node_type, fields, w)
    if node_type in _SIMPLE_KINDS:
        w.visit(fields, frozenset())
        return Draft(_SIMPLE_KINDS[node_type], w, statement_name=fields.get("conditionname"))
    if node_type in _GRANT_TYPES:
        return _grant(node_type, fields, w)
    if node_type in _DDL_TYPES or node_type.startswith(("Create", "Alter", "Drop")):
        return _ddl(node_type, fields, w)
    w.visit(fields, frozenset())
    return Draft(Kind.OTHER, w, writes_unknown=True)


def _dml(node_type: str, fields: dict[str, Any], w: Walker) -> Draft:
    w.visit({node_type: fields}, frozenset())
    draft = Draft(_DML_KINDS[node_type], w, columns=_columns(node_type, fields))
    if node_type == "SelectStmt" and fields.get("intoClause"):
        draft.kind, draft.ddl = Kind.DDL, True
    return draft


def _columns(node_type: str, fields: dict[str, Any]) -> tuple[str, ...]:
    """Columns selected (as written, `t.col`, `*`), set or inserted, where statically known."""
    names: list[str] = []
    items = fields.get("cols" if node_type == "InsertStmt" else "targetList", [])
    for item in items:
        res = item.get("ResTarget", {})
        if node_type in ("InsertStmt", "UpdateStmt") and "name" in res:
            names.append(res["name"])
            continue
        ref = res.get("val", {}).get("ColumnRef")
        if ref is not None:
            parts = [f["String"].get("sval", "") if "String" in f else "*" for f in ref["fields"]]
            names.append(".".join(parts))
    return tuple(dict.fromkeys(names))


def _truncate(node_type: str, fields: dict[str, Any], w: Walker) -> Draft:
    for rel in fields.get("relations", []):
        w.range_var(rel.get("RangeVar", {}), frozenset(), write=True)
    cascade = fields.get("behavior") == "DROP_CASCADE"
    return Draft(Kind.TRUNCATE, w, truncate_cascade=cascade, writes_unknown=cascade)


def _copy(node_type: str, fields: dict[str, Any], w: Walker) -> Draft:
    is_from = bool(fields.get("is_from"))
    if "relation" in fields:
        w.range_var(fields["relation"], frozenset(), write=is_from)
    w.visit_fields(fields, frozenset(), "relation")
    return Draft(Kind.COPY_FROM if is_from else Kind.COPY_TO, w)


def _explain(node_type: str, fields: dict[str, Any], w: Walker) -> Draft:
    analyze = False
    for option in fields.get("options", []):
        elem = option.get("DefElem", {})
        if elem.get("defname") == "analyze":
            arg = elem.get("arg", {})
            text = arg.get("String", {}).get("sval", "true") if "String" in arg else "true"
            analyze = text.lower() not in ("false", "off", "0", "no")
    w.visit(fields.get("query"), frozenset())
    if not analyze:  # plans only: nothing runs, nothing is written
        w.read |= w.written
        w.written.clear()
        w.writes_unknown = w.creates_temp = False
        w.session_changes.clear()
    return Draft(Kind.EXPLAIN, w)


def _session(node_type: str, fields: dict[str, Any], w: Walker) -> Draft:
    if node_type == "DiscardStmt":
        return Draft(Kind.SESSION, w, session_changes=(session.discard(fields),))
    changes, info = session.variable_set(fields)
    kind = Kind.TRANSACTION if info is not None else Kind.SESSION
    return Draft(kind, w, session_changes=changes, transaction=info)


def _transaction(node_type: str, fields: dict[str, Any], w: Walker) -> Draft:
    return Draft(Kind.TRANSACTION, w, transaction=session.transaction(fields))


def _cursor(node_type: str, fields: dict[str, Any], w: Walker) -> Draft:
    w.visit(fields.get("query"), frozenset())
    return Draft(Kind.CURSOR, w, statement_name=fields.get("portalname"))


def _call(node_type: str, fields: dict[str, Any], w: Walker) -> Draft:
    if "funccall" in fields:
        w.func_call(fields["funccall"], frozenset())
    return Draft(Kind.CALL, w, writes_unknown=True)


def _prepared(node_type: str, fields: dict[str, Any], w: Walker) -> Draft:
    kind = {"PrepareStmt": Kind.PREPARE, "ExecuteStmt": Kind.EXECUTE}.get(node_type)
    if kind is Kind.PREPARE:  # preparing runs nothing: what the query touches is a read
        w.visit(fields.get("query"), frozenset())
        w.read |= w.written
        w.written.clear()
        w.writes_unknown = False
        w.session_changes.clear()
    elif kind is Kind.EXECUTE:
        w.visit(fields.get("params"), frozenset())
    draft = Draft(kind or Kind.DEALLOCATE, w, statement_name=fields.get("name"))
    draft.writes_unknown = kind is Kind.EXECUTE
    return draft


def _grant(node_type: str, fields: dict[str, Any], w: Walker) -> Draft:
    if fields.get("objtype") in _RELATION_OBJECTS and fields.get("targtype") == "ACL_TARGET_OBJECT":
        for obj in fields.get("objects", []):
            if "RangeVar" in obj:
                w.range_var(obj["RangeVar"], frozenset(), write=True)
    return Draft(Kind.GRANT, w, ddl=True)


def _ddl(node_type: str, fields: dict[str, Any], w: Walker) -> Draft:
    """DDL: the created/altered/dropped relations are written, a defining query is read."""
    query = fields.get("query")
    if query is not None:  # CREATE VIEW / CREATE TABLE AS / CREATE MATERIALIZED VIEW
        w.visit(query, frozenset())
        target = fields.get("view") or fields.get("into", {}).get("rel", {})
        w.range_var(target, frozenset(), write=True)
        return Draft(Kind.DDL, w, ddl=True)
    w.visit(fields, frozenset())
    w.written |= w.read  # every relation a DDL statement names may change: over-invalidate
    w.read.clear()
    if node_type == "DropStmt" and fields.get("removeType") in _RELATION_OBJECTS:
        for obj in fields.get("objects", []):
            w.written.add(dotted(obj.get("List", {}).get("items", [])))
    if node_type == "RenameStmt" and fields.get("renameType") in _RELATION_OBJECTS:
        schema = relation_name(fields.get("relation", {})).rpartition(".")[0]
        w.written.add(f"{schema}.{fields['newname']}" if schema else fields.get("newname", ""))
    if node_type == "CreateStmt" and "relation" in fields:
        w.range_var(fields["relation"], frozenset(), write=True)
    if node_type == "CreateSeqStmt" and "sequence" in fields:
        w.range_var(fields["sequence"], frozenset(), write=True)
    return Draft(Kind.DDL, w, ddl=True, writes_unknown=fields.get("behavior") == "DROP_CASCADE")


_Handler = Callable[[str, dict[str, Any], Walker], Draft]
_HANDLERS: dict[str, _Handler] = {
    "TruncateStmt": _truncate,
    "CopyStmt": _copy,
    "ExplainStmt": _explain,
    "VariableSetStmt": _session,
    "DiscardStmt": _session,
    "TransactionStmt": _transaction,
    "DeclareCursorStmt": _cursor,
    "FetchStmt": _cursor,
    "ClosePortalStmt": _cursor,
    "CallStmt": _call,
    "DoStmt": _call,
    "PrepareStmt": _prepared,
    "ExecuteStmt": _prepared,
    "DeallocateStmt": _prepared,
}
