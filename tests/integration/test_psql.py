"""psql through the proxy: each invocation runs directly and proxied, and must match exactly.

psql is run as a subprocess with the same arguments, stdin and script against Postgres and
against the pass-through proxy; exit code, stdout and stderr must be identical (invariant 1,
"Transparent"), and each test also checks what the output should contain, so a psql that
failed the same way on both sides is still caught.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ProxyProcess
from tests.integration.conftest import DIRECT, Target, proxied

TIMEOUT = 60  # a hang guard, never a performance assertion


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def psql(target: Target, *args: str, stdin: str = "") -> Run:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PG") and k not in ("PSQLRC", "LANG", "LANGUAGE")
    }
    env.update(LC_ALL="C", PSQLRC="/dev/null", PGAPPNAME="pgreactive-test-psql")
    done = subprocess.run(
        ["psql", "-X", "-d", target.dsn(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )
    # The temporary schema's number depends on the backend slot, not on the proxy.
    return Run(
        done.returncode,
        _TEMP_SCHEMA.sub("pg_temp_N", done.stdout),
        _TEMP_SCHEMA.sub("pg_temp_N", done.stderr),
    )


_TEMP_SCHEMA = re.compile(r"pg_temp_\d+")


def both(proxy: ProxyProcess, *args: str, stdin: str = "") -> Run:
    """Run psql directly and through the proxy; they must agree byte for byte."""
    direct = psql(DIRECT, *args, stdin=stdin)
    through = psql(proxied(proxy), *args, stdin=stdin)
    assert through == direct, f"proxied psql differs from direct psql\nproxy log:\n{proxy.log}"
    return direct


def test_c_with_several_statements_and_several_c(proxy: ProxyProcess) -> None:
    run = both(
        proxy,
        "-c",
        "select 1 as first; select 2 as second",
        "-c",
        "select 'three' as third",
    )
    assert run.returncode == 0
    for word in ("first", "second", "third", "three"):
        assert word in run.stdout
    assert run.stderr == ""


def test_c_error_exit_code(proxy: ProxyProcess) -> None:
    run = both(proxy, "-v", "VERBOSITY=verbose", "-c", "select * from pgr_no_such_table")
    assert run.returncode == 1
    assert 'ERROR:  42P01: relation "pgr_no_such_table" does not exist' in run.stderr


def test_c_multi_statement_error_rolls_back_the_implicit_transaction(
    proxy: ProxyProcess,
) -> None:
    # One Query: an implicit transaction, so the temp table created before the error vanishes
    # with it, and the statement after the error never runs.
    run = both(
        proxy,
        "-v",
        "VERBOSITY=verbose",
        "-c",
        "create temp table pgr_t(x int); select 1/0; select 'not reached'",
        "-c",
        "select count(*) as tables from pg_class where relname = 'pgr_t'",
    )
    assert run.returncode == 0  # without ON_ERROR_STOP psql goes on to the next -c
    assert "22012" in run.stderr
    assert "not reached" not in run.stdout
    lines = run.stdout.splitlines()
    assert lines[lines.index(" tables ") + 2].strip() == "0"


def test_empty_queries(proxy: ProxyProcess) -> None:
    run = both(proxy, "-c", ";", "-c", "  ", "-c", "select 'after' as empty_ok")
    assert run.returncode == 0
    assert "after" in run.stdout
    assert run.stderr == ""


def test_notice_appears(proxy: ProxyProcess) -> None:
    run = both(
        proxy,
        "-c",
        "DO $$ BEGIN RAISE NOTICE 'x'; RAISE WARNING 'careful %', 42; END $$",
        "-c",
        "drop table if exists pgr_never_existed",
    )
    assert run.returncode == 0
    assert "NOTICE:  x" in run.stderr
    assert "WARNING:  careful 42" in run.stderr
    assert 'NOTICE:  table "pgr_never_existed" does not exist, skipping' in run.stderr
    assert "DO" in run.stdout and "DROP TABLE" in run.stdout


SCRIPT = r"""
\set VERBOSITY verbose
create temp table pgr_s (id int primary key, v text not null);
insert into pgr_s values (1, 'one'), (2, 'two');
select * from pgr_s order by id;
insert into pgr_s values (1, 'duplicate');
;
begin;
insert into pgr_s values (3, 'three');
select 1/0;
insert into pgr_s values (4, 'four');
commit;
select count(*) as after_failed_block from pgr_s;
insert into pgr_s values (5, null);
select 'abc'::int;
DO $$ BEGIN RAISE NOTICE 'notice from script'; END $$;
selec 1;
select 42 as answer \gset
\echo answer is :answer
select 'select ' || g || ' as gexec' from generate_series(1, 3) g \gexec
\echo end of script
"""


@pytest.mark.parametrize("on_error_stop", ["0", "1"])
def test_f_script_with_errors(proxy: ProxyProcess, tmp_path: Path, on_error_stop: str) -> None:
    script = tmp_path / "errors.sql"
    script.write_text(SCRIPT)
    run = both(proxy, "-v", f"ON_ERROR_STOP={on_error_stop}", "-f", str(script))
    assert "23505" in run.stderr  # the duplicate key comes first
    if on_error_stop == "1":
        assert run.returncode == 3
        assert "end of script" not in run.stdout
        assert "22012" not in run.stderr
    else:
        assert run.returncode == 0
        for sqlstate in ("22012", "25P02", "23502", "22P02", "42601"):
            assert sqlstate in run.stderr, sqlstate
        assert "ROLLBACK" in run.stdout  # COMMIT of a failed block
        assert "notice from script" in run.stderr
        assert "answer is 42" in run.stdout
        assert run.stdout.count("gexec") == 3
        assert "end of script" in run.stdout
        lines = run.stdout.splitlines()
        count = lines[lines.index(" after_failed_block ") + 2].strip()
        assert count == "2"


def test_single_transaction_script_rolls_back_on_error(proxy: ProxyProcess, tmp_path: Path) -> None:
    script = tmp_path / "single.sql"
    script.write_text(
        "create temp table pgr_one (x int);\n"
        "insert into pgr_one values (1);\n"
        "select x / 0 from pgr_one;\n"
    )
    run = both(proxy, "-1", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-f", str(script))
    assert run.returncode == 3
    assert "22012" in run.stderr


def test_on_error_rollback_uses_savepoints(proxy: ProxyProcess, tmp_path: Path) -> None:
    script = tmp_path / "savepoints.sql"
    script.write_text(
        "\\set ON_ERROR_ROLLBACK on\n"
        "begin;\n"
        "create temp table pgr_sp (x int primary key);\n"
        "insert into pgr_sp values (1);\n"
        "insert into pgr_sp values (1);\n"
        "insert into pgr_sp values (2);\n"
        "select array_agg(x order by x) as kept from pgr_sp;\n"
        "commit;\n"
    )
    run = both(proxy, "-f", str(script))
    assert run.returncode == 0
    assert "{1,2}" in run.stdout
    assert "COMMIT" in run.stdout
    assert "duplicate key" in run.stderr


def test_copy_from_stdin_and_to_stdout(proxy: ProxyProcess, tmp_path: Path) -> None:
    rows = [f"{i}\tname {i}\t{i * 1.5}" for i in range(1, 20001)]
    script = tmp_path / "copy.sql"
    script.write_text(
        "create temp table pgr_c (id int primary key, name text, n numeric);\n"
        "\\copy pgr_c from stdin\n" + "\n".join(rows) + "\n\\.\n"
        "select count(*), sum(id), sum(n) from pgr_c;\n"
        "\\copy (select * from pgr_c order by id) to stdout\n"
        "\\copy pgr_c from stdin\n"
        "30001\tgood\t1\n"
        "30002\tbad\tnot-a-number\n"
        "\\.\n"
        "select count(*) as after_bad_copy from pgr_c;\n"
    )
    run = both(proxy, "-v", "VERBOSITY=verbose", "-f", str(script))
    assert run.returncode == 0
    assert "COPY 20000" in run.stdout
    assert "20000 | 200010000 | 300015000.0" in run.stdout
    copied = [line for line in run.stdout.splitlines() if line.count("\t") == 2]
    assert copied == rows
    assert "22P02" in run.stderr  # the bad copy failed as a whole
    lines = run.stdout.splitlines()
    assert lines[lines.index(" after_bad_copy ") + 2].strip() == "20000"


def test_copy_from_psql_stdin(proxy: ProxyProcess) -> None:
    data = "".join(f"{i},{'x' * (i % 50)}\n" for i in range(5000))
    run = both(
        proxy,
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "create temp table pgr_p (id int, s text)",
        "-c",
        "\\copy pgr_p from pstdin with (format csv)",
        "-c",
        "select count(*), sum(length(s)) from pgr_p",
        stdin=data,
    )
    assert run.returncode == 0
    expected_sum = sum(i % 50 for i in range(5000))
    assert f"5000 | {expected_sum}" in run.stdout


def test_describe_commands(proxy: ProxyProcess) -> None:
    # \d runs several catalog queries in a row, some with many rows.
    run = both(
        proxy,
        "-c",
        r"\d pg_catalog.pg_class",
        "-c",
        r"\dS pg_catalog.pg_attr*",
        "-c",
        r"\df pg_catalog.pg_sleep*",
    )
    assert run.returncode == 0
    assert "pg_class_oid_index" in run.stdout
    assert "pg_attrdef" in run.stdout
    assert "pg_sleep_for" in run.stdout
