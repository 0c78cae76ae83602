"""Memoisation: repeated texts and inlined-literal "shapes" give exactly the full analysis."""

from __future__ import annotations

import pytest

from analyzer import analyze, clear_memo
from analyzer.engine import _analyze_full
from analyzer.memo import LRU, decode, regions
from analyzer.model import DEFAULT_OPTIONS, fingerprint_of

P = pytest.param

# (first text, second text of the same normalised shape)
SHAPE_PAIRS = [
    P("SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 2", id="int"),
    P("SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 007", id="leading-zeros"),
    P("SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 99999999999", id="bigint"),
    P("SELECT * FROM t WHERE id = -1", "SELECT * FROM t WHERE id = -2.5e3", id="negative"),
    P("SELECT * FROM t WHERE s = 'a'", "SELECT * FROM t WHERE s = 'it''s'", id="string-quote"),
    P("SELECT * FROM t WHERE s = 'a'", "SELECT * FROM t WHERE s = E'x\\'y'", id="e-string"),
    P("SELECT * FROM t WHERE s = 'a'", "SELECT * FROM t WHERE s = $$b$$", id="dollar-string"),
    P("SELECT * FROM t WHERE s = 'a'", "SELECT * FROM t WHERE s = 'now'", id="becomes-now"),
    P("SELECT * FROM t WHERE s = 'a'", "SELECT * FROM t WHERE s = NULL", id="becomes-null"),
    P("SELECT * FROM t WHERE s = NULL", "SELECT * FROM t WHERE s = 'a'", id="was-null"),
    P("SELECT * FROM t WHERE b = true", "SELECT * FROM t WHERE b = FALSE", id="boolean"),
    P("SELECT * FROM t WHERE s = 'a'", "SELECT * FROM t WHERE s = 'x /* y */'", id="comment-lit"),
    P(
        "SELECT * FROM t WHERE organization_id = 'o1' AND s = 'a'",
        "SELECT * FROM t WHERE organization_id = ' AND s = ' AND s = 'b'",
        id="tricky-alignment",
    ),
    P(
        "INSERT INTO t (organization_id, n) VALUES ('o', 1), ('o', 2)",
        "INSERT INTO t (organization_id, n) VALUES ('o', 1), ('p', 2)",
        id="insert-rows-diverge",
    ),
    P(
        "UPDATE t SET n = 1 WHERE organization_id = 'o'",
        "UPDATE t SET n = 2 WHERE organization_id = 'p'",
        id="update",
    ),
    P(
        "DELETE FROM t WHERE organization_id = 5 AND id = 3",
        "DELETE FROM t WHERE organization_id = 6 AND id = 4",
        id="delete",
    ),
    P(
        "SELECT * FROM t WHERE id = 1 /* query='a' */",
        "SELECT * FROM t WHERE id = 2 /* query='a' */",
        id="with-comment",
    ),
    P("SELECT * FROM t WHERE id = $1 AND x = 1", "SELECT * FROM t WHERE id = $1 AND x = 2", id="p"),
    P("SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 0x1F", id="hex-integer"),
    P("SELECT nextval('a')", "SELECT nextval('b')", id="sequence-name-matters"),
    P("SELECT set_config('a', 'b', false)", "SELECT set_config('c', 'd', true)", id="set-config"),
    P("SELECT * FROM t WHERE d > '2024-01-01'", "SELECT * FROM t WHERE d > 'today'", id="today"),
    P(
        "SELECT * FROM t LIMIT 10",
        "SELECT * FROM t LIMIT 20",
        id="limit",
    ),
]


@pytest.mark.parametrize(("first", "second"), SHAPE_PAIRS)
def test_shape_reuse_equals_full_analysis(first: str, second: str) -> None:
    clear_memo()
    analyze(first)
    reused = analyze(second)
    full = _analyze_full(second, DEFAULT_OPTIONS, None)
    assert reused == full
    assert reused.sql == second


def test_repeated_text_is_memoised() -> None:
    clear_memo()
    assert analyze("SELECT * FROM t") is analyze("SELECT * FROM t")


def test_lru_is_bounded() -> None:
    lru: LRU[int, int] = LRU(3)
    for i in range(5):
        lru.put(i, i)
    assert len(lru) == 3
    assert lru.get(0) is None
    lru.get(2)
    lru.put(5, 5)
    assert lru.get(2) == 2
    assert lru.get(3) is None


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        P("'a''b'", {"sval": {"sval": "a'b"}}, id="string"),
        P("42", {"ival": {"ival": 42}}, id="int"),
        P("3000000000", {"fval": {"fval": "3000000000"}}, id="beyond-int4"),
        P("1.5", {"fval": {"fval": "1.5"}}, id="float"),
        P("TRUE", {"boolval": {"boolval": True}}, id="bool"),
        P("null", {"isnull": True}, id="null"),
        P("E'x'", None, id="e-string-not-simple"),
        P("'a' 'b'", None, id="two-tokens"),
    ],
)
def test_decode(text: str, fields: dict[str, object] | None) -> None:
    assert decode(text) == fields


def test_regions_rejects_misalignment() -> None:
    assert regions("SELECT 1", "SELECT $1") == [(7, "1")]
    assert regions("SELECT 1 FROM t", "SELECT $1 FROM u") is None


def test_texts_of_one_shape_share_a_fingerprint_without_another_parse() -> None:
    first = analyze("SELECT * FROM fp_shape WHERE id = 1 AND org = 'a' /* n */")
    assert first.fingerprint is not None
    misses = fingerprint_of.cache_info().misses
    derived = [
        analyze(f"SELECT * FROM fp_shape WHERE id = {n} AND org = 'o{n}' /* n */")
        for n in range(2, 12)
    ]
    assert {d.fingerprint for d in derived} == {first.fingerprint}
    assert fingerprint_of.cache_info().misses == misses  # no text was parsed for it
    assert all(d.fingerprint == fingerprint_of(d.sql) for d in derived)  # what pglast says
    other = analyze("SELECT * FROM fp_shape WHERE id > 1 AND org = 'a' /* n */")
    assert other.fingerprint != first.fingerprint  # a different shape
