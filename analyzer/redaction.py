"""SQL for display: constants replaced by ``$n`` placeholders, comments left out.

What a statement is *like* may be shown on an observability endpoint; its values may not
(an email in a WHERE clause is personal data).  `display_sql` uses pglast's normalisation
(libpg_query's: every constant becomes ``$1``, ``$2``, ...; the numbering continues after
the highest parameter the text already has) and then drops comments, which can carry
values of their own (sqlcommenter tags, a trace id, a user name).  Text that does not
parse is masked token by token with the scanner; text the scanner cannot read either is
not shown at all.

Pure: pglast only.
"""

from __future__ import annotations

from pglast import parser

_CONSTANTS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})
UNREADABLE = "(not shown: the text cannot be scanned)"


def display_sql(sql: str) -> str:
    """`sql` without its constants and comments (see the module docstring)."""
    try:
        normalized = str(parser.normalize(sql))
    except Exception:  # not SQL pglast can parse: mask what the scanner sees
        return _masked(sql, _CONSTANTS | _COMMENTS)
    return _masked(normalized, _COMMENTS)


def _masked(sql: str, hidden: frozenset[str]) -> str:
    """`sql` with the tokens named in `hidden` replaced (constants by ``$n``, comments by
    nothing)."""
    try:
        tokens = parser.scan(sql)
    except Exception:
        return UNREADABLE
    # scan() positions are character offsets, `end` inclusive.
    out: list[str] = []
    at = 0
    number = 0
    for token in tokens:
        if token.name not in hidden:
            continue
        out.append(sql[at : token.start])
        if token.name in _CONSTANTS:
            number += 1
            out.append(f"${number}")
        at = token.end + 1
    out.append(sql[at:])
    return "".join(out).strip()
