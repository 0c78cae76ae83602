"""The cache path of a session, as conversations: a real `ClientSession` with its real
`SessionCache` and `CacheService` over the in-memory backend, fake sockets on both sides
(`tests.proxy.fakes`), and Postgres's side scripted message by message.

Every step asserts the exact messages the client received and the exact messages that went
upstream.  Each session reaches READY through its real start-up, including the hidden read
of its state (`proxy.state.STARTUP_SQL`), which the client never sees (`Proxy.connect`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy import codec
from proxy.codec import BackendTag, FrontendTag
from proxy.state import REREAD_SQL
from tests.proxy.fakes import (
    INT4_OID,
    Bind,
    BindComplete,
    CommandComplete,
    DataRow,
    Describe,
    ErrorResponse,
    Execute,
    Flush,
    ParameterDescription,
    Parse,
    ParseComplete,
    Peer,
    Proxy,
    Query,
    ReadyForQuery,
    RowDescription,
    Sync,
    reread_answer,
    settle,
)

READ = "select id, name from items where id = 1"
READ_ROWS = [RowDescription("id", "name"), DataRow("1", "apple"), CommandComplete("SELECT 1")]

BY_ID = "select id, name from items where id = $1"


def rows(*ids: str) -> list[bytes]:
    """What Postgres answers an Execute of BY_ID (after its RowDescription, if described)."""
    return [*(DataRow(i, f"item {i}") for i in ids), CommandComplete(f"SELECT {len(ids)}")]


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    p = Proxy()
    yield p
    await p.close()


@pytest.fixture
async def peer(proxy: Proxy) -> Peer:
    return await proxy.connect()


async def fill_read(peer: Peer) -> None:
    """The simple Query READ misses, goes upstream, and is filled at its ReadyForQuery."""
    await peer.send(Query(READ))
    assert peer.upstream.take() == [Query(READ)]
    await peer.answer(*READ_ROWS, ReadyForQuery("I"))
    assert peer.client.take() == [*READ_ROWS, ReadyForQuery("I")]


# --- simple Query --------------------------------------------------------------------------


async def test_simple_query_miss_fill_then_hit(proxy: Proxy, peer: Peer) -> None:
    await peer.send(Query(READ))
    assert peer.upstream.take() == [Query(READ)]  # a miss goes upstream unchanged
    assert peer.client.take() == []
    assert (proxy.stats.misses, proxy.backend.fills_stored) == (1, 0)

    await peer.answer(*READ_ROWS, ReadyForQuery("I"))
    assert peer.client.take() == [*READ_ROWS, ReadyForQuery("I")]  # streamed as it came
    assert proxy.backend.fills_stored == 1  # filled at ReadyForQuery

    await peer.send(Query(READ))
    assert peer.upstream.take() == []  # a hit: nothing goes upstream
    assert peer.client.take() == [*READ_ROWS, ReadyForQuery("I")]
    assert (proxy.stats.hits, proxy.stats.misses) == (1, 1)


async def test_a_hit_is_shared_by_another_session(proxy: Proxy, peer: Peer) -> None:
    await fill_read(peer)
    other = await proxy.connect()
    await other.send(Query(READ))
    assert other.upstream.take() == []
    assert other.client.take() == [*READ_ROWS, ReadyForQuery("I")]


# --- extended protocol ---------------------------------------------------------------------


def unit(param: str, *, parse: bool = True, statement: str = "") -> list[bytes]:
    """One read unit of BY_ID as psycopg sends it: [Parse] Bind Describe Execute Sync."""
    return [
        *([Parse(statement, BY_ID, [INT4_OID])] if parse else []),
        Bind("", statement, [param]),
        Describe("P"),
        Execute(),
        Sync(),
    ]


async def test_extended_miss_then_hit_defers_the_parse(proxy: Proxy, peer: Peer) -> None:
    await peer.send(*unit("1"))
    assert peer.upstream.take() == unit("1")
    reply = [ParseComplete(), BindComplete(), RowDescription("id", "name"), *rows("1")]
    await peer.answer(*reply, ReadyForQuery("I"))
    assert peer.client.take() == [*reply, ReadyForQuery("I")]
    assert proxy.backend.fills_stored == 1

    # The same unit again: answered here, ParseComplete included; the Parse is deferred.
    await peer.send(*unit("1"))
    assert peer.upstream.take() == []
    assert peer.client.take() == [*reply, ReadyForQuery("I")]
    assert proxy.stats.hits == 1

    # A Bind of the unnamed statement that misses: the deferred Parse goes up first, and
    # its ParseComplete is not shown to the client (who had it from the hit).
    await peer.send(*unit("2", parse=False))
    assert peer.upstream.take() == [Parse("", BY_ID, [INT4_OID]), *unit("2", parse=False)]
    await peer.answer(ParseComplete(), BindComplete(), RowDescription("id", "name"),
                      *rows("2"), ReadyForQuery("I"))
    assert peer.client.take() == [BindComplete(), RowDescription("id", "name"), *rows("2"),
                                  ReadyForQuery("I")]
    assert proxy.backend.fills_stored == 2  # (the miss was captured all the same)

    # Postgres has the statement now: a later miss sends no Parse.
    await peer.send(*unit("3", parse=False))
    assert peer.upstream.take() == unit("3", parse=False)


async def test_deferred_named_parse_goes_up_before_its_first_bind(proxy: Proxy) -> None:
    first = await proxy.connect()
    await first.send(*unit("1", statement="s1"))
    assert first.upstream.take() == unit("1", statement="s1")
    reply = [ParseComplete(), BindComplete(), RowDescription("id", "name"), *rows("1")]
    await first.answer(*reply, ReadyForQuery("I"))
    assert first.client.take() == [*reply, ReadyForQuery("I")]

    # Another session prepares s1 too: a hit, and s1 exists only in the client's view.
    second = await proxy.connect()
    await second.send(*unit("1", statement="s1"))
    assert second.upstream.take() == []
    assert second.client.take() == [*reply, ReadyForQuery("I")]

    # Its next use of s1 upstream creates it there first, hidden.
    await second.send(*unit("2", parse=False, statement="s1"))
    assert second.upstream.take() == [
        Parse("s1", BY_ID, [INT4_OID]), *unit("2", parse=False, statement="s1")
    ]
    await second.answer(ParseComplete(), BindComplete(), RowDescription("id", "name"),
                        *rows("2"), ReadyForQuery("I"))
    assert second.client.take() == [BindComplete(), RowDescription("id", "name"), *rows("2"),
                                    ReadyForQuery("I")]


async def test_hit_after_the_clients_own_parse_went_upstream(proxy: Proxy, peer: Peer) -> None:
    """asyncpg prepares with Parse/Describe statement/Flush, then runs Bind/Execute/Sync.
    On a hit after such a Flush, Postgres has an implicit transaction open for the
    client's Parse: the client's Sync must go up and Postgres's ReadyForQuery end the
    answer (invariant 8)."""
    prepare = [Parse("stmt_1", BY_ID, [INT4_OID]), Describe("S", "stmt_1"), Flush()]
    described = [ParseComplete(), ParameterDescription(INT4_OID), RowDescription("id", "name")]
    await peer.send(*prepare)
    assert peer.upstream.take() == prepare
    await peer.answer(*described)
    assert peer.client.take() == described

    run = [Bind("", "stmt_1", ["1"]), Execute(), Sync()]
    await peer.send(*run)
    assert peer.upstream.take() == run  # a miss
    await peer.answer(BindComplete(), *rows("1"), ReadyForQuery("I"))
    assert peer.client.take() == [BindComplete(), *rows("1"), ReadyForQuery("I")]
    assert proxy.backend.fills_stored == 1

    # A second prepared statement of the same SQL (a new asyncpg connection would do it).
    prepare = [Parse("stmt_2", BY_ID, [INT4_OID]), Describe("S", "stmt_2"), Flush()]
    await peer.send(*prepare)
    assert peer.upstream.take() == prepare
    await peer.answer(*described)
    assert peer.client.take() == described

    await peer.send(Bind("", "stmt_2", ["1"]), Execute(), Sync())
    assert peer.client.take() == [BindComplete(), *rows("1")]  # the hit, without its end
    assert peer.upstream.take() == [Sync()]  # the client's Sync goes up ...
    assert proxy.stats.hits == 1
    await peer.answer(ReadyForQuery("I"))
    assert peer.client.take() == [ReadyForQuery("I")]  # ... and Postgres's answer ends it

    # The session is in step: a simple Query is forwarded and answered as usual.
    await peer.send(Query("select 2"))
    assert peer.upstream.take() == [Query("select 2")]


# --- writes: the commit barrier -------------------------------------------------------------


async def test_commit_waits_for_the_invalidation(proxy: Proxy, peer: Peer) -> None:
    await fill_read(peer)
    update = "update items set name = 'pear' where id = 1"
    proxy.backend.gate = asyncio.Event()

    await peer.send(Query(update))
    assert peer.upstream.take() == [Query(update)]  # (after its in-flight mark)
    assert proxy.backend.marks == 1
    await peer.answer(CommandComplete("UPDATE 1"), ReadyForQuery("I"))
    # The commit's ReadyForQuery waits for the bump; the upstream is paused meanwhile.
    assert peer.client.take() == [CommandComplete("UPDATE 1")]
    assert peer.upstream.paused
    await settle()
    assert peer.client.take() == []

    proxy.backend.gate.set()
    await settle()
    assert peer.client.take() == [ReadyForQuery("I")]
    assert not peer.upstream.paused
    # Without a catalog connection a write's reach is the whole database: its epoch.
    assert proxy.backend.bumped == [[proxy.service.context("app").namespace.epoch]]

    # The read filled before the commit is stale now: it misses.
    await peer.send(Query(READ))
    assert peer.upstream.take() == [Query(READ)]
    assert proxy.stats.misses == 2 and proxy.stats.hits == 0


# --- pipelines: an error skips until Sync ---------------------------------------------------


async def test_pipeline_error_skips_until_sync(proxy: Proxy, peer: Peer) -> None:
    # A pipeline: a failing statement, then a cacheable read, one Sync.
    failing = [Parse("", "select * from missing"), Bind(), Describe("P"), Execute()]
    read = unit("1")[:-1]
    await peer.send(*failing, *read, Sync())
    assert peer.upstream.take() == [*failing, *read, Sync()]
    error = ErrorResponse("42P01", 'relation "missing" does not exist')
    await peer.answer(error, ReadyForQuery("I"))  # Postgres skipped the read
    assert peer.client.take() == [error, ReadyForQuery("I")]
    assert proxy.backend.fills_stored == 0
    assert not peer.session.tracker.skipping and peer.session.tracker.idle()

    # The session goes on: the read alone misses (nothing was cached), then hits.
    reply = [ParseComplete(), BindComplete(), RowDescription("id", "name"), *rows("1")]
    await peer.send(*unit("1"))
    assert peer.upstream.take() == unit("1")
    await peer.answer(*reply, ReadyForQuery("I"))
    assert peer.client.take() == [*reply, ReadyForQuery("I")]
    await peer.send(*unit("1"))
    assert peer.upstream.take() == []
    assert peer.client.take() == [*reply, ReadyForQuery("I")]


async def test_no_hit_while_postgres_skips_until_sync(proxy: Proxy, peer: Peer) -> None:
    """A cached read sent after an error, before the Sync, must not be answered from the
    cache: Postgres discards it, so the client gets no result for it."""
    reply = [ParseComplete(), BindComplete(), RowDescription("id", "name"), *rows("1")]
    await peer.send(*unit("1"))
    await peer.answer(*reply, ReadyForQuery("I"))
    assert peer.upstream.take() == unit("1")
    assert peer.client.take() == [*reply, ReadyForQuery("I")]

    # psycopg's pipeline mode: a unit then Flush, its results read before the Sync.
    bad = [Parse("", BY_ID, [INT4_OID]), Bind("", "", ["x"]), Describe("P"), Execute(), Flush()]
    await peer.send(*bad)
    assert peer.upstream.take() == bad  # a miss, being captured
    error = ErrorResponse("22P02", 'invalid input syntax for type integer: "x"')
    await peer.answer(ParseComplete(), error)
    assert peer.client.take() == [ParseComplete(), error]

    lookups = proxy.backend.lookups
    await peer.send(*unit("1"))  # the cached read, while Postgres skips until Sync
    assert peer.upstream.take() == unit("1")
    assert proxy.backend.lookups == lookups
    await peer.answer(ReadyForQuery("I"))
    assert peer.client.take() == [ReadyForQuery("I")]
    assert proxy.backend.fills_stored == 1  # the failed unit was not filled
    assert proxy.stats.fills_abandoned == 1

    await peer.send(*unit("1"))  # usable again: a hit
    assert peer.upstream.take() == []
    assert peer.client.take() == [*reply, ReadyForQuery("I")]


# --- session state --------------------------------------------------------------------------


async def test_do_makes_the_state_unknown_until_it_is_read_back(
    proxy: Proxy, peer: Peer
) -> None:
    await fill_read(peer)
    do = "do $$ begin perform pg_catalog.set_config('search_path', 'other', false); end $$"
    await peer.send(Query(do))
    assert peer.upstream.take() == [Query(do)]
    await peer.answer(CommandComplete("DO"), ReadyForQuery("I"))
    assert peer.client.take() == [CommandComplete("DO"), ReadyForQuery("I")]
    # The proxy asks the session's backend what its state is now.
    assert peer.upstream.take() == [Query(REREAD_SQL)]

    lookups = proxy.backend.lookups
    await peer.send(Query(READ))
    assert peer.upstream.take() == []  # held: neither looked up nor forwarded yet
    assert peer.client.take() == []
    assert proxy.backend.lookups == lookups

    await peer.answer(*reread_answer())
    # The answer is not relayed; the read goes on, looked up now (a miss: the DO may have
    # written anything, so the database was invalidated).
    assert peer.upstream.take() == [Query(READ)]
    assert peer.client.take() == []
    assert proxy.backend.lookups == lookups + 1
    await peer.answer(*READ_ROWS, ReadyForQuery("I"))
    assert peer.client.take() == [*READ_ROWS, ReadyForQuery("I")]


async def test_read_pipelined_behind_do_is_not_looked_up(proxy: Proxy, peer: Peer) -> None:
    await fill_read(peer)
    do = "do $$ begin perform 1; end $$"
    lookups = proxy.backend.lookups
    await peer.send(Query(do), Query(READ))
    assert peer.upstream.take() == [Query(do), Query(READ)]
    assert proxy.backend.lookups == lookups
    await peer.answer(CommandComplete("DO"), ReadyForQuery("I"))
    assert peer.client.take() == [CommandComplete("DO"), ReadyForQuery("I")]
    assert peer.upstream.take() == []  # the read-back waits for the read's answer
    await peer.answer(*READ_ROWS, ReadyForQuery("I"))
    assert peer.client.take() == [*READ_ROWS, ReadyForQuery("I")]
    assert peer.upstream.take() == [Query(REREAD_SQL)]
    await peer.answer(*reread_answer())
    assert peer.client.take() == []
    assert proxy.backend.fills_stored == 1  # (the first fill only)


# --- more of the same conversations ----------------------------------------------------------


async def test_commit_of_a_transaction_block_waits_at_its_command_complete(
    proxy: Proxy, peer: Peer
) -> None:
    await fill_read(peer)
    update = "update items set name = 'pear' where id = 1"
    for sql, tag in (("begin", "BEGIN"), (update, "UPDATE 1")):
        await peer.send(Query(sql))
        assert peer.upstream.take() == [Query(sql)]
        await peer.answer(CommandComplete(tag), ReadyForQuery("T"))
        assert peer.client.take() == [CommandComplete(tag), ReadyForQuery("T")]
    assert proxy.backend.marks == 0  # inside a block the writes are marked at COMMIT

    # A read inside the transaction goes to Postgres, cached or not.
    await peer.send(Query(READ))
    assert peer.upstream.take() == [Query(READ)]
    await peer.answer(*READ_ROWS, ReadyForQuery("T"))
    assert peer.client.take() == [*READ_ROWS, ReadyForQuery("T")]

    proxy.backend.gate = asyncio.Event()
    await peer.send(Query("commit"))
    assert peer.upstream.take() == [Query("commit")]
    assert proxy.backend.marks == 1
    await peer.answer(CommandComplete("COMMIT"), ReadyForQuery("I"))
    assert peer.client.take() == []  # the COMMIT's CommandComplete already waits
    proxy.backend.gate.set()
    await settle()
    assert peer.client.take() == [CommandComplete("COMMIT"), ReadyForQuery("I")]
    assert len(proxy.backend.bumped) == 1

    await peer.send(Query(READ))
    assert peer.upstream.take() == [Query(READ)]  # invalidated: a miss


async def test_flush_ended_hit_then_sync_answered_here(proxy: Proxy, peer: Peer) -> None:
    reply = [ParseComplete(), BindComplete(), RowDescription("id", "name"), *rows("1")]
    await peer.send(*unit("1"))
    await peer.answer(*reply, ReadyForQuery("I"))
    assert peer.upstream.take() == unit("1")
    assert peer.client.take() == [*reply, ReadyForQuery("I")]

    # Pipeline mode: the unit ends with Flush; its results come at once, the Sync later.
    await peer.send(*unit("1")[:-1], Flush())
    assert peer.upstream.take() == []
    assert peer.client.take() == reply
    await peer.send(Sync())
    assert peer.upstream.take() == []
    assert peer.client.take() == [ReadyForQuery("I")]


async def test_row_limited_execute(proxy: Proxy, peer: Peer) -> None:
    """Execute with a row limit: the miss asks Postgres for one row more, to know the
    result is whole; the client still sees what Postgres answers the limit it asked."""
    limited = [Parse("", BY_ID, [INT4_OID]), Bind("", "", ["1"]), Describe("P"),
               Execute("", 1), Sync()]
    await peer.send(*limited)
    assert peer.upstream.take() == [*limited[:3], Execute("", 2), Sync()]
    head = [ParseComplete(), BindComplete(), RowDescription("id", "name")]
    await peer.answer(*head, *rows("1"), ReadyForQuery("I"))
    suspended = codec.message(BackendTag.PORTAL_SUSPENDED)
    assert peer.client.take() == [*head, DataRow("1", "item 1"), suspended, ReadyForQuery("I")]
    assert proxy.backend.fills_stored == 1  # the whole result

    await peer.send(*limited)  # a hit, limited the same way
    assert peer.upstream.take() == []
    assert peer.client.take() == [*head, DataRow("1", "item 1"), suspended, ReadyForQuery("I")]
    await peer.send(*unit("1"))  # and the same entry without a limit
    assert peer.upstream.take() == []
    assert peer.client.take() == [*head, *rows("1"), ReadyForQuery("I")]


async def test_simple_query_hit_destroys_the_unnamed_statement(
    proxy: Proxy, peer: Peer
) -> None:
    await fill_read(peer)
    await peer.send(*unit("1"))
    reply = [ParseComplete(), BindComplete(), RowDescription("id", "name"), *rows("1")]
    await peer.answer(*reply, ReadyForQuery("I"))
    assert peer.upstream.take() == unit("1")
    assert peer.client.take() == [*reply, ReadyForQuery("I")]

    await peer.send(Query(READ))  # a hit: Postgres would have dropped the unnamed statement
    assert peer.upstream.take() == []
    assert peer.client.take() == [*READ_ROWS, ReadyForQuery("I")]

    # So a Bind of it fails as it would have: the proxy closes it upstream first, hidden.
    await peer.send(*unit("2", parse=False))
    close_unnamed = codec.message(FrontendTag.CLOSE, b"S\x00")
    assert peer.upstream.take() == [close_unnamed, *unit("2", parse=False)]
    error = ErrorResponse("26000", "unnamed prepared statement does not exist")
    await peer.answer(codec.message(BackendTag.CLOSE_COMPLETE), error, ReadyForQuery("I"))
    assert peer.client.take() == [error, ReadyForQuery("I")]


async def test_messages_sent_with_the_startup_wait_for_the_state_read_back(
    proxy: Proxy,
) -> None:
    peer = await proxy.connect(early=[Query(READ)])  # (asserts the read-back is hidden)
    assert peer.upstream.take() == [Query(READ)]  # then the client's Query goes up
    await peer.answer(*READ_ROWS, ReadyForQuery("I"))
    assert peer.client.take() == [*READ_ROWS, ReadyForQuery("I")]
    assert proxy.backend.fills_stored == 1


async def test_pipelined_read_behind_a_commit_resumes_after_the_barrier(
    proxy: Proxy, peer: Peer
) -> None:
    await fill_read(peer)
    update = "update items set name = 'pear' where id = 1"
    proxy.backend.gate = asyncio.Event()
    await peer.send(Query(update), Query(READ))  # one chunk: the read cannot be a hit
    assert peer.upstream.take() == [Query(update), Query(READ)]
    # Postgres answers both in one chunk; the stream stops before the commit's
    # ReadyForQuery and goes on from there once the invalidation is done.
    await peer.answer(CommandComplete("UPDATE 1"), ReadyForQuery("I"),
                      *READ_ROWS, ReadyForQuery("I"))
    assert peer.client.take() == [CommandComplete("UPDATE 1")]
    proxy.backend.gate.set()
    await settle()
    assert peer.client.take() == [ReadyForQuery("I"), *READ_ROWS, ReadyForQuery("I")]
    assert proxy.stats.hits == 0


async def test_a_deferred_parse_that_fails_upstream_reports_its_error(
    proxy: Proxy
) -> None:
    first = await proxy.connect()
    await first.send(*unit("1", statement="s1"))
    reply = [ParseComplete(), BindComplete(), RowDescription("id", "name"), *rows("1")]
    await first.answer(*reply, ReadyForQuery("I"))
    second = await proxy.connect()
    await second.send(*unit("1", statement="s1"))
    assert second.upstream.take() == []
    assert second.client.take() == [*reply, ReadyForQuery("I")]

    # The table went away meanwhile: the deferred Parse fails, in place of the client's.
    await second.send(*unit("2", parse=False, statement="s1"))
    assert second.upstream.take() == [
        Parse("s1", BY_ID, [INT4_OID]), *unit("2", parse=False, statement="s1")
    ]
    error = ErrorResponse("42P01", 'relation "items" does not exist')
    await second.answer(error, ReadyForQuery("I"))
    assert second.client.take() == [error, ReadyForQuery("I")]

    # Still deferred: the next use sends it again.
    await second.send(*unit("3", parse=False, statement="s1"))
    assert second.upstream.take() == [
        Parse("s1", BY_ID, [INT4_OID]), *unit("3", parse=False, statement="s1")
    ]


async def test_state_stays_unknown_when_the_read_back_fails(proxy: Proxy, peer: Peer) -> None:
    await fill_read(peer)
    await peer.send(Query("do $$ begin perform 1; end $$"))
    await peer.answer(CommandComplete("DO"), ReadyForQuery("I"))
    assert peer.upstream.take() == [Query("do $$ begin perform 1; end $$"), Query(REREAD_SQL)]
    peer.client.take()

    await peer.send(Query(READ))  # waits for the read-back ...
    error = ErrorResponse("57014", "canceling statement due to statement timeout")
    await peer.answer(error, ReadyForQuery("I"))
    assert peer.client.take() == []  # (the proxy's own error is not the client's)
    # ... which failed: the read goes upstream without a lookup, counted as a bypass.
    assert peer.upstream.take() == [Query(READ)]
    assert proxy.stats.bypass == {"session_state_unknown": 1}
    await peer.answer(*READ_ROWS, ReadyForQuery("I"))
    assert peer.client.take() == [*READ_ROWS, ReadyForQuery("I")]
    assert peer.upstream.take() == [Query(REREAD_SQL)]  # tried again at the next idle moment
    await peer.answer(*reread_answer())
    assert peer.client.take() == []
    assert peer.session.cache is not None and not peer.session.cache.unknown


async def test_flush_ended_hit_after_the_clients_own_flush(proxy: Proxy, peer: Peer) -> None:
    reply = [ParseComplete(), BindComplete(), RowDescription("id", "name"), *rows("1")]
    await peer.send(*unit("1"))
    await peer.answer(*reply, ReadyForQuery("I"))
    peer.upstream.take(), peer.client.take()

    prepare = [Parse("other", "select 2"), Describe("S", "other"), Flush()]
    await peer.send(*prepare)
    assert peer.upstream.take() == prepare
    described = [ParseComplete(), ParameterDescription(), RowDescription("c")]
    await peer.answer(*described)
    assert peer.client.take() == described

    await peer.send(*unit("1")[:-1], Flush())  # a hit, answered at once
    assert peer.upstream.take() == []
    assert peer.client.take() == reply
    await peer.send(Sync())  # Postgres has an open implicit transaction: its Sync goes up
    assert peer.upstream.take() == [Sync()]
    assert peer.client.take() == []
    await peer.answer(ReadyForQuery("I"))
    assert peer.client.take() == [ReadyForQuery("I")]


async def test_no_hit_after_a_failed_parse_until_sync(proxy: Proxy, peer: Peer) -> None:
    """The same with nothing executed yet: only the skipping keeps the read off the cache."""
    reply = [ParseComplete(), BindComplete(), RowDescription("id", "name"), *rows("1")]
    await peer.send(*unit("1"))
    await peer.answer(*reply, ReadyForQuery("I"))
    peer.upstream.take(), peer.client.take()

    await peer.send(Parse("bad", "selec 1"), Flush())
    assert peer.upstream.take() == [Parse("bad", "selec 1"), Flush()]
    error = ErrorResponse("42601", 'syntax error at or near "selec"')
    await peer.answer(error)
    assert peer.client.take() == [error]
    assert peer.session.tracker.skipping and peer.session.tracker.idle()

    await peer.send(*unit("1"))
    assert peer.upstream.take() == unit("1")  # Postgres discards it: so must the proxy
    await peer.answer(ReadyForQuery("I"))
    assert peer.client.take() == [ReadyForQuery("I")]
    assert proxy.stats.hits == 0
