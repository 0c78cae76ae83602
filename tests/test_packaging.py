"""The service packaging: Dockerfile, .dockerignore, docker-compose.yml and deploy/.

No Docker engine is needed (test machines have none): the files are parsed and cross-checked
against each other and against the code they run — the ports of deploy/pgreactive.yaml, the
image's EXPOSE and HEALTHCHECK, the compose port mappings and the Prometheus target must name
the same ports; the image must install the project with the same venv and pip commands as the
Makefile (which CI runs); the compose config must load with `proxy.config.load`; the seed SQL
must run on the real local Postgres; the image's health probe must pass against a running
pgreactive. `docker-compose config` and `promtool check config` validate the files with the
real tools where those are installed (Debian packages `docker-compose` and `prometheus`).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from proxy.config import Address, Config, load
from tests.conftest import PG_HOST, PG_PORT, PG_USER, dsn, start_caching_proxy, start_proxy
from tests.integration.cache_env import (
    admin,
    cached,
    connect,
    fetch,
    foreign_bump_retry,
    forget,
    read,
)

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY_CONFIG = ROOT / "deploy" / "pgreactive.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
SEED = ROOT / "deploy" / "initdb" / "01-schema.sql"

TENANT_TABLES = ("agents", "messages", "memories")
SEED_TABLES = ("organizations", *TENANT_TABLES)


# --- a small Dockerfile reader ------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and the rest of its line."""

    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT/CMD, else None (shell form)."""
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    """One FROM ... [AS name] and the instructions after it."""

    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.image}: no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of a Dockerfile: comments dropped, backslash continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(instruction)
    return stages


def dockerfile() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


# --- the venv and pip commands of the Makefile and the Dockerfile --------------------------------

Command = tuple[str, ...]


def makefile_recipe(text: str, target: str) -> list[str]:
    """The recipe lines (tab-indented) of `target` in a Makefile."""
    recipe: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("\t"):
            if inside:
                recipe.append(line.strip())
            continue
        inside = line.split(":", 1)[0].strip() == target and ":" in line
    return recipe


def install_commands(shell_commands: list[str]) -> list[Command]:
    """The `-m venv` and `-m pip` commands among shell command lines (split at `&&`), with the
    interpreter that creates the venv written `{python}` and the venv's directory `{venv}`,
    so the Makefile's `$(PYTHON)`/`$(VENV)` and the Dockerfile's paths compare equal."""
    found: list[Command] = []
    python = venv = None
    for line in shell_commands:
        for part in line.split("&&"):
            tokens = shlex.split(part)
            module = _module(tokens)
            if module not in ("venv", "pip"):
                continue
            if module == "venv":
                python, venv = tokens[0], tokens[-1]
            found.append(tuple(_placeholder(t, python, venv) for t in tokens))
    return found


def _module(tokens: list[str]) -> str | None:
    if "-m" in tokens and tokens.index("-m") + 1 < len(tokens):
        return tokens[tokens.index("-m") + 1]
    return None


def _placeholder(token: str, python: str | None, venv: str | None) -> str:
    if venv is not None and (token == venv or token.startswith(venv + "/")):
        return "{venv}" + token[len(venv) :]
    return "{python}" if token == python else token


def as_in_the_image(make_commands: list[Command]) -> list[Command]:
    """The Makefile's commands with the one difference the Dockerfile documents applied:
    a regular install instead of an editable one (`-e`)."""
    return [tuple(t for t in command if t != "-e") for command in make_commands]


def builder_commands(stages: list[Stage]) -> list[Command]:
    runs = [i.args for stage in stages[:-1] for i in stage.all("RUN")]
    return install_commands(runs)


def makefile_commands(target: str = "$(VENV)/.installed") -> list[Command]:
    return install_commands(makefile_recipe((ROOT / "Makefile").read_text(), target))


def test_makefile_install_commands_are_found() -> None:
    """Premise of the comparison below: the Makefile target still creates a venv and installs
    the project into it (else an empty list on both sides would compare equal)."""
    commands = makefile_commands()
    assert commands[0][:3] == ("{python}", "-m", "venv"), commands
    assert any(c[-4:] == ("-c", "constraints.txt", "-e", ".") for c in commands), commands


def _prerequisites(target: str) -> list[str]:
    for line in (ROOT / "Makefile").read_text().splitlines():
        name, colon, rest = line.partition(":")
        if colon and not line.startswith("\t") and name.strip() == target:
            return rest.split()
    raise AssertionError(f"no Makefile target {target}")


def test_make_run_installs_the_runtime_only_and_make_test_adds_the_test_tools() -> None:
    """`make run` stays small (issue 13: it installed the test tools too); both pin the
    runtime with the same constraints file."""
    assert _prerequisites("run") == ["install"]
    assert _prerequisites("install") == ["$(VENV)/.installed"]
    assert not any("[test]" in " ".join(c) for c in makefile_commands())
    assert _prerequisites("test") == ["install-test"]
    assert _prerequisites("install-test") == ["$(VENV)/.installed-test"]
    assert _prerequisites("$(VENV)/.installed-test") == ["$(VENV)/.installed"]
    assert makefile_commands("$(VENV)/.installed-test") == [
        ("$(VENV)/bin/python", "-m", "pip", "install", "--quiet", "-c", "constraints.txt", "-e",
         ".[test]"),
    ]  # fmt: skip


def _requirement_name(text: str) -> str:
    name = re.split(r"[\[<>=!~; ]", text.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_pin_every_runtime_dependency_and_nothing_else() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    assert "hiredis" in runtime  # imported by cache/store.py: a direct dependency
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line}"
            pins[_requirement_name(name)] = version
    assert set(pins) == runtime


def test_dockerfile_installs_like_the_makefile() -> None:
    """The image runs CI's install commands, but for the two documented differences."""
    assert builder_commands(dockerfile()) == as_in_the_image(makefile_commands())


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("-c constraints.txt .", "-c constraints.txt --no-deps ."),
        ("install --quiet --upgrade pip", "install --quiet pip"),
        ("RUN /opt/pgreactive/bin/python -m pip install --quiet --upgrade pip\n", ""),
        ("RUN python -m venv /opt/pgreactive", "RUN python -m venv --copies /opt/pgreactive"),
        ("-c constraints.txt .", "-c constraints.txt '.[test]'"),
        ("--quiet -c constraints.txt .", "--quiet ."),
    ],
    ids=[
        "extra-flag",
        "no-upgrade",
        "missing-command",
        "venv-option",
        "test-extra",
        "no-constraints",
    ],
)
def test_install_comparison_catches_a_drift(old: str, new: str) -> None:
    """The comparison above fails when the Dockerfile drifts in anything else."""
    text = DOCKERFILE.read_text()
    assert old in text
    drifted = parse_dockerfile(text.replace(old, new, 1))
    assert builder_commands(drifted) != as_in_the_image(makefile_commands())


# --- Dockerfile facts ---------------------------------------------------------------------------


def deploy_config() -> Config:
    return load(DEPLOY_CONFIG.read_text(), {}, {})


def exposed_ports(stage: Stage) -> set[int]:
    return {int(p.split("/")[0]) for i in stage.all("EXPOSE") for p in i.args.split()}


def test_dockerfile_is_multi_stage_with_a_slim_runtime() -> None:
    stages = dockerfile()
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert builder.name == "builder"
    assert runtime.image == "python:3.11-slim"
    # The venv keeps absolute symlinks to the interpreter: both stages need the same base.
    assert builder.image == runtime.image
    venv_path = next(shlex.split(i.args)[-1] for i in builder.all("RUN") if " -m venv " in i.args)
    copies = [i.args.split() for i in runtime.all("COPY")]
    assert ["--from=builder", venv_path, venv_path] in copies
    assert any(venv_path + "/bin" in i.args for i in runtime.all("ENV")), "venv not on PATH"


def test_runtime_runs_as_a_created_non_root_user() -> None:
    runtime = dockerfile()[-1]
    user = runtime.last("USER").args.split(":")[0]
    assert user not in ("", "root", "0")
    runs = " ".join(i.args for i in runtime.all("RUN"))
    assert re.search(rf"useradd .*--uid {re.escape(user)}\b", runs), runs
    # The last USER (the one that counts) comes after every RUN that sets up the image.
    assert runtime.instructions.index(runtime.last("USER")) > max(
        runtime.instructions.index(i) for i in runtime.all("RUN")
    )


def test_stop_signal_entrypoint_and_command() -> None:
    runtime = dockerfile()[-1]
    assert runtime.last("STOPSIGNAL").args == "SIGTERM"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = runtime.last("ENTRYPOINT").exec_form()
    assert entrypoint == ["pgreactive"], "exec form, so pgreactive is PID 1 and gets SIGTERM"
    assert "pgreactive" in scripts
    assert runtime.last("CMD").exec_form() == ["--config", "/etc/pgreactive/config.yaml"]
    copies = [i.args.split() for i in runtime.all("COPY")]
    assert ["deploy/pgreactive.yaml", "/etc/pgreactive/config.yaml"] in copies


def test_exposed_ports_are_the_configured_ones() -> None:
    config = deploy_config()
    assert config.metrics is not None
    assert exposed_ports(dockerfile()[-1]) == {config.listen.port, config.metrics.port}
    assert (config.listen.port, config.metrics.port) == (6543, 9187)


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's exec-form command (after its --options and CMD)."""
    args = dockerfile()[-1].last("HEALTHCHECK").args
    before, sep, command = args.partition("CMD ")
    assert sep and all(w.startswith("--") for w in before.split()), args
    parsed = json.loads(command)
    assert isinstance(parsed, list)
    return [str(word) for word in parsed]


def test_healthcheck_gets_healthz_with_the_standard_library() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"], "curl and wget are not in the slim image"
    config = deploy_config()
    assert config.metrics is not None
    assert f"http://127.0.0.1:{config.metrics.port}/healthz" in command[2]
    imported = set()
    for node in ast.walk(ast.parse(command[2])):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported and imported <= sys.stdlib_module_names, imported


def run_probe(address: str) -> subprocess.CompletedProcess[str]:
    """The image's health probe, aimed at `address` instead of 127.0.0.1:<metrics port>."""
    config = deploy_config()
    assert config.metrics is not None
    code = healthcheck_command()[2].replace(f"127.0.0.1:{config.metrics.port}", address)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )


def test_healthcheck_passes_on_a_running_proxy_and_fails_without_one() -> None:
    proxy = start_proxy("--no-cache", "--metrics", "127.0.0.1:0")
    try:
        assert proxy.metrics_url is not None
        healthy = run_probe(proxy.metrics_url.removeprefix("http://"))
    finally:
        proxy.stop()
    assert healthy.returncode == 0, healthy.stderr
    with socket.socket() as bound:  # bound but not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        unhealthy = run_probe(f"127.0.0.1:{bound.getsockname()[1]}")
    assert unhealthy.returncode == 1, unhealthy.stderr


# --- .dockerignore ------------------------------------------------------------------------------


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = set(dockerignore())
    wanted = {".venv", ".git", "bench/results", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    assert wanted <= patterns, wanted - patterns
    assert any("__pycache__" in p for p in patterns)


def test_dockerignore_keeps_what_the_image_copies() -> None:
    sources = [
        word
        for stage in dockerfile()
        for i in stage.all("COPY")
        if not i.args.startswith("--from")
        for word in i.args.split()[:-1]
    ]
    assert "pyproject.toml" in sources and "deploy/pgreactive.yaml" in sources
    for source in sources:
        parts = Path(source).parts
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        for pattern in dockerignore():
            hit = [p for p in prefixes if fnmatch.fnmatch(p, pattern.lstrip("/"))]
            assert not hit, f".dockerignore {pattern!r} drops {source!r}, which COPY needs"


# --- deploy/pgreactive.yaml ---------------------------------------------------------------------


def unknown_keys(given: Any, example: Any, prefix: str = "") -> list[str]:
    """Dotted keys of `given` that `example` lacks; free-form maps (empty in the example,
    like `relations: {}`) are not descended into."""
    if not isinstance(given, dict):
        return []
    missing: list[str] = []
    for key, value in given.items():
        if key not in example:
            missing.append(f"{prefix}{key}")
        elif isinstance(example[key], dict) and example[key]:
            missing += unknown_keys(value, example[key], f"{prefix}{key}.")
    return missing


def test_deploy_config_loads_with_the_compose_addresses() -> None:
    config = deploy_config()
    assert config.listen == Address("0.0.0.0", 6543)
    assert (config.upstream.host, config.upstream.port) == ("postgres", 5432)
    assert config.redis_url == "redis://redis:6379/0"
    assert config.metrics == Address("0.0.0.0", 9187)
    assert config.catalog.user == "postgres"
    assert "organization_id" in config.cache.scope_columns
    assert set(config.cache.ttl) == set(SEED_TABLES)


def test_deploy_config_sets_only_documented_keys() -> None:
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    given = yaml.safe_load(DEPLOY_CONFIG.read_text())
    assert unknown_keys(given, example) == []
    assert unknown_keys({"cache": {"ttls": {}}}, example) == ["cache.ttls"]  # it can fail


def test_deploy_relations_name_seeded_columns() -> None:
    """`relations` point at TABLE.COLUMN pairs that the seed schema creates."""
    schema = SEED.read_text()
    for table, targets in deploy_config().relations.items():
        assert f"CREATE TABLE {table} (" in schema
        for target in targets:
            other, column = target.split(".")
            body = schema.split(f"CREATE TABLE {other} (")[1].split(");")[0]
            assert re.search(rf"^\s+{column}\s", body, re.M), target


# --- docker-compose.yml -------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def service(name: str) -> dict[str, Any]:
    found = compose()["services"][name]
    assert isinstance(found, dict)
    return found


def container_ports(definition: dict[str, Any]) -> set[int]:
    """Container sides of `ports:` entries like "127.0.0.1:6543:6543" or "9090:9090"."""
    return {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in definition.get("ports", [])}


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", text)
    assert match, text
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_compose_services_and_format() -> None:
    spec = compose()
    assert spec["version"] == "3.8"  # what Debian's docker-compose 1.29 accepts
    assert set(spec["services"]) == {"postgres", "redis", "pgreactive", "prometheus"}
    assert service("postgres")["image"] == "postgres:15"
    assert service("redis")["image"] == "redis:7"
    assert service("prometheus")["image"].startswith("prom/prometheus")
    for name in ("postgres", "redis"):
        assert service(name)["healthcheck"]["test"], f"{name} has no healthcheck"


def test_compose_builds_pgreactive_and_mounts_its_config() -> None:
    pgreactive = service("pgreactive")
    assert pgreactive["build"] == "."
    config_path = dockerfile()[-1].last("CMD").exec_form()
    assert config_path is not None
    assert f"./deploy/pgreactive.yaml:{config_path[-1]}:ro" in pgreactive["volumes"]
    assert container_ports(pgreactive) == exposed_ports(dockerfile()[-1])
    grace = deploy_config().limits.shutdown_grace_seconds
    assert seconds(pgreactive["stop_grace_period"]) > grace


def test_compose_addresses_match_the_deploy_config() -> None:
    """The upstream and Redis of deploy/pgreactive.yaml are the compose services."""
    config = deploy_config()
    assert config.upstream.host in compose()["services"]
    assert config.redis_url is not None
    assert re.fullmatch(r"redis://redis:6379/\d+", config.redis_url)
    depends = service("pgreactive")["depends_on"]
    assert {config.upstream.host, "redis"} <= set(depends)


def test_compose_postgres_is_seeded() -> None:
    mounts = service("postgres")["volumes"]
    assert "./deploy/initdb:/docker-entrypoint-initdb.d:ro" in mounts
    assert service("postgres")["environment"]["POSTGRES_DB"] == "app"


def test_compose_redis_never_evicts_counters() -> None:
    """docs/cache.md: volatile-* or noeviction; allkeys-* would evict generation counters."""
    command = [str(word) for word in service("redis")["command"]]
    policy = command[command.index("--maxmemory-policy") + 1]
    assert policy in ("volatile-lru", "volatile-lfu", "noeviction"), policy
    assert "--maxmemory" in command


def test_compose_publishes_the_documented_ports() -> None:
    published = {name: container_ports(service(name)) for name in compose()["services"]}
    assert published["pgreactive"] == {6543, 9187}
    assert published["prometheus"] == {9090}
    assert published["postgres"] == set(), "writes that bypass the proxy invalidate nothing"
    assert published["redis"] == {6379}, "host applications follow the events"


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    return subprocess.run(
        [binary, "-f", str(COMPOSE), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_docker_compose_accepts_the_file() -> None:
    result = docker_compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_docker_compose_resolves_build_and_mount() -> None:
    """What the real tool understands: the build context is this repository and the config
    mount is read-only at the path the image's CMD reads."""
    result = docker_compose("config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]["pgreactive"]
    build = resolved["build"]
    assert Path(build["context"] if isinstance(build, dict) else build) == ROOT
    mounts = [m for m in resolved["volumes"] if isinstance(m, dict)] or [
        _short_mount(m) for m in resolved["volumes"]
    ]
    assert {
        "source": str(DEPLOY_CONFIG),
        "target": "/etc/pgreactive/config.yaml",
        "read_only": True,
    }.items() <= next(m for m in mounts if m["target"] == "/etc/pgreactive/config.yaml").items()


def _short_mount(text: str) -> dict[str, Any]:
    source, target, *mode = text.split(":")
    return {"source": source, "target": target, "read_only": mode == ["ro"]}


# --- deploy/prometheus.yml ----------------------------------------------------------------------


def test_prometheus_scrapes_the_pgreactive_service() -> None:
    spec = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in spec["scrape_configs"]}
    job = jobs["pgreactive"]
    assert job["scrape_interval"] == "5s"
    assert seconds(job["scrape_timeout"]) <= seconds(job["scrape_interval"])
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    config = deploy_config()
    assert config.metrics is not None
    assert targets == [f"pgreactive:{config.metrics.port}"]
    assert config.metrics.port in container_ports(service("pgreactive"))
    mount = "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in service("prometheus")["volumes"]


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_example_alert_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "rules", str(ROOT / "deploy" / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout, result.stdout


# --- the seed schema, on the real Postgres -------------------------------------------------------


@pytest.fixture(scope="module")
def seeded() -> Iterator[str]:
    """A scratch database with deploy/initdb/01-schema.sql run into it as the postgres image
    runs it (psql with ON_ERROR_STOP); dropped afterwards."""
    db = f"pgr_packaging_{uuid.uuid4().hex[:10]}"
    admin(f"create database {db}")
    try:
        result = subprocess.run(
            [
                *("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"),
                *("-d", dsn(PG_HOST, PG_PORT, dbname=db), "-f", str(SEED)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "ERROR" not in result.stderr and "WARNING" not in result.stderr, result.stderr
        yield db
    finally:
        admin(f"drop database if exists {db} with (force)")
        forget(db)


def test_seed_creates_the_tenant_tables_with_rows(seeded: str) -> None:
    with psycopg.connect(dsn(PG_HOST, PG_PORT, dbname=seeded, user=PG_USER)) as conn:
        columns = conn.execute(
            "select table_name, column_name from information_schema.columns"
            " where table_schema = 'public'"
        ).fetchall()
        for table in SEED_TABLES:
            count = conn.execute(f"select count(*) from {table}").fetchone()
            assert count is not None and count[0] >= 2, table
    tables = {t for t, _ in columns}
    assert tables == set(SEED_TABLES)
    for table in TENANT_TABLES:
        assert (table, "organization_id") in columns, table


def test_seed_foreign_keys_keep_tenants_apart(seeded: str) -> None:
    with psycopg.connect(dsn(PG_HOST, PG_PORT, dbname=seeded), autocommit=True) as conn:
        references = conn.execute(
            "select conrelid::regclass::text, confrelid::regclass::text from pg_constraint"
            " where contype = 'f' and connamespace = 'public'::regnamespace"
        ).fetchall()
        assert {
            ("agents", "organizations"),
            ("messages", "agents"),
            ("memories", "agents"),
        } <= set(references)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):  # Globex's memory, Acme's agent
            conn.execute(
                "insert into memories (organization_id, agent_id, content)"
                " values ('org-globex', 'agent-ada', 'not mine')"
            )


def test_seeded_schema_shows_scoped_invalidation(seeded: str) -> None:
    """The walk-through in the seed file's header, through a caching proxy running the
    compose config (addresses overridden by flags): a write to one organization's agent leaves
    the other organization's cached agents in place."""
    acme = "SELECT * FROM agents WHERE organization_id = 'org-acme' ORDER BY id"
    globex = "SELECT * FROM agents WHERE organization_id = 'org-globex' ORDER BY id"
    proxy = start_caching_proxy("--config", str(DEPLOY_CONFIG))
    try:
        with connect(proxy.dsn(dbname=seeded)) as conn:

            def scenario() -> None:
                warm = cached(proxy, conn, acme)
                cached(proxy, conn, globex)
                # Acme changes behind the proxy's back: only a cache still answers the old rows.
                admin("UPDATE agents SET name = name || '+' WHERE id = 'agent-ada'", seeded)
                conn.execute(
                    "UPDATE agents SET status = CASE status WHEN 'busy' THEN 'idle' ELSE 'busy'"
                    " END WHERE organization_id = 'org-globex' AND id = 'agent-gus'"
                )
                assert read(proxy, conn, acme) == (warm, ["hit"])
                with connect(dsn(PG_HOST, PG_PORT, dbname=seeded)) as direct:
                    assert read(proxy, conn, globex) == (fetch(direct, globex), ["miss"])

            foreign_bump_retry(scenario)
    finally:
        proxy.stop()
