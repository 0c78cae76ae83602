"""Scoped invalidation and `relations` (issue 4, point 6; DESIGN.md "Scoped invalidation").

A read whose WHERE pins `organization_id = X` depends only on writes that may touch org X
(or are unscoped); a write provably confined to org A leaves org B's cached reads alone.
"Still a hit" is proven the only way a client can: org B's rows are changed *directly* in
Postgres (bypassing the proxy) before the write, and the proxy keeps answering B's old rows
(and counts a hit) -- while org A's reads and the unscoped reads come back fresh, equal to
what Postgres answers directly.  An unscoped write makes every read fresh.

`relations` (from a `--config` YAML file) add application-level dependencies: a write to
`agents` invalidates reads of `messages` and `memories`; a write to `organizations` pinned
by `id` invalidates only that organization's `agents` reads.

The module has a database of its own, so only this module's proxy bumps its generations; a
scenario whose "still a hit" fails while the *global* epoch moved (another caching proxy
started on the same Redis, which empties every cache) is run again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.cache_env import (
    Conn,
    Env,
    Params,
    Result,
    cached,
    fetch,
    foreign_bump_retry,
    module_env,
    read,
)

# --- the module's database and proxy --------------------------------------------------------

SCHEMA = """
create table scoped (id int primary key, organization_id text not null, x int not null);
create table organizations (id text primary key, name text not null);
create table agents (id int primary key, organization_id text not null, name text not null);
create table messages (id int primary key, from_agent_id int not null, body text not null);
create table memories (id int primary key, agent_id int not null, body text not null);
"""

CONFIG = """\
relations:
  agents: [messages.from_agent_id, memories.agent_id]
  organizations: [agents.organization_id]
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    config = Path(tmp_path_factory.mktemp("scope")) / "pgreactive.yaml"
    config.write_text(CONFIG)
    yield from module_env("pgr_scope", SCHEMA, "--config", str(config))


@pytest.fixture
def conn(env: Env) -> Iterator[Conn]:
    with env.proxied() as c:
        yield c


@dataclass
class Reads:
    """Named reads, warmed into the cache, then checked against Postgres."""

    env: Env
    conn: Conn
    queries: dict[str, tuple[str, Params]]
    warm: dict[str, Result] | None = None

    def warm_all(self) -> None:
        self.warm = {
            name: cached(self.env.proxy, self.conn, sql, params)
            for name, (sql, params) in self.queries.items()
        }

    def still_cached(self, *names: str) -> None:
        """Each read answers the warmed (now stale) rows from the cache."""
        assert self.warm is not None
        with self.env.direct() as direct:
            for name in names:
                sql, params = self.queries[name]
                got, decided = read(self.env.proxy, self.conn, sql, params)
                now = fetch(direct, sql, params)
                assert now != self.warm[name], f"{name}: premise: changed directly"
                assert (got, decided) == (self.warm[name], ["hit"]), f"{name} not served stale"

    def fresh(self, *names: str) -> None:
        """Each read answers what Postgres has now (and differs from what was cached)."""
        assert self.warm is not None
        with self.env.direct() as direct:
            for name in names:
                sql, params = self.queries[name]
                got, decided = read(self.env.proxy, self.conn, sql, params)
                now = fetch(direct, sql, params)
                assert now != self.warm[name], f"{name}: premise: Postgres has new rows"
                assert got == now, f"{name}: stale after the write ({decided})"
                assert decided == ["miss"], f"{name}: {decided}"


# --- scoped writes ----------------------------------------------------------------------------

SCOPED_ROWS = "insert into scoped values (1, 'A', 10), (2, 'B', 20), (3, 'A', 30), (4, 'B', 40)"

SCOPED_READS: dict[str, tuple[str, Params]] = {
    "b_literal": ("select id, x from scoped where organization_id = 'B' order by id", None),
    "b_param": ("select id, x from scoped where organization_id = %t order by id", ("B",)),
    "b_and": ("select id, x from scoped where x > 0 and organization_id = 'B' order by id", None),
    "a_literal": ("select id, x from scoped where organization_id = 'A' order by id", None),
    "a_param": ("select id, x from scoped where organization_id = %t order by id", ("A",)),
    "all_count": ("select count(*), sum(x) from scoped", None),
    "all_rows": ("select id, organization_id, x from scoped order by id", None),
}
B_READS = ("b_literal", "b_param", "b_and")
A_READS = ("a_literal", "a_param")
ALL_READS = ("all_count", "all_rows")


def _reset_scoped(conn: Conn) -> None:
    """Known rows, written through the proxy (an unscoped write: nothing cached survives)."""
    conn.execute(f"delete from scoped; {SCOPED_ROWS}")


def _change_directly(env: Env, sql: str) -> None:
    with env.direct() as direct:
        direct.execute(sql)


CONFINED_WRITES: dict[str, tuple[str, Params]] = {
    "update_literal": ("update scoped set x = x + 1 where organization_id = 'A' and id = 1", None),
    "update_literal_reversed": (
        "update scoped set x = x + 1 where id = 1 and organization_id = 'A'",
        None,
    ),
    "update_params": (
        "update scoped set x = x + 1 where organization_id = %t and id = %t::int",
        ("A", "1"),
    ),
    "update_whole_org": ("update scoped set x = x + 1 where organization_id = 'A'", None),
    "delete": ("delete from scoped where organization_id = 'A' and id = 3", None),
    "insert_one_org": (
        "insert into scoped (id, organization_id, x) values (5, 'A', 50), (6, 'A', 60)",
        None,
    ),
    "insert_params": (
        "insert into scoped (organization_id, id, x) values (%t, %t::int, %t::int)",
        ("A", "5", "50"),
    ),
}


@pytest.mark.parametrize("write", CONFINED_WRITES)
def test_write_confined_to_org_a_keeps_org_b_cached(env: Env, conn: Conn, write: str) -> None:
    sql, params = CONFINED_WRITES[write]

    def scenario() -> None:
        _reset_scoped(conn)
        reads = Reads(env, conn, SCOPED_READS)
        reads.warm_all()
        # Org B changes behind the proxy's back: only a cache can still answer the old rows.
        _change_directly(env, "update scoped set x = x + 1000 where organization_id = 'B'")
        conn.execute(sql, params)  # confined to org A, through the proxy
        reads.still_cached(*B_READS)
        reads.fresh(*A_READS, *ALL_READS)

    foreign_bump_retry(scenario)


UNSCOPED_WRITES: dict[str, tuple[str, Params]] = {
    "update_by_id": ("update scoped set x = x + 1 where id = 1", None),
    "update_or": ("update scoped set x = x + 1 where organization_id = 'A' or id = 1", None),
    "moves_rows_between_orgs": (
        "update scoped set organization_id = 'B' where organization_id = 'A' and id = 3",
        None,
    ),
    "insert_two_orgs": ("insert into scoped values (5, 'A', 50), (6, 'B', 60)", None),
    # Documented (docs/cache.md): without a column list the analyzer cannot tell which value
    # is organization_id, so the INSERT counts as unscoped even when all rows are in one org.
    "insert_positional": ("insert into scoped values (5, 'A', 50), (6, 'A', 60)", None),
    "delete_by_id": ("delete from scoped where id = 3", None),
    "two_statements": (
        "update scoped set x = x + 1 where organization_id = 'A' and id = 1; "
        "update scoped set x = x + 1 where id = 3",
        None,
    ),
}


@pytest.mark.parametrize("write", UNSCOPED_WRITES)
def test_unscoped_write_invalidates_every_org(env: Env, conn: Conn, write: str) -> None:
    sql, params = UNSCOPED_WRITES[write]

    def scenario() -> None:
        _reset_scoped(conn)
        reads = Reads(env, conn, SCOPED_READS)
        reads.warm_all()
        _change_directly(env, "update scoped set x = x + 1000 where organization_id = 'B'")
        reads.still_cached(*B_READS)  # the direct change alone is not seen
        conn.execute(sql, params)
        reads.fresh(*B_READS, *A_READS, *ALL_READS)

    foreign_bump_retry(scenario)


def test_confined_write_in_a_transaction(env: Env, conn: Conn) -> None:
    """Two writes confined to org A in one transaction: B stays cached; adding an unscoped
    write to the transaction makes B fresh."""

    def scenario() -> None:
        _reset_scoped(conn)
        reads = Reads(env, conn, SCOPED_READS)
        reads.warm_all()
        _change_directly(env, "update scoped set x = x + 1000 where organization_id = 'B'")
        with conn.transaction():
            conn.execute("update scoped set x = x + 1 where organization_id = 'A' and id = 1")
            conn.execute("delete from scoped where organization_id = 'A' and id = 3")
        reads.still_cached(*B_READS)
        reads.fresh(*A_READS, *ALL_READS)

        reads.warm_all()
        _change_directly(env, "update scoped set x = x + 1000 where organization_id = 'B'")
        with conn.transaction():
            conn.execute("update scoped set x = x + 1 where organization_id = 'A' and id = 1")
            conn.execute("update scoped set x = x + 1 where id = 1")
        reads.fresh(*B_READS, *A_READS, *ALL_READS)

    foreign_bump_retry(scenario)


# --- relations ----------------------------------------------------------------------------------

RELATION_ROWS = """
delete from organizations; delete from agents; delete from messages; delete from memories;
insert into organizations values ('A', 'Org A'), ('B', 'Org B');
insert into agents values (1, 'A', 'alice'), (2, 'B', 'bob'), (3, 'A', 'carol');
insert into messages values (1, 1, 'hello'), (2, 2, 'hi');
insert into memories values (1, 1, 'likes tea'), (2, 2, 'likes coffee')
"""

RELATION_READS: dict[str, tuple[str, Params]] = {
    "messages": ("select id, from_agent_id, body from messages order by id", None),
    "messages_of_agent": ("select id, body from messages where from_agent_id = 2", None),
    "memories": ("select id, agent_id, body from memories order by id", None),
    "agents_a": ("select id, name from agents where organization_id = 'A' order by id", None),
    "agents_a_param": (
        "select id, name from agents where organization_id = %t order by id",
        ("A",),
    ),
    "agents_b": ("select id, name from agents where organization_id = 'B' order by id", None),
    "agents_b_param": (
        "select id, name from agents where organization_id = %t order by id",
        ("B",),
    ),
}

AGENT_WRITES: dict[str, tuple[str, Params]] = {
    "update": ("update agents set name = 'alice2' where id = 1", None),
    "update_confined": (
        "update agents set name = 'alice2' where organization_id = 'A' and id = 1",
        None,
    ),
    "insert": ("insert into agents values (9, 'B', 'zed')", None),
    "delete_params": ("delete from agents where id = %t::int", ("3",)),
}


@pytest.mark.parametrize("write", AGENT_WRITES)
def test_write_to_agents_invalidates_messages_and_memories(
    env: Env, conn: Conn, write: str
) -> None:
    sql, params = AGENT_WRITES[write]
    reads = Reads(
        env, conn, {k: RELATION_READS[k] for k in ("messages", "messages_of_agent", "memories")}
    )

    def scenario() -> None:
        conn.execute(RELATION_ROWS)
        reads.warm_all()
        _change_directly(
            env, "update messages set body = body || '!'; update memories set body = body || '!'"
        )
        reads.still_cached("messages", "messages_of_agent", "memories")
        conn.execute(sql, params)  # a write to agents only
        reads.fresh("messages", "messages_of_agent", "memories")

    foreign_bump_retry(scenario)


@pytest.mark.parametrize(
    ("write", "params"),
    [
        ("update organizations set name = 'Org A renamed' where id = 'A'", None),
        ("update organizations set name = %t where id = %t", ("Org A renamed", "A")),
    ],
)
def test_write_to_organization_a_invalidates_only_its_agents(
    env: Env, conn: Conn, write: str, params: Params
) -> None:
    agent_reads = ("agents_a", "agents_a_param", "agents_b", "agents_b_param")
    reads = Reads(env, conn, {k: RELATION_READS[k] for k in agent_reads})

    def scenario() -> None:
        conn.execute(RELATION_ROWS)
        reads.warm_all()
        _change_directly(env, "update agents set name = name || '!'")
        conn.execute(write, params)
        reads.still_cached("agents_b", "agents_b_param")
        reads.fresh("agents_a", "agents_a_param")

    foreign_bump_retry(scenario)


def test_unpinned_write_to_organizations_invalidates_all_agents(env: Env, conn: Conn) -> None:
    agent_reads = ("agents_a", "agents_b_param")
    reads = Reads(env, conn, {k: RELATION_READS[k] for k in agent_reads})

    def scenario() -> None:
        conn.execute(RELATION_ROWS)
        reads.warm_all()
        _change_directly(env, "update agents set name = name || '!'")
        reads.still_cached(*agent_reads)
        conn.execute("update organizations set name = name || '.' where name like 'Org%'")
        reads.fresh(*agent_reads)

    foreign_bump_retry(scenario)
