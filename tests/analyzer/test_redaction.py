"""`display_sql`: what /stats may show of a statement -- its shape, never its values."""

from __future__ import annotations

import pytest

from analyzer.redaction import UNREADABLE, display_sql


@pytest.mark.parametrize(
    ("sql", "shown"),
    [
        ("select 1", "select $1"),
        (
            "select * from users where email = 'bob@example.com' and age > 42",
            "select * from users where email = $1 and age > $2",
        ),
        ("select $$dollar quoted$$, E'esc\\'d', x'ff', 1.5e3", "select $1, $2, $3, $4"),
        ("select a from t where b = $1 and c = 'x'", "select a from t where b = $1 and c = $2"),
        ("/* user='bob' */ select 1 -- carol\n", "select $1"),
        ("select 'ü€' as x -- ünïcode", "select $1 as x"),
        ("selec 'mallory@example.net', 42 /* x */", "selec $1, $2"),  # does not parse
        ("select 'unterminated", UNREADABLE),
    ],
    ids=[
        "number", "where", "constant-kinds", "after-params", "comments", "unicode",
        "unparseable", "unscannable",
    ],
)  # fmt: skip
def test_display_sql(sql: str, shown: str) -> None:
    assert display_sql(sql) == shown
