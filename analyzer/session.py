"""Session and transaction control: SET, RESET, DISCARD, BEGIN ... COMMIT.

Knows: how VariableSetStmt, DiscardStmt and TransactionStmt look in the JSON tree, and how
Postgres flattens SET arguments into the text value a GUC receives (list GUCs such as
search_path quote each element as an identifier when needed: `SET search_path TO a, "B"`
gives `a, "B"`; other GUCs join the elements with ", ").
Must not know: the session's current state (the proxy applies the changes).
Invariants: a change that cannot be described exactly has `value=None`.
"""

from __future__ import annotations

import re
from typing import Any

from analyzer.model import SessionChange, TransactionInfo, TxnCommand
from analyzer.walk import const_text

#: GUCs flagged GUC_LIST_QUOTE in guc_tables.c: elements are quoted identifiers.
_LIST_QUOTE = frozenset(
    {"search_path", "temp_tablespaces", "session_preload_libraries",
     "shared_preload_libraries", "local_preload_libraries", "unix_socket_directories"}
)  # fmt: skip
_PLAIN_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")

_TXN_COMMANDS = {
    "TRANS_STMT_BEGIN": TxnCommand.BEGIN, "TRANS_STMT_START": TxnCommand.START,
    "TRANS_STMT_COMMIT": TxnCommand.COMMIT, "TRANS_STMT_ROLLBACK": TxnCommand.ROLLBACK,
    "TRANS_STMT_SAVEPOINT": TxnCommand.SAVEPOINT, "TRANS_STMT_RELEASE": TxnCommand.RELEASE,
    "TRANS_STMT_ROLLBACK_TO": TxnCommand.ROLLBACK_TO, "TRANS_STMT_PREPARE": TxnCommand.PREPARE,
    "TRANS_STMT_COMMIT_PREPARED": TxnCommand.COMMIT_PREPARED,
    "TRANS_STMT_ROLLBACK_PREPARED": TxnCommand.ROLLBACK_PREPARED,
}  # fmt: skip

_DISCARD = {
    "DISCARD_ALL": "discard_all", "DISCARD_TEMP": "discard_temp",
    "DISCARD_PLANS": "discard_plans", "DISCARD_SEQUENCES": "discard_sequences",
}  # fmt: skip


def set_value(name: str, args: list[Any]) -> str | None:
    """The text Postgres gives GUC `name` for SET arguments `args` (None if not literal)."""
    parts: list[str] = []
    for arg in args:
        fields = arg.get("A_Const")
        text = const_text(fields) if fields is not None else None
        if text is None:
            return None
        if name in _LIST_QUOTE and "sval" in fields and not _PLAIN_IDENT.fullmatch(text):
            text = '"' + text.replace('"', '""') + '"'
        parts.append(text)
    return ", ".join(parts)


Changes = tuple[tuple[SessionChange, ...], "TransactionInfo | None"]


def variable_set(fields: dict[str, Any]) -> Changes:
    """Session changes (and transaction characteristics) of a SET/RESET statement."""
    kind = fields.get("kind", "")
    name = fields.get("name")
    local = bool(fields.get("is_local"))
    if kind == "VAR_RESET_ALL":
        return (SessionChange("reset_all"),), None
    if kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        return (SessionChange("reset", name, None, local),), None
    if kind == "VAR_SET_MULTI":
        return _characteristics(name or "", fields.get("args", []))
    if kind == "VAR_SET_VALUE" and name is not None:
        return (SessionChange("set", name, set_value(name, fields.get("args", [])), local),), None
    return (SessionChange("set", name, None, local),), None


def _characteristics(which: str, args: list[Any]) -> Changes:
    """SET TRANSACTION ... (local) / SET SESSION CHARACTERISTICS AS TRANSACTION ..."""
    options = _options(args)
    session = which == "SESSION CHARACTERISTICS"
    prefix = "default_" if session else ""
    changes = tuple(
        SessionChange("set", prefix + key, value, local=not session)
        for key, value in options.items()
    )
    if session:
        return changes, None
    info = TransactionInfo(
        TxnCommand.SET_TRANSACTION,
        isolation=options.get("transaction_isolation"),
        read_only=_flag(options.get("transaction_read_only")),
        deferrable=_flag(options.get("transaction_deferrable")),
    )
    return changes, info


def _options(args: list[Any]) -> dict[str, str]:
    """DefElem list -> {name: value as text}; `on`/`1` flags become 'on'."""
    out: dict[str, str] = {}
    for arg in args:
        elem = arg.get("DefElem", {})
        value = elem.get("arg", {})
        text = const_text(value["A_Const"]) if "A_Const" in value else None
        if elem.get("defname", "").startswith("transaction_") and text is not None:
            out[elem["defname"]] = {"1": "on", "0": "off"}.get(text, text)
        elif "defname" in elem:
            out[elem["defname"]] = text or ""
    return out


def _flag(value: str | None) -> bool | None:
    return None if value is None else value == "on"


def transaction(fields: dict[str, Any]) -> TransactionInfo:
    """BEGIN/START/COMMIT/ROLLBACK/SAVEPOINT/RELEASE/ROLLBACK TO/2PC."""
    options = _options(fields.get("options", []))
    return TransactionInfo(
        _TXN_COMMANDS.get(fields.get("kind", ""), TxnCommand.BEGIN),
        isolation=options.get("transaction_isolation"),
        read_only=_flag(options.get("transaction_read_only")),
        deferrable=_flag(options.get("transaction_deferrable")),
        savepoint=fields.get("savepoint_name"),
        gid=fields.get("gid"),
        chain=bool(fields.get("chain")),
    )


def discard(fields: dict[str, Any]) -> SessionChange:
    """DISCARD ALL/TEMP/PLANS/SEQUENCES."""
    return SessionChange(_DISCARD.get(fields.get("target", ""), "discard_all"))
