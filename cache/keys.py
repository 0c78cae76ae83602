"""Cache keys and generation-counter names.

Theory of operation.  A cached result is found under an *entry key*: a hash of everything
that can change the bytes Postgres would send for the same request — upstream identity,
database, every result-affecting session setting (role and session user included), the
exact statement text, parameter type OIDs, parameter formats and bytes, result formats, and
the request shape (simple Query, or extended with/without a RowDescription).  Never the
fingerprint or normalised text: they ignore constants and aliases (PITFALLS C).

Validity comes from *generation counters* (DESIGN.md, "Generations"): an entry records the
values of the counters it depends on, read before its query ran, and is served only while
they are unchanged.  Counters are named here:

    NS:epoch                            global: bumped when the cache heals after an outage
    NS:{DB}:epoch                       database: DDL, writes of unknown reach
    NS:{DB}:ddl                         database: DDL only (tells instances to reload catalogs)
    NS:{DB}:g:TABLE                     any write to TABLE              ("gen(T, any)")
    NS:{DB}:g:TABLE#COLUMN:-            a write to TABLE not confined on scope column COLUMN
    NS:{DB}:g:TABLE#COLUMN=VALUE        a write to TABLE confined to COLUMN = VALUE

`NS` is the deployment's namespace (`proxy.config.namespace`: the `namespace` setting, or
one derived from the upstream and the Redis database), so deployments sharing a Redis never
read or bump each other's counters; "global" means every database of one namespace.

An unscoped read of T depends on `g:T`; a read pinned to `COLUMN = X` on T depends on
`g:T#COLUMN:-` and `g:T#COLUMN=X` (for each column it pins).  A write bumps `g:T` and, for
every scope column, `g:T#COLUMN=X` when it is confined to X on that column, else
`g:T#COLUMN:-` — so a write confined on one scope column still reaches reads pinned on
another.  Tables are named by their bare (unqualified) name, so a
write to `s1.t` also invalidates reads of `s2.t`: over-invalidation is safe, the opposite
never is.  `{DB}` is a Redis Cluster hash tag: all keys of one lookup share a slot (except
the global epoch; see docs/operating.md).

Pure: hashing and string building only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

DEFAULT_ROOT = "pgr"  # the namespace of `Namespace.of` when none is given (pure tests)


def global_epoch(root: str) -> str:
    """The epoch counter of every database of namespace `root`."""
    return f"{root}:epoch"


GLOBAL_EPOCH = global_epoch(DEFAULT_ROOT)
KEY_VERSION = b"pgr1"

# Settings known not to change the bytes of a read's result (PITFALLS C12): left out of the
# key so that, e.g., two applications with different application_name share entries.  Any
# setting not listed here — custom `app.*` settings read by RLS policies included — is part
# of the key.
IRRELEVANT_SETTINGS = frozenset(
    {
        "application_name",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "work_mem",
        "maintenance_work_mem",
        "temp_buffers",
        "effective_cache_size",
        "random_page_cost",
        "seq_page_cost",
        "cpu_tuple_cost",
        "cpu_index_tuple_cost",
        "cpu_operator_cost",
        "jit",
        "log_statement",
        "log_min_duration_statement",
        "log_min_messages",
        "client_min_messages",
        "geqo",
        "from_collapse_limit",
        "join_collapse_limit",
        "plan_cache_mode",
        "parallel_setup_cost",
        "parallel_tuple_cost",
        "max_parallel_workers_per_gather",
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_keepalives_count",
        "synchronous_commit",
        "track_io_timing",
        # Reported by the server but not result-affecting:
        "server_version",
        "server_encoding",
        "integer_datetimes",
        "in_hot_standby",
        "default_transaction_read_only",
        "is_superuser",
    }
)


def _irrelevant(name: str) -> bool:
    return name in IRRELEVANT_SETTINGS or name.startswith("enable_")


@dataclass(frozen=True, slots=True)
class Namespace:
    """Where one database's keys live: the hash-tagged prefix for its upstream and name,
    inside the deployment's namespace `root`."""

    prefix: str  # "ROOT:{<tag>}:"
    global_epoch: str  # "ROOT:epoch"

    @classmethod
    def of(cls, upstream: str, database: str, root: str = DEFAULT_ROOT) -> Namespace:
        tag = hashlib.blake2b(f"{upstream}\x00{database}".encode(), digest_size=6).hexdigest()
        return cls(f"{root}:{{{tag}}}:", global_epoch(root))

    @property
    def epoch(self) -> str:
        return self.prefix + "epoch"

    @property
    def ddl(self) -> str:
        """Bumped (with the epoch) by DDL: a catalog read before its value is stale."""
        return self.prefix + "ddl"

    @property
    def probe(self) -> str:
        """An entry key that never holds an entry: lookups of it just read counters."""
        return self.prefix + "probe"

    def table(self, table: str) -> str:
        """gen(T, any)."""
        return f"{self.prefix}g:{bare(table)}"

    def unscoped(self, table: str, column: str) -> str:
        """gen(T, not confined on COLUMN)."""
        return f"{self.prefix}g:{bare(table)}#{column}:-"

    def scoped(self, table: str, column: str, value: str) -> str:
        """gen(T, COLUMN = VALUE)."""
        return f"{self.prefix}g:{bare(table)}#{column}={value}"

    def entry(self, digest: str) -> str:
        return f"{self.prefix}e:{digest}"

    def prepared(self, gid: str) -> str:
        """The pending invalidation set of a prepared (2PC) transaction."""
        return f"{self.prefix}2pc:{gid}"


def bare(table: str) -> str:
    """The unqualified name: `public.agents` → `agents`."""
    return table.rsplit(".", 1)[-1]


def settings_digest(settings: Mapping[str, str]) -> bytes:
    """A digest of every result-affecting setting (sorted, so order does not matter)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(settings):
        if not _irrelevant(name):
            h.update(name.encode() + b"\x00" + settings[name].encode() + b"\x00")
    return h.digest()


def read_generations(
    ns: Namespace,
    tables: Iterable[str],
    pinned: Mapping[str, Mapping[str, str]],
) -> list[str]:
    """The counters a read depends on, in a stable order (the global and database epochs
    first).  `pinned[table][column]` gives the scope values the read pins per table."""
    keys = {ns.global_epoch, ns.epoch, ns.ddl}
    for table in tables:
        values = pinned.get(bare(table))
        if values:
            for column, value in values.items():
                keys.add(ns.unscoped(table, column))
                keys.add(ns.scoped(table, column, value))
        else:
            keys.add(ns.table(table))
    return sorted(keys)


def write_generations(
    ns: Namespace,
    table: str,
    confined_to: Mapping[str, str] | None,
    scope_columns: Sequence[str],
) -> list[str]:
    """The counters a committed write to `table` bumps: `g:T`, and per scope column either
    the value it is confined to or "not confined on that column"."""
    confined = confined_to or {}
    keys = [ns.table(table)]
    for column in dict.fromkeys([*scope_columns, *confined]):
        value = confined.get(column)
        if value is None:
            keys.append(ns.unscoped(table, column))
        else:
            keys.append(ns.scoped(table, column, value))
    return keys


def entry_digest(
    settings: bytes,
    shape: bytes,
    sql: str,
    param_oids: Sequence[int] = (),
    param_formats: Sequence[int] = (),
    params: Sequence[bytes | None] = (),
    result_formats: Sequence[int] = (),
) -> str:
    """The hash naming one cached result (`Namespace.entry` makes the key)."""
    h = hashlib.blake2b(KEY_VERSION, digest_size=20)
    h.update(settings)
    h.update(shape + b"\x00")
    text = sql.encode()
    h.update(len(text).to_bytes(4, "big") + text)
    h.update(b"O" + b",".join(str(o).encode() for o in param_oids))
    h.update(b"F" + b",".join(str(f).encode() for f in param_formats))
    h.update(b"P" + len(params).to_bytes(2, "big"))
    for value in params:
        if value is None:
            h.update(b"\xff\xff\xff\xff")
        else:
            h.update(len(value).to_bytes(4, "big") + value)
    h.update(b"R" + b",".join(str(f).encode() for f in result_formats))
    return h.hexdigest()


def unit_prefix(
    settings: bytes, shape: bytes, sql: str, param_oids: Sequence[int]
) -> hashlib.blake2b:
    """The hash state of an extended-protocol read before its Bind (see `unit_digest`)."""
    h = hashlib.blake2b(KEY_VERSION + b"u", digest_size=20)
    h.update(settings)
    h.update(shape + b"\x00")
    text = sql.encode()
    h.update(len(text).to_bytes(4, "big") + text)
    h.update(b"O" + b",".join(str(o).encode() for o in param_oids) + b"\x00")
    return h


def unit_digest(prefix: hashlib.blake2b, bind_values: bytes) -> str:
    """The hash naming one extended-protocol read's result: `prefix` (statement, settings,
    requested messages) and the Bind's bytes after the two names, as sent (parameter
    formats, values, result formats: length-prefixed, so unambiguous)."""
    h = prefix.copy()
    h.update(bind_values)
    return h.hexdigest()
