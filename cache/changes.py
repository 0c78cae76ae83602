"""Committed transactions from the replication stream, and what they invalidate.

Theory of operation.  `TransactionAssembler` is fed the decoded pgoutput messages of one
replication session in order (`cache.pgoutput`).  It remembers each Relation message (they
are sent once per session, before the first change to a relation), and between Begin and
Commit folds every change into a per-table summary: the operations seen and, per scope
column, the one value every changed row had — or `MIXED` as soon as two rows disagree or a
row image cannot tell.  At Commit it returns one `Transaction`; memory is bounded by the
number of tables a transaction touches, never by its rows.

Where a row image carries a scope column (PITFALLS E15; docs/replication.md):

* INSERT: the new row.
* UPDATE: the new row *and* the old value: from the old row when sent (REPLICA IDENTITY
  FULL, or a key that changed), or the new value itself when the column is part of the
  replica identity key and no old key was sent (the key, hence the column, did not change).
  Otherwise the row may have moved from another scope value: unscoped.
* DELETE: the old row, which holds the column only with REPLICA IDENTITY FULL or when the
  column is a key column; otherwise unscoped.
* TRUNCATE: unscoped.

A transactional logical message with the prefix `DDL_PREFIX` (emitted by the event trigger
that ``pgreactive replication install`` creates) marks the transaction as DDL.

`plan_transaction` turns a `Transaction` into the `WritePlan`s the one invalidation path
(`CacheService.invalidate`) takes, as `cache.planner.plan_write` does for a proxied write:
each changed table plus its ancestors (a write to a partition reaches reads of its parent);
tables a trigger or an FK action wrote, and partitions a TRUNCATE of a parent reached, are
in the stream themselves, so unlike a proxied write nothing is unknown.  Without a catalog,
or for DDL, the whole database (the same rule as for proxied writes).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from cache.keys import Namespace, bare, write_generations
from cache.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    PgOutputMessage,
    Relation,
    ReplicationProtocolError,
    Truncate,
    Tuple,
    Update,
)
from cache.planner import CachePolicy, WritePlan

DDL_PREFIX: Final = "pgreactive.ddl"


class Mixed:
    """Rows of one table with different (or unknown) values of a scope column."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MIXED"


MIXED: Final = Mixed()
Scope = str | Mixed


@dataclass(slots=True)
class TableChange:
    """What one transaction did to one table."""

    schema: str
    name: str
    operations: list[str] = field(default_factory=list)  # in first-seen order
    scope: dict[str, Scope] = field(default_factory=dict)  # column -> value or MIXED

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def add(self, operation: str, scope: Mapping[str, Scope]) -> None:
        if operation not in self.operations:
            self.operations.append(operation)
        if not self.scope:  # the first row (every row gives every scope column)
            self.scope = dict(scope)
            return
        for column, value in scope.items():
            if self.scope.get(column, MIXED) != value:
                self.scope[column] = MIXED

    def confined(self) -> dict[str, str]:
        """Scope column → the one value every changed row had (columns that have one)."""
        return {c: v for c, v in self.scope.items() if isinstance(v, str)}


@dataclass(frozen=True, slots=True)
class Transaction:
    """One committed transaction, summarised per table."""

    xid: int
    commit_lsn: int
    end_lsn: int
    commit_time: int  # microseconds since 2000-01-01
    tables: tuple[TableChange, ...]
    ddl: bool = False

    @property
    def empty(self) -> bool:
        return not self.tables and not self.ddl


class TransactionAssembler:
    """Folds a replication session's pgoutput messages into committed `Transaction`s."""

    def __init__(self, scope_columns: Sequence[str]) -> None:
        self.scope_columns = tuple(scope_columns)
        self.relations: dict[int, Relation] = {}
        self._begin: Begin | None = None
        self._tables: dict[int, TableChange] = {}
        self._ddl = False

    @property
    def in_transaction(self) -> bool:
        return self._begin is not None

    def feed(self, message: PgOutputMessage) -> Transaction | None:
        """Take one message; return the transaction it commits, if it is a Commit."""
        match message:
            case Relation():
                self.relations[message.oid] = message
            case Begin():
                if self._begin is not None:
                    raise ReplicationProtocolError("Begin inside a transaction")
                self._begin, self._tables, self._ddl = message, {}, False
            case Commit():
                return self._commit(message)
            case Insert():
                self._change(message.relation, "INSERT", None, message.new, "")
            case Update():
                self._change(message.relation, "UPDATE", message.old, message.new,
                             message.old_kind)  # fmt: skip
            case Delete():
                self._change(message.relation, "DELETE", message.old, None, message.old_kind)
            case Truncate():
                for oid in message.relations:
                    self._table(oid).add("TRUNCATE", dict.fromkeys(self.scope_columns, MIXED))
            case Message():
                if message.prefix == DDL_PREFIX:
                    if message.transactional and self._begin is None:
                        raise ReplicationProtocolError("transactional message outside one")
                    self._ddl = True
                    if not message.transactional:  # a message of its own: act at once
                        return Transaction(0, message.lsn, message.lsn, 0, (), ddl=True)
        return None

    def _commit(self, commit: Commit) -> Transaction:
        if self._begin is None:
            raise ReplicationProtocolError("Commit outside a transaction")
        begin, tables, ddl = self._begin, tuple(self._tables.values()), self._ddl
        self._begin, self._tables, self._ddl = None, {}, False
        return Transaction(begin.xid, commit.commit_lsn, commit.end_lsn, commit.commit_time,
                           tables, ddl)  # fmt: skip

    def _table(self, oid: int) -> TableChange:
        if self._begin is None:
            raise ReplicationProtocolError("a change outside a transaction")
        change = self._tables.get(oid)
        if change is None:
            relation = self.relations.get(oid)
            if relation is None:
                raise ReplicationProtocolError(f"a change to relation {oid} before its Relation")
            change = self._tables[oid] = TableChange(relation.namespace, relation.name)
        return change

    def _change(
        self, oid: int, operation: str, old: Tuple | None, new: Tuple | None, old_kind: str
    ) -> None:
        change = self._table(oid)
        relation = self.relations[oid]
        scope: dict[str, Scope] = {}
        for index, column in enumerate(relation.columns):
            if column.name not in self.scope_columns:
                continue
            new_value = _text(new, index)
            if operation == "INSERT":
                scope[column.name] = new_value
            elif old_kind == "O" or (old_kind == "K" and column.key):
                old_value = _text(old, index)
                same = operation == "DELETE" or old_value == new_value
                scope[column.name] = old_value if same else MIXED
            elif operation == "UPDATE" and column.key:  # no old key sent: key unchanged
                scope[column.name] = new_value
            else:
                scope[column.name] = MIXED
        for column_name in self.scope_columns:
            scope.setdefault(column_name, MIXED)  # the table has no such column
        change.add(operation, scope)


def _text(row: Tuple | None, index: int) -> Scope:
    """A column's value as the text a scoped read pins (MIXED when not carried)."""
    if row is None or index >= len(row):
        return MIXED
    value = row[index]
    if value is None or value is UNCHANGED or not isinstance(value, bytes):
        return MIXED
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return MIXED


class AncestryView(Protocol):
    """What planning needs from a catalog (see `cache.catalog.Catalog`)."""

    def ancestors(self, name: str) -> frozenset[str]: ...


def plan_transaction(
    txn: Transaction, ns: Namespace, catalog: AncestryView | None, policy: CachePolicy
) -> list[WritePlan]:
    """The `WritePlan`s that invalidate what `txn` changed (one per changed table)."""
    if txn.ddl:
        tables = frozenset(t.name for t in txn.tables) or frozenset({"*"})
        return [WritePlan(frozenset({ns.epoch, ns.ddl}), "*", tables, "DDL", None, True, True)]
    if catalog is None:
        if txn.empty:
            return []
        tables = frozenset(t.name for t in txn.tables)
        operation = txn.tables[0].operations[0]
        return [WritePlan(frozenset({ns.epoch}), "*", tables, operation, None, True)]
    plans: list[WritePlan] = []
    for change in txn.tables:
        confined = change.confined()
        bumps = set(write_generations(ns, change.name, confined, policy.scope_columns))
        ancestors = catalog.ancestors(change.qualified)
        related = {
            bare(target.rpartition(".")[0])
            for table in (change.name, *ancestors)
            for target in (policy.relations or {}).get(table, ())
        }
        for table in ancestors | related:
            bumps.update(write_generations(ns, table, None, policy.scope_columns))
        scope = next(iter(confined.values()), None)
        plans.append(
            WritePlan(
                frozenset(bumps),
                change.name,
                frozenset({change.name}) | ancestors | related,
                ",".join(change.operations),
                scope,
                catalog_id=id(catalog),
            )
        )
    return plans
