"""`cache.changes`: committed transactions folded from pgoutput messages, their scopes, and
the plans they invalidate with."""

from __future__ import annotations

import pytest

from cache.changes import (
    DDL_PREFIX,
    MIXED,
    Scope,
    Transaction,
    TransactionAssembler,
    plan_transaction,
)
from cache.keys import Namespace
from cache.pgoutput import (
    UNCHANGED,
    Begin,
    Column,
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
from cache.planner import CachePolicy

ORG = "organization_id"
T, TEXT = 23, 25


def _relation(oid: int, name: str, identity: str, keys: tuple[str, ...]) -> Relation:
    columns = tuple(Column(c, TEXT, -1, c in keys) for c in ("id", ORG, "v"))
    return Relation(oid, "public", name, identity, columns)


FULL = _relation(1, "full_t", "f", ("id", ORG, "v"))  # REPLICA IDENTITY FULL
KEYED = _relation(2, "keyed_t", "d", ("id", ORG))  # primary key (id, organization_id)
PLAIN = _relation(3, "plain_t", "d", ("id",))  # primary key (id)
NO_SCOPE = Relation(4, "public", "other", "d", (Column("id", T, -1, True),))


def row(org: str | None, v: bytes | None = b"x") -> Tuple:
    return (b"1", org.encode() if org is not None else None, v)


def run(*changes: PgOutputMessage) -> Transaction:
    assembler = TransactionAssembler([ORG])
    for relation in (FULL, KEYED, PLAIN, NO_SCOPE):
        assembler.feed(relation)
    assert assembler.feed(Begin(100, 5, 7)) is None
    for change in changes:
        assert assembler.feed(change) is None
    txn = assembler.feed(Commit(0, 100, 148, 5))
    assert txn is not None and not assembler.in_transaction
    return txn


# (id, changes, table, operations, scope of organization_id)
SCOPES: list[tuple[str, tuple[PgOutputMessage, ...], str, str, Scope]] = [
    ("insert", (Insert(3, row("A")),), "plain_t", "INSERT", "A"),
    ("inserts-one-org", (Insert(3, row("A")), Insert(3, row("A"))), "plain_t", "INSERT", "A"),
    ("inserts-two-orgs", (Insert(3, row("A")), Insert(3, row("B"))), "plain_t", "INSERT", MIXED),
    ("insert-null-org", (Insert(3, row(None)),), "plain_t", "INSERT", MIXED),
    ("update-full-same-org", (Update(1, "O", row("A"), row("A", b"y")),), "full_t", "UPDATE",
     "A"),
    ("update-full-moves-org", (Update(1, "O", row("A"), row("B")),), "full_t", "UPDATE", MIXED),
    ("update-key-holds-org", (Update(2, "", None, row("A")),), "keyed_t", "UPDATE", "A"),
    ("update-key-changed", (Update(2, "K", row("A", None), row("B")),), "keyed_t", "UPDATE",
     MIXED),
    ("update-org-not-in-key", (Update(3, "", None, row("A")),), "plain_t", "UPDATE", MIXED),
    ("update-org-unchanged-toast", (Update(2, "", None, (b"1", UNCHANGED, b"x")),), "keyed_t",
     "UPDATE", MIXED),
    ("delete-full", (Delete(1, "O", row("A")),), "full_t", "DELETE", "A"),
    ("delete-key-holds-org", (Delete(2, "K", row("A", None)),), "keyed_t", "DELETE", "A"),
    ("delete-org-not-in-key", (Delete(3, "K", (b"1", None, None)),), "plain_t", "DELETE", MIXED),
    ("insert-then-delete", (Insert(3, row("A")), Delete(3, "K", (b"1", None, None))), "plain_t",
     "INSERT,DELETE", MIXED),
    ("truncate", (Truncate((3,), False, False),), "plain_t", "TRUNCATE", MIXED),
    ("table-without-scope-column", (Insert(4, (b"1",)),), "other", "INSERT", MIXED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "table", "operations", "scope"), [c[1:] for c in SCOPES], ids=[c[0] for c in SCOPES]
)
def test_scope(
    changes: tuple[PgOutputMessage, ...], table: str, operations: str, scope: Scope
) -> None:
    txn = run(*changes)
    assert [t.name for t in txn.tables] == [table]
    assert ",".join(txn.tables[0].operations) == operations
    assert txn.tables[0].scope == {ORG: scope}
    assert (txn.xid, txn.commit_lsn, txn.end_lsn, txn.commit_time) == (7, 100, 148, 5)


def test_tables_in_order_and_ddl_message() -> None:
    txn = run(Insert(3, row("A")), Truncate((1, 2), True, False), Insert(3, row("A")))
    assert [t.name for t in txn.tables] == ["plain_t", "full_t", "keyed_t"]
    assert not txn.ddl
    assert run(Message(True, 90, DDL_PREFIX, b"")).ddl
    assert not run(Message(True, 90, "someone.else", b"")).ddl


def test_non_transactional_ddl_message_acts_at_once() -> None:
    assembler = TransactionAssembler([ORG])
    txn = assembler.feed(Message(False, 90, DDL_PREFIX, b""))
    assert txn is not None and txn.ddl and txn.end_lsn == 90


@pytest.mark.parametrize(
    "messages",
    [
        [Commit(0, 1, 2, 3)],
        [Begin(1, 2, 3), Begin(1, 2, 3)],
        [Insert(3, row("A"))],
        [Begin(1, 2, 3), Insert(99, row("A"))],
    ],
    ids=["commit-outside", "nested-begin", "change-outside", "unknown-relation"],
)
def test_out_of_order_is_a_protocol_error(messages: list[PgOutputMessage]) -> None:
    assembler = TransactionAssembler([ORG])
    assembler.feed(PLAIN)
    with pytest.raises(ReplicationProtocolError):
        for message in messages:
            assembler.feed(message)


class Ancestry:
    def ancestors(self, name: str) -> frozenset[str]:
        return frozenset({"parent"}) if name == "public.part_a" else frozenset()


NS = Namespace("pgr:{x}:", "pgr:epoch")
POLICY = CachePolicy(scope_columns=(ORG,), relations={"plain_t": ("audit.plain_id",)})


def _txn(*changes: PgOutputMessage, extra: Relation | None = None) -> Transaction:
    assembler = TransactionAssembler([ORG])
    for relation in (PLAIN, FULL) + ((extra,) if extra else ()):
        assembler.feed(relation)
    assembler.feed(Begin(1, 2, 3))
    for change in changes:
        assembler.feed(change)
    txn = assembler.feed(Commit(0, 1, 2, 3))
    assert txn is not None
    return txn


def test_plan_scoped_write_and_relations() -> None:
    (plan,) = plan_transaction(_txn(Insert(3, row("A"))), NS, Ancestry(), POLICY)
    assert plan.scope == "A" and plan.operation == "INSERT" and not plan.whole_database
    assert plan.bumps == {
        "pgr:{x}:g:plain_t", "pgr:{x}:g:plain_t#organization_id=A",
        "pgr:{x}:g:audit", "pgr:{x}:g:audit#organization_id:-",
    }  # fmt: skip
    assert plan.tables == {"plain_t", "audit"}


def test_plan_partition_reaches_parent_unscoped() -> None:
    part = Relation(9, "public", "part_a", "d", (Column(ORG, TEXT, -1, False),))
    (plan,) = plan_transaction(_txn(Insert(9, (b"A",)), extra=part), NS, Ancestry(), POLICY)
    assert plan.bumps == {
        "pgr:{x}:g:part_a", "pgr:{x}:g:part_a#organization_id=A",
        "pgr:{x}:g:parent", "pgr:{x}:g:parent#organization_id:-",
    }  # fmt: skip


def test_plan_one_per_table_unscoped() -> None:
    plans = plan_transaction(
        _txn(Insert(3, row("A")), Insert(3, row("B")), Delete(1, "O", row("B"))),
        NS, Ancestry(), POLICY,
    )  # fmt: skip
    assert [(p.table, p.scope) for p in plans] == [("plain_t", None), ("full_t", "B")]
    assert "pgr:{x}:g:plain_t#organization_id:-" in plans[0].bumps


def test_plan_without_catalog_or_for_ddl_is_whole_database() -> None:
    (plan,) = plan_transaction(_txn(Insert(3, row("A"))), NS, None, POLICY)
    assert plan.whole_database and plan.bumps == {NS.epoch} and not plan.catalog_changed
    (ddl,) = plan_transaction(_txn(Message(True, 1, DDL_PREFIX, b"")), NS, Ancestry(), POLICY)
    assert ddl.whole_database and ddl.catalog_changed and ddl.bumps == {NS.epoch, NS.ddl}
    assert plan_transaction(_txn(), NS, None, POLICY) == []
    assert plan_transaction(_txn(), NS, Ancestry(), POLICY) == []
