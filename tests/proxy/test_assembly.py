"""`proxy.assembly.read_unit`: which extended-protocol segments are one cacheable read.

Table-driven, with real wire bytes (tests/integration/wire.py builds them), against a small
`Statements` of the client's view: `s1` exists, `dup` is taken, nothing else.
"""

from __future__ import annotations

import pytest

from proxy.assembly import read_unit
from tests.integration import wire

SQL = "SELECT v FROM t WHERE id = $1"


class _Statements:
    def known(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        return (SQL, (23,)) if name == "s1" else None

    def taken(self, name: str) -> bool:
        return name in ("s1", "dup")


def _segment(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        length = int.from_bytes(data[1:5], "big")
        out.append((data[0], data[: 1 + length]))
        data = data[1 + length :]
    return out


P = wire.parse("", SQL, (23,))
B = wire.bind("", "", [b"1"])
B1 = wire.bind("", "s1", [b"1"])
D = wire.describe("P", "")
E = wire.execute()

CASES = [
    # id, messages before the Sync/Flush, final, (statement, sql, describe, rows) or None
    ("parse-bind-execute", P + B + E, True, ("", SQL, False, 0)),
    ("parse-bind-describe-execute", P + B + D + E, True, ("", SQL, True, 0)),
    ("bind-execute-of-a-known-statement", B1 + E, True, ("s1", SQL, False, 0)),
    ("bind-describe-execute-known", B1 + D + E, True, ("s1", SQL, True, 0)),
    ("row-limit-before-sync", P + B + wire.execute("", 5), True, ("", SQL, False, 5)),
    ("negative-row-limit-is-no-limit", P + B + wire.execute("", -1), True, ("", SQL, False, 0)),
    ("flush-ended", P + B + D + E, False, ("", SQL, True, 0)),
    ("row-limit-before-flush", P + B + wire.execute("", 5), False, None),
    ("bind-of-an-unknown-statement", wire.bind("", "nope") + E, True, None),
    ("parse-of-a-taken-name", wire.parse("dup", SQL) + wire.bind("", "dup") + E, True, None),
    ("parse-of-another-statement", wire.parse("a", SQL) + wire.bind("", "b") + E, True, None),
    ("execute-of-another-portal", P + wire.bind("p1", "") + E, True, None),
    ("describe-of-another-portal", P + B + wire.describe("P", "p2") + E, True, None),
    ("describe-of-a-statement", P + B + wire.describe("S", "") + E, True, None),
    ("two-units", P + B + E + B + E, True, None),
    ("no-execute", P + B, True, None),
    ("execute-alone", E, True, None),
]


@pytest.mark.parametrize(("messages", "final", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_read_unit(
    messages: bytes, final: bool, expected: tuple[str, str, bool, int] | None
) -> None:
    unit = read_unit(_segment(messages), final, _Statements())
    if expected is None:
        assert unit is None
        return
    assert unit is not None
    assert (unit.statement, unit.sql, unit.describe, unit.max_rows) == expected
    assert unit.final is final
    assert (unit.parse is None) == (messages[:1] != b"P")
    if unit.parse is not None:
        assert unit.parse_raw == _segment(messages)[0][1]
