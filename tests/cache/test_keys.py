"""cache.keys: entry digests, the settings digest, and the generation counters of reads and
writes (DESIGN.md, "Cache: keys, generations, invalidation").

Expected key names are spelled out as strings (prefix + "g:agents#organization_id:-"), not
rebuilt with the `Namespace` methods under test, so a change of naming scheme shows up here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import pytest

from cache.keys import (
    GLOBAL_EPOCH,
    Namespace,
    entry_digest,
    read_generations,
    settings_digest,
    unit_digest,
    unit_prefix,
    write_generations,
)

P = pytest.param

NS = Namespace.of("db.internal:5432", "app")


def k(name: str) -> str:
    """A key of NS: `k("g:agents")` is the counter gen(agents, any)."""
    return NS.prefix + name


# --- Namespace ------------------------------------------------------------------------


def test_namespace_prefix_is_a_hash_tag() -> None:
    assert re.fullmatch(r"pgr:\{[0-9a-f]{12}\}:", NS.prefix)
    assert NS.epoch == NS.prefix + "epoch"
    assert NS.ddl == NS.prefix + "ddl"
    assert NS.entry("abc") == NS.prefix + "e:abc"


def test_namespace_is_deterministic() -> None:
    assert Namespace.of("db.internal:5432", "app") == NS


@pytest.mark.parametrize(
    ("upstream", "database"),
    [
        P("db.internal:5433", "app", id="other-port"),
        P("replica.internal:5432", "app", id="other-host"),
        P("db.internal:5432", "app2", id="other-database"),
        P("db.internal:5432", "App", id="database-case"),
        P("db.internal:5432app", "", id="upstream-database-boundary"),
    ],
)
def test_namespace_differs_by_upstream_and_database(upstream: str, database: str) -> None:
    other = Namespace.of(upstream, database)
    assert other.prefix != NS.prefix
    assert other.table("agents") != NS.table("agents")
    assert other.epoch != NS.epoch


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        P(NS.table("agents"), "g:agents", id="table"),
        P(NS.table("public.agents"), "g:agents", id="table-qualified"),
        P(
            NS.unscoped("s1.agents", "organization_id"),
            "g:agents#organization_id:-",
            id="unscoped-qualified",
        ),
        P(NS.scoped("agents", "organization_id", "A"), "g:agents#organization_id=A", id="scoped"),
    ],
)
def test_namespace_key_names(built: str, expected: str) -> None:
    assert built == k(expected)


# --- settings_digest ------------------------------------------------------------------

BASE_SETTINGS = {"role": "app", "search_path": '"$user", public', "timezone": "UTC"}

SAME_SETTINGS = [
    P(
        {"timezone": "UTC", "search_path": '"$user", public', "role": "app"},
        id="insertion-order",
    ),
    P({**BASE_SETTINGS, "application_name": "worker-7"}, id="application_name"),
    P({**BASE_SETTINGS, "statement_timeout": "5s"}, id="statement_timeout"),
    P({**BASE_SETTINGS, "enable_seqscan": "off"}, id="enable_seqscan"),
    P({**BASE_SETTINGS, "enable_hashjoin": "off", "enable_nestloop": "off"}, id="enable-many"),
    P({**BASE_SETTINGS, "work_mem": "64MB", "jit": "off"}, id="work_mem-jit"),
    P({**BASE_SETTINGS, "lock_timeout": "1s", "client_min_messages": "debug"}, id="timeouts-logs"),
]


@pytest.mark.parametrize("settings", SAME_SETTINGS)
def test_settings_digest_ignores_order_and_irrelevant_settings(settings: dict[str, str]) -> None:
    assert settings_digest(settings) == settings_digest(BASE_SETTINGS)


def test_settings_digest_of_only_irrelevant_settings_is_the_empty_digest() -> None:
    irrelevant = {"application_name": "x", "statement_timeout": "1", "enable_seqscan": "off"}
    assert settings_digest(irrelevant) == settings_digest({})


DIFFERENT_SETTINGS = [
    P({**BASE_SETTINGS, "role": "admin"}, id="role-changed"),
    P({k_: v for k_, v in BASE_SETTINGS.items() if k_ != "role"}, id="role-absent"),
    P({**BASE_SETTINGS, "search_path": "tenant_a, public"}, id="search_path"),
    P({**BASE_SETTINGS, "timezone": "Europe/Paris"}, id="timezone"),
    P({**BASE_SETTINGS, "TimeZone": "Europe/Paris"}, id="TimeZone-spelling"),
    P({**BASE_SETTINGS, "app.tenant": "acme"}, id="app.tenant-set"),
    P({**BASE_SETTINGS, "app.tenant": ""}, id="app.tenant-empty"),
    P({**BASE_SETTINGS, "session_authorization": "alice"}, id="session_authorization"),
    P({**BASE_SETTINGS, "datestyle": "SQL, DMY"}, id="datestyle"),
    P({**BASE_SETTINGS, "extra_float_digits": "0"}, id="extra_float_digits"),
    P({**BASE_SETTINGS, "bytea_output": "escape"}, id="bytea_output"),
    P({**BASE_SETTINGS, "row_security": "off"}, id="row_security"),
]


@pytest.mark.parametrize("settings", DIFFERENT_SETTINGS)
def test_settings_digest_changes_with_result_affecting_settings(
    settings: dict[str, str],
) -> None:
    assert settings_digest(settings) != settings_digest(BASE_SETTINGS)


def test_settings_digest_app_tenant_values_differ() -> None:
    a = settings_digest({**BASE_SETTINGS, "app.tenant": "acme"})
    b = settings_digest({**BASE_SETTINGS, "app.tenant": "globex"})
    assert a != b


def test_settings_digest_name_value_boundary() -> None:
    assert settings_digest({"app.ab": "c"}) != settings_digest({"app.a": "bc"})
    assert settings_digest({"app.a": "b", "app.c": ""}) != settings_digest({"app.a": "b\x00app.c"})


# --- entry_digest ---------------------------------------------------------------------

SETTINGS = settings_digest(BASE_SETTINGS)


@dataclasses.dataclass(frozen=True)
class Request:
    """Everything `entry_digest` hashes, with a typical extended-protocol request."""

    settings: bytes = SETTINGS
    shape: bytes = b"ET"
    sql: str = "SELECT id, name FROM agents WHERE organization_id = $1 AND id > 10"
    param_oids: tuple[int, ...] = (25,)
    param_formats: tuple[int, ...] = (0,)
    params: tuple[bytes | None, ...] = (b"org-1",)
    result_formats: tuple[int, ...] = (1,)

    def digest(self) -> str:
        return entry_digest(
            self.settings,
            self.shape,
            self.sql,
            self.param_oids,
            self.param_formats,
            self.params,
            self.result_formats,
        )


BASE = Request()
r = dataclasses.replace

DIFFERENT_REQUESTS = [
    P(BASE, r(BASE, settings=settings_digest({"role": "admin"})), id="settings"),
    P(BASE, r(BASE, shape=b"E"), id="shape-ET-vs-E"),
    P(r(BASE, shape=b"Q"), r(BASE, shape=b"E"), id="shape-Q-vs-E"),
    P(BASE, r(BASE, sql=BASE.sql + " "), id="sql-trailing-space"),
    P(BASE, r(BASE, sql=BASE.sql.replace("FROM ", "FROM  ")), id="sql-double-space"),
    P(BASE, r(BASE, sql=BASE.sql.replace("SELECT", "select")), id="sql-keyword-case"),
    P(BASE, r(BASE, sql=BASE.sql.replace("id > 10", "id > 11")), id="sql-constant"),
    P(BASE, r(BASE, sql=BASE.sql.replace("name", "name AS n")), id="sql-alias"),
    P(BASE, r(BASE, param_oids=(1043,)), id="param-oid"),
    P(BASE, r(BASE, param_oids=()), id="param-oid-unspecified"),
    P(r(BASE, param_oids=(1, 23)), r(BASE, param_oids=(12, 3)), id="param-oid-boundary"),
    P(BASE, r(BASE, param_formats=(1,)), id="param-format"),
    P(BASE, r(BASE, params=(b"org-2",)), id="param-bytes"),
    P(r(BASE, params=(None,)), r(BASE, params=(b"",)), id="param-null-vs-empty"),
    P(r(BASE, params=(b"",)), r(BASE, params=()), id="param-empty-vs-absent"),
    P(r(BASE, params=(None,)), r(BASE, params=()), id="param-null-vs-absent"),
    P(r(BASE, params=(b"ab", b"c")), r(BASE, params=(b"a", b"bc")), id="param-boundary"),
    P(r(BASE, params=(b"a", None)), r(BASE, params=(None, b"a")), id="param-null-position"),
    P(BASE, r(BASE, result_formats=(0,)), id="result-format"),
    P(BASE, r(BASE, result_formats=()), id="result-format-default"),
    P(r(BASE, result_formats=(1, 0)), r(BASE, result_formats=(0, 1)), id="result-format-order"),
]


@pytest.mark.parametrize(("a", "b"), DIFFERENT_REQUESTS)
def test_entry_digest_changes_with_each_component(a: Request, b: Request) -> None:
    assert a.digest() != b.digest()


SAME_REQUESTS = [
    P(BASE, Request(), id="identical"),
    P(
        BASE,
        r(BASE, sql=" ".join(BASE.sql.split(" "))),
        id="equal-text-built-apart",
    ),
    P(r(BASE, params=(None, b"")), r(BASE, params=(None, b"")), id="null-and-empty-params"),
]


@pytest.mark.parametrize(("a", "b"), SAME_REQUESTS)
def test_entry_digest_equal_for_equal_requests(a: Request, b: Request) -> None:
    assert a.digest() == b.digest()


def test_entry_digest_defaults_are_empty_sequences() -> None:
    explicit = entry_digest(SETTINGS, b"Q", "SELECT 1", (), (), (), ())
    assert entry_digest(SETTINGS, b"Q", "SELECT 1") == explicit
    assert re.fullmatch(r"[0-9a-f]{40}", explicit)


def test_entry_digest_accepts_lists() -> None:
    assert entry_digest(SETTINGS, b"E", "SELECT $1", [25], [0], [b"x"], [0]) == entry_digest(
        SETTINGS, b"E", "SELECT $1", (25,), (0,), (b"x",), (0,)
    )


# --- read_generations / write_generations ---------------------------------------------

EPOCHS = [GLOBAL_EPOCH, k("ddl"), k("epoch")]
ORG = ("organization_id",)
ORG_TENANT = ("organization_id", "tenant_id")

READS = [
    P(["agents"], {}, [*EPOCHS, k("g:agents")], id="unscoped"),
    P(["public.agents"], {}, [*EPOCHS, k("g:agents")], id="unscoped-qualified"),
    P(
        ["agents"],
        {"agents": {"organization_id": "A"}},
        [*EPOCHS, k("g:agents#organization_id:-"), k("g:agents#organization_id=A")],
        id="pinned",
    ),
    P(
        ["public.agents"],
        {"agents": {"organization_id": "A"}},
        [*EPOCHS, k("g:agents#organization_id:-"), k("g:agents#organization_id=A")],
        id="pinned-qualified-table",
    ),
    P(["agents"], {"agents": {}}, [*EPOCHS, k("g:agents")], id="empty-pin-is-unscoped"),
    P(
        ["agents"],
        {"messages": {"organization_id": "A"}},
        [*EPOCHS, k("g:agents")],
        id="pin-elsewhere",
    ),
    P(
        ["messages", "agents"],
        {"agents": {"organization_id": "A"}},
        [
            *EPOCHS,
            k("g:agents#organization_id:-"),
            k("g:agents#organization_id=A"),
            k("g:messages"),
        ],
        id="pinned-and-unscoped",
    ),
    P(
        ["agents"],
        {"agents": {"organization_id": "A", "tenant_id": "T"}},
        [
            *EPOCHS,
            k("g:agents#organization_id:-"),
            k("g:agents#organization_id=A"),
            k("g:agents#tenant_id:-"),
            k("g:agents#tenant_id=T"),
        ],
        id="two-scope-columns",
    ),
    P([], {}, EPOCHS, id="no-tables"),
    P(["agents", "public.agents", "s2.agents"], {}, [*EPOCHS, k("g:agents")], id="dedup-bare"),
]


@pytest.mark.parametrize(("tables", "pinned", "expected"), READS)
def test_read_generations(
    tables: list[str], pinned: Mapping[str, Mapping[str, str]], expected: list[str]
) -> None:
    got = read_generations(NS, tables, pinned)
    assert got == expected
    assert got == sorted(got)
    assert got[0] == GLOBAL_EPOCH


def test_read_generations_order_is_stable() -> None:
    pinned = {"agents": {"organization_id": "A"}}
    one = read_generations(NS, ["agents", "messages", "tags"], pinned)
    two = read_generations(NS, ["tags", "messages", "agents"], pinned)
    assert one == two
    assert len(one) == len(set(one))


def test_read_generations_bare_and_qualified_names_agree() -> None:
    pinned = {"t": {"organization_id": "A"}}
    assert read_generations(NS, ["public.t"], {}) == read_generations(NS, ["t"], {})
    assert read_generations(NS, ["public.t"], pinned) == read_generations(NS, ["t"], pinned)
    assert read_generations(NS, ["s1.t"], pinned) == read_generations(NS, ["s2.t"], pinned)


WRITES = [
    P("agents", None, ORG, [k("g:agents"), k("g:agents#organization_id:-")], id="unconfined"),
    P("agents", {}, ORG, [k("g:agents"), k("g:agents#organization_id:-")], id="empty-confinement"),
    P(
        "public.agents",
        None,
        ORG,
        [k("g:agents"), k("g:agents#organization_id:-")],
        id="unconfined-qualified",
    ),
    P(
        "agents",
        {"organization_id": "A"},
        ORG,
        [k("g:agents"), k("g:agents#organization_id=A")],
        id="confined",
    ),
    P(
        "s1.agents",
        {"organization_id": "A"},
        ORG,
        [k("g:agents"), k("g:agents#organization_id=A")],
        id="confined-qualified",
    ),
    P(
        "agents",
        None,
        ORG_TENANT,
        [k("g:agents"), k("g:agents#organization_id:-"), k("g:agents#tenant_id:-")],
        id="two-columns-unconfined",
    ),
    P(
        "agents",
        {"tenant_id": "T"},
        ORG_TENANT,
        [k("g:agents"), k("g:agents#organization_id:-"), k("g:agents#tenant_id=T")],
        id="two-columns-confined-on-one",
    ),
    P(
        "agents",
        {"organization_id": "A", "tenant_id": "T"},
        ORG_TENANT,
        [k("g:agents"), k("g:agents#organization_id=A"), k("g:agents#tenant_id=T")],
        id="two-columns-confined-on-both",
    ),
    P("agents", None, (), [k("g:agents")], id="no-scope-columns"),
]


@pytest.mark.parametrize(("table", "confined", "scope_columns", "expected"), WRITES)
def test_write_generations(
    table: str,
    confined: Mapping[str, str] | None,
    scope_columns: tuple[str, ...],
    expected: list[str],
) -> None:
    got = write_generations(NS, table, confined, scope_columns)
    assert sorted(got) == sorted(expected)
    assert len(got) == len(set(got))


# --- the scope-correctness matrix (DESIGN.md, "Scoped invalidation") -------------------

READ_KINDS: dict[str, tuple[str, dict[str, dict[str, str]]]] = {
    "unscoped": ("agents", {}),
    "pinned-A": ("agents", {"agents": {"organization_id": "A"}}),
    "pinned-B": ("public.agents", {"agents": {"organization_id": "B"}}),
    "other-table": ("messages", {}),
}
WRITE_KINDS: dict[str, tuple[str, dict[str, str] | None]] = {
    "confined-A": ("agents", {"organization_id": "A"}),
    "confined-B": ("s2.agents", {"organization_id": "B"}),
    "unscoped": ("agents", None),
}
# Can this write change what this read returns?  Written out from the design, not derived.
CAN_CHANGE = {
    ("unscoped", "confined-A"): True,
    ("unscoped", "confined-B"): True,
    ("unscoped", "unscoped"): True,
    ("pinned-A", "confined-A"): True,
    ("pinned-A", "confined-B"): False,
    ("pinned-A", "unscoped"): True,
    ("pinned-B", "confined-A"): False,
    ("pinned-B", "confined-B"): True,
    ("pinned-B", "unscoped"): True,
    ("other-table", "confined-A"): False,
    ("other-table", "confined-B"): False,
    ("other-table", "unscoped"): False,
}


@pytest.mark.parametrize(
    ("read_kind", "write_kind", "can_change"),
    [P(rk, wk, v, id=f"read={rk}/write={wk}") for (rk, wk), v in CAN_CHANGE.items()],
)
def test_scope_matrix(read_kind: str, write_kind: str, can_change: bool) -> None:
    read_table, pinned = READ_KINDS[read_kind]
    write_table, confined = WRITE_KINDS[write_kind]
    depends_on = set(read_generations(NS, [read_table], pinned))
    bumps = set(write_generations(NS, write_table, confined, ORG))
    assert bool(depends_on & bumps) is can_change


def test_scope_matrix_is_complete() -> None:
    assert set(CAN_CHANGE) == {(r_, w) for r_ in READ_KINDS for w in WRITE_KINDS}


# Two scope columns.  A read pinned on some columns and a write confined on some columns
# touch common rows unless a column pinned by both has different values.  Sound: whenever
# they may, the write reaches the read.  Useful: a write confined to another value on every
# column the read pins leaves the read alone.
PINS: dict[str, dict[str, str]] = {
    "none": {},
    "org=A": {"organization_id": "A"},
    "org=B": {"organization_id": "B"},
    "tenant=T": {"tenant_id": "T"},
    "org=A,tenant=T": {"organization_id": "A", "tenant_id": "T"},
    "org=B,tenant=U": {"organization_id": "B", "tenant_id": "U"},
}


@pytest.mark.parametrize("write_pins", [P(v, id=f"write:{n}") for n, v in PINS.items()])
@pytest.mark.parametrize("read_pins", [P(v, id=f"read:{n}") for n, v in PINS.items()])
def test_two_scope_columns_property(read_pins: dict[str, str], write_pins: dict[str, str]) -> None:
    depends_on = set(read_generations(NS, ["agents"], {"agents": read_pins}))
    bumps = set(write_generations(NS, "agents", write_pins or None, ORG_TENANT))
    rows_may_overlap = all(write_pins[c] == v for c, v in read_pins.items() if c in write_pins)
    excluded_everywhere = bool(read_pins) and all(
        c in write_pins and write_pins[c] != v for c, v in read_pins.items()
    )
    if rows_may_overlap:
        assert depends_on & bumps
    if excluded_everywhere:
        assert not depends_on & bumps


@pytest.mark.parametrize(
    ("read_pins", "write_pins", "invalidated"),
    [
        P("org=A", "tenant=T", True, id="pinned-org/confined-tenant"),
        P("tenant=T", "org=A", True, id="pinned-tenant/confined-org"),
        P("org=A", "org=B", False, id="pinned-A/confined-B"),
        P("org=A", "org=B,tenant=U", False, id="pinned-A/confined-B-and-tenant"),
        P("org=A,tenant=T", "org=B,tenant=U", False, id="pinned-both/confined-both-other"),
        P("org=A,tenant=T", "org=A", True, id="pinned-both/confined-org-same"),
    ],
)
def test_two_scope_columns_examples(read_pins: str, write_pins: str, invalidated: bool) -> None:
    depends_on = set(read_generations(NS, ["agents"], {"agents": PINS[read_pins]}))
    bumps = set(write_generations(NS, "agents", PINS[write_pins] or None, ORG_TENANT))
    assert bool(depends_on & bumps) is invalidated


def test_writes_never_bump_epochs() -> None:
    for table, confined in WRITE_KINDS.values():
        bumps = set(write_generations(NS, table, confined, ORG_TENANT))
        assert not bumps & {GLOBAL_EPOCH, NS.epoch, NS.ddl}


def test_other_database_is_untouched() -> None:
    other = Namespace.of("db.internal:5432", "billing")
    reads = set(read_generations(NS, ["agents"], {}))
    bumps = set(write_generations(other, "agents", None, ORG))
    assert not reads & bumps


def _bind_values(*params: bytes | None, formats: tuple[int, ...] = ()) -> bytes:
    """The part of a Bind payload after its two names, encoded as a client would."""
    out = len(formats).to_bytes(2, "big") + b"".join(f.to_bytes(2, "big") for f in formats)
    out += len(params).to_bytes(2, "big")
    for value in params:
        out += b"\xff\xff\xff\xff" if value is None else len(value).to_bytes(4, "big") + value
    return out + b"\x00\x00"


def test_unit_digest_names_exactly_the_bound_values() -> None:
    prefix = unit_prefix(b"settings", b"E", "SELECT $1, $2", (25, 25))
    digest = unit_digest(prefix, _bind_values(b"ab", b"c"))
    assert unit_digest(prefix, _bind_values(b"ab", b"c")) == digest  # the prefix is not used up
    different = {
        unit_digest(prefix, _bind_values(b"a", b"bc")),  # the same bytes, split elsewhere
        unit_digest(prefix, _bind_values(b"ab", None)),
        unit_digest(prefix, _bind_values(b"ab", b"")),
        unit_digest(prefix, _bind_values(b"ab", b"c", formats=(1,))),
        unit_digest(unit_prefix(b"settings2", b"E", "SELECT $1, $2", (25, 25)),
                    _bind_values(b"ab", b"c")),
        unit_digest(unit_prefix(b"settings", b"ET", "SELECT $1, $2", (25, 25)),
                    _bind_values(b"ab", b"c")),
        unit_digest(unit_prefix(b"settings", b"E", "SELECT $1, $2", (25, 23)),
                    _bind_values(b"ab", b"c")),
        unit_digest(unit_prefix(b"settings", b"E", "SELECT $1,  $2", (25, 25)),
                    _bind_values(b"ab", b"c")),
    }
    assert digest not in different and len(different) == 8
    # Never the digest of the simple-protocol form of any text.
    assert digest != entry_digest(b"settings", b"E", "SELECT $1, $2", (25, 25))
