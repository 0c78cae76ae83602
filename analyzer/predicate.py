"""WHERE keys, scope pins and write confinement of one statement.

Knows: top-level AND-ed equality predicates (`col = v`, `v = col`, `col IN (v, ...)`,
`col = ANY($n)`, `col = ANY(ARRAY[...])`, where v is a constant or `$n`, possibly cast),
how a column qualifier maps to a table of the FROM list (alias, name or qualified name),
and DESIGN.md's definition of a write "confined" to one scope value.
Must not know: volatility, catalogs, anything below the top-level WHERE.
Invariants: only conjuncts of the statement's own WHERE count (never OR, NOT, ON, a
subquery's WHERE, or set operations); an unqualified column counts only when exactly
one table can own it (the only FROM item, or the UPDATE/DELETE target); a column pinned
to two different values is not pinned; when unsure, a write is not confined.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from analyzer.model import KeyValue, Scope, WhereKey
from analyzer.walk import const_text, relation_name

_EMPTY: MappingProxyType[str, tuple[WhereKey, ...]] = MappingProxyType({})


def extract(
    node_type: str,
    fields: dict[str, Any],
    scope_columns: frozenset[str],
    single_target: bool,
    repeated: frozenset[str],
) -> tuple[MappingProxyType[str, tuple[WhereKey, ...]], Scope]:
    """(where_keys per table, scope) for a SELECT, UPDATE, DELETE or INSERT.

    `repeated`: tables read more than once in the statement (self-joins, subqueries): a
    pin on one occurrence says nothing about the others, so such tables are never pinned.
    """
    if node_type == "InsertStmt":
        return _EMPTY, _insert_scope(fields, scope_columns, single_target)
    if node_type == "SelectStmt" and fields.get("op", "SETOP_NONE") != "SETOP_NONE":
        return _EMPTY, Scope()
    ctes = _cte_names(fields)
    aliases: dict[str, str | None] = {}
    items = fields.get("usingClause" if node_type == "DeleteStmt" else "fromClause", [])
    for item in items:
        _collect_aliases(item, ctes, aliases)
    target = None
    if node_type in ("UpdateStmt", "DeleteStmt"):
        target = _register(fields.get("relation", {}), ctes, aliases)
    elif len(items) == 1 and "RangeVar" in items[0]:
        target = _register(items[0]["RangeVar"], ctes, aliases)
    keys = _where_keys(fields.get("whereClause"), aliases, target)
    pinned = _pins({t: k for t, k in keys.items() if t not in repeated}, scope_columns)
    scope = Scope(pinned=pinned)
    if node_type in ("UpdateStmt", "DeleteStmt") and single_target and target and target in pinned:
        confined = dict(pinned[target])
        for res in fields.get("targetList", []):
            confined.pop(res.get("ResTarget", {}).get("name", ""), None)
        if confined:
            scope = Scope(pinned=pinned, confined=True, confined_to=MappingProxyType(confined))
    return MappingProxyType(keys), scope


def _cte_names(fields: dict[str, Any]) -> frozenset[str]:
    ctes = (fields.get("withClause") or {}).get("ctes", [])
    return frozenset(c["CommonTableExpr"].get("ctename", "") for c in ctes)


Aliases = dict[str, "str | None"]  # qualifier -> table (None: a CTE, subquery or function)


def _register(rv: dict[str, Any], ctes: frozenset[str], aliases: Aliases) -> str | None:
    name = relation_name(rv)
    table = None if ("schemaname" not in rv and name in ctes) else name
    alias = rv.get("alias", {}).get("aliasname")
    if alias is not None:
        aliases[alias] = table
    else:
        aliases[rv.get("relname", "")] = table
        aliases[name] = table
    return table


def _collect_aliases(node: dict[str, Any], ctes: frozenset[str], aliases: Aliases) -> None:
    if "RangeVar" in node:
        _register(node["RangeVar"], ctes, aliases)
    elif "JoinExpr" in node:
        join = node["JoinExpr"]
        _collect_aliases(join.get("larg", {}), ctes, aliases)
        _collect_aliases(join.get("rarg", {}), ctes, aliases)
        if "alias" in join:
            aliases[join["alias"].get("aliasname", "")] = None
    else:
        for fields in node.values():
            alias = fields.get("alias", {}).get("aliasname") if isinstance(fields, dict) else None
            if alias is not None:
                aliases[alias] = None


def _conjuncts(expr: Any) -> list[Any]:
    if isinstance(expr, dict) and expr.get("BoolExpr", {}).get("boolop") == "AND_EXPR":
        out: list[Any] = []
        for arg in expr["BoolExpr"].get("args", []):
            out.extend(_conjuncts(arg))
        return out
    return [expr] if expr else []


def _where_keys(
    where: Any, aliases: dict[str, str | None], target: str | None
) -> dict[str, tuple[WhereKey, ...]]:
    keys: dict[str, list[WhereKey]] = {}
    for expr in _conjuncts(where):
        found = _key(expr)
        if found is None:
            continue
        qualifier, key = found
        table = target if qualifier is None else aliases.get(qualifier)
        if table is not None:
            keys.setdefault(table, []).append(key)
    return {table: tuple(found) for table, found in keys.items()}


def _key(expr: dict[str, Any]) -> tuple[str | None, WhereKey] | None:
    """(column qualifier, key) for an equality conjunct, else None."""
    a_expr = expr.get("A_Expr")
    if a_expr is None:
        return None
    name = a_expr.get("name", ())
    if len(name) != 1 or name[0].get("String", {}).get("sval") != "=":
        return None
    kind, left, right = a_expr.get("kind"), a_expr.get("lexpr"), a_expr.get("rexpr")
    if kind == "AEXPR_OP" and not _column(left):
        left, right = right, left
    column = _column(left)
    if column is None:
        return None
    if kind == "AEXPR_OP":
        values: list[KeyValue | None] = [_value(right)]
        op = "="
    elif kind == "AEXPR_IN":
        values = [_value(v) for v in right.get("List", {}).get("items", [])]
        op = "in"
    elif kind == "AEXPR_OP_ANY":
        array = _uncast(right)
        items = array["A_ArrayExpr"].get("elements", []) if "A_ArrayExpr" in array else [right]
        values = [_value(v) for v in items]
        op = "any"
    else:
        return None
    if not values or any(v is None for v in values):
        return None
    return column[0], WhereKey(column[1], op, tuple(v for v in values if v is not None))


def _column(node: Any) -> tuple[str | None, str] | None:
    """(qualifier or None, column) of a plain column reference."""
    if not isinstance(node, dict) or "ColumnRef" not in node:
        return None
    fields = node["ColumnRef"].get("fields", [])
    if not fields or any("String" not in f for f in fields):
        return None
    names = [f["String"].get("sval", "") for f in fields]
    return (".".join(names[:-1]) or None), names[-1]


def _uncast(node: Any) -> Any:
    while isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    return node if isinstance(node, dict) else {}


def _value(node: Any) -> KeyValue | None:
    node = _uncast(node)
    if "ParamRef" in node:
        return KeyValue(param=int(node["ParamRef"].get("number", 0)))
    if "A_Const" in node:
        text = const_text(node["A_Const"])
        return None if text is None else KeyValue(literal=text)
    return None


def _pins(
    keys: dict[str, tuple[WhereKey, ...]], scope_columns: frozenset[str]
) -> MappingProxyType[str, MappingProxyType[str, KeyValue]]:
    pinned: dict[str, MappingProxyType[str, KeyValue]] = {}
    for table, table_keys in keys.items():
        values: dict[str, set[KeyValue]] = {}
        for key in table_keys:
            if key.column in scope_columns and key.op != "any" and len(key.values) == 1:
                values.setdefault(key.column, set()).add(key.values[0])
        cols = {col: next(iter(vals)) for col, vals in values.items() if len(vals) == 1}
        if cols:
            pinned[table] = MappingProxyType(cols)
    return MappingProxyType(pinned)


def _insert_scope(fields: dict[str, Any], scope_columns: frozenset[str], single: bool) -> Scope:
    """INSERT ... VALUES whose rows all carry one value for a scope column: confined."""
    table = relation_name(fields.get("relation", {}))
    conflict = fields.get("onConflictClause", {}).get("action")
    select = fields.get("selectStmt", {}).get("SelectStmt", {})
    rows = [r.get("List", {}).get("items", []) for r in select.get("valuesLists", [])]
    if not single or conflict == "ONCONFLICT_UPDATE" or not rows or "withClause" in select:
        return Scope()
    cols = [c.get("ResTarget", {}).get("name") for c in fields.get("cols", [])]
    confined: dict[str, KeyValue] = {}
    for column in scope_columns & {c for c in cols if c}:
        index = cols.index(column)
        values = {_value(row[index]) if index < len(row) else None for row in rows}
        value = values.pop() if len(values) == 1 else None
        if value is not None:
            confined[column] = value
    if not confined:
        return Scope()
    pinned = MappingProxyType({table: MappingProxyType(confined)})
    return Scope(pinned=pinned, confined=True, confined_to=MappingProxyType(confined))
