"""Regenerate analyzer/builtin_volatility.py from a live Postgres's pg_proc.

Not a test: run by hand when the supported Postgres version changes::

    .venv/bin/python tests/analyzer/regen_volatility.py "host=127.0.0.1 user=postgres"

A name's volatility is the *least safe* of its callable overloads in pg_catalog
(any 'v' -> volatile, else any 's' -> stable, else immutable). Overloads that SQL
cannot call (arguments or result of pseudo-type internal, trigger handlers, ...)
are skipped.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

QUERY = """
SELECT p.proname,
       CASE WHEN bool_or(p.provolatile = 'v') THEN 'v'
            WHEN bool_or(p.provolatile = 's') THEN 's' ELSE 'i' END
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'pg_catalog'
  AND p.prorettype NOT IN ('internal'::regtype, 'trigger'::regtype, 'event_trigger'::regtype,
                           'language_handler'::regtype, 'fdw_handler'::regtype,
                           'index_am_handler'::regtype, 'table_am_handler'::regtype,
                           'tsm_handler'::regtype)
  AND NOT ('internal'::regtype = ANY (p.proargtypes::oid[]))
GROUP BY p.proname ORDER BY p.proname
"""

TARGET = Path(__file__).resolve().parents[2] / "analyzer" / "builtin_volatility.py"


def main(dsn: str) -> None:
    out = subprocess.run(
        ["psql", dsn, "-AtF", "\t", "-c", QUERY], check=True, capture_output=True, text=True
    ).stdout
    version_sql = "SELECT split_part(current_setting('server_version'), ' ', 1)"
    version = subprocess.run(
        ["psql", dsn, "-Atc", version_sql], check=True, capture_output=True, text=True
    ).stdout.strip()
    groups: dict[str, list[str]] = {"i": [], "s": [], "v": []}
    for line in out.splitlines():
        name, vol = line.split("\t")
        groups[vol].append(name)
    parts = [
        '"""Volatility of Postgres built-in functions (GENERATED, do not edit).\n\n'
        f"Generated from pg_proc of PostgreSQL {version}\nby tests/analyzer/regen_volatility.py.\n"
        "A name maps to the least safe volatility of its callable overloads in pg_catalog.\n"
        "Names absent here are unknown, and an unknown function is never cacheable.\n"
        '"""\n\nfrom __future__ import annotations\n',
    ]
    for letter, var in (("i", "IMMUTABLE"), ("s", "STABLE"), ("v", "VOLATILE")):
        body = textwrap.fill(" ".join(groups[letter]), width=96)
        parts.append(f'\n_{var} = """\n{body}\n"""\n')
    parts.append(
        "\nBUILTIN_VOLATILITY: dict[str, str] = {\n"
        '    **dict.fromkeys(_IMMUTABLE.split(), "i"),\n'
        '    **dict.fromkeys(_STABLE.split(), "s"),\n'
        '    **dict.fromkeys(_VOLATILE.split(), "v"),\n'
        "}\n"
    )
    TARGET.write_text("".join(parts))
    print(f"wrote {TARGET}: " + ", ".join(f"{k}={len(v)}" for k, v in groups.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "host=127.0.0.1 user=postgres dbname=postgres")
