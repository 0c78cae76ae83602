"""Configuration loading: defaults, precedence, and one-line errors naming the key."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import JsonFormatter
from proxy.config import (
    Address,
    Config,
    ConfigError,
    events_channel,
    load,
    namespace,
    plan_reload,
    redis_database,
)
from proxy.tools.check_config import check

# (config.example.yaml is checked against the schema in test_config_example.py.)


def test_empty_file_gives_defaults() -> None:
    assert load("", {}, {}) == Config()
    assert load(None, {}, {}) == Config()


def test_precedence_file_then_environment_then_flags() -> None:
    text = "listen: 0.0.0.0:7000\nupstream: {url: 'postgresql://db:5433'}\nlog: {level: debug}\n"
    assert load(text, {}, {}).listen == Address("0.0.0.0", 7000)
    env = {"PGREACTIVE_LISTEN": "127.0.0.2:7001", "PGREACTIVE_LOG_LEVEL": "warning"}
    from_env = load(text, env, {})
    assert from_env.listen == Address("127.0.0.2", 7001)
    assert from_env.log_level == "WARNING"
    assert (from_env.upstream.host, from_env.upstream.port) == ("db", 5433)
    flags = load(text, env, {"listen": "127.0.0.3:7002", "cache.enabled": False})
    assert flags.listen == Address("127.0.0.3", 7002)
    assert flags.cache.enabled is False


def test_environment_booleans() -> None:
    assert load(None, {"PGREACTIVE_CACHE_ENABLED": "false"}, {}).cache.enabled is False


def test_values_are_parsed() -> None:
    text = """
cache:
  default_ttl: 30
  ttl: {agents: 300, messages: 60}
  exclude: [audit_log]
relations:
  agents: [messages.from_agent_id, memories.agent_id]
metrics: {listen: "127.0.0.1:9187"}
redis: {url: "redis://127.0.0.1:6379/0"}
"""
    config = load(text, {}, {})
    assert config.cache.default_ttl == 30
    assert config.cache.ttl == {"agents": 300, "messages": 60}
    assert config.cache.exclude == ("audit_log",)
    assert config.relations == {"agents": ("messages.from_agent_id", "memories.agent_id")}
    assert config.metrics == Address("127.0.0.1", 9187)
    assert config.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("listne: 1.2.3.4:5", "listne", id="unknown-top-level-key"),
        pytest.param("cache: {default_tll: 5}", "cache.default_tll", id="unknown-nested-key"),
        pytest.param("cache: {default_ttl: ten}", "cache.default_ttl", id="not-an-integer"),
        pytest.param("cache: {default_ttl: -1}", "cache.default_ttl", id="negative"),
        pytest.param("cache: {enabled: 'yes'}", "cache.enabled", id="string-for-bool"),
        pytest.param("cache: {ttl: {agents: 0}}", "cache.ttl.agents", id="zero-ttl"),
        pytest.param("cache: {exclude: agents}", "cache.exclude", id="string-for-list"),
        pytest.param("listen: nowhere", "listen", id="listen-without-port"),
        pytest.param("listen: 'h:99999'", "listen", id="port-out-of-range"),
        pytest.param("upstream: {url: 'mysql://x:1'}", "upstream.url", id="upstream-scheme"),
        pytest.param("upstream: {url: 'postgresql://u:p@x:1'}", "upstream.url", id="upstream-user"),
        pytest.param("redis: {url: 'http://x'}", "redis.url", id="redis-scheme"),
        pytest.param(
            "relations: {agents: [messages]}", "relations.agents", id="relation-no-column"
        ),
        pytest.param("log: {level: loud}", "log.level", id="log-level"),
        pytest.param("log: {format: xml}", "log.format", id="log-format"),
        pytest.param("limits: {max_message_bytes: 1}", "limits.max_message_bytes", id="tiny-limit"),
        pytest.param("cache: [1, 2]", "cache", id="list-for-mapping"),
        pytest.param("cache: {ttl: {users: soon}}", "cache.ttl.users", id="ttl-not-a-number"),
        pytest.param("cache: {ttl: {users: 1.5}}", "cache.ttl.users", id="ttl-fraction"),
        pytest.param("cache: {ttl: {users: [5]}}", "cache.ttl.users", id="ttl-list"),
        pytest.param("cache: {ttl: [users]}", "cache.ttl", id="ttl-list-for-mapping"),
        pytest.param("cache: {ttl: 0}", "cache.ttl", id="ttl-falsy-scalar"),
        pytest.param("cache: {ttl: {public.users: 5}}", "cache.ttl", id="ttl-qualified"),
        pytest.param("cache: {ttl: {1: 5}}", "cache.ttl", id="ttl-number-as-table"),
        pytest.param("cache: {exclude: ''}", "cache.exclude", id="exclude-empty-string"),
        pytest.param("cache: {exclude: [s.audit]}", "cache.exclude", id="exclude-qualified"),
        pytest.param("cache: {exclude: [1]}", "cache.exclude", id="exclude-number"),
        pytest.param("cache: {scope_columns: ['']}", "cache.scope_columns", id="scope-empty"),
        pytest.param("cache: {scope_columns: }", "cache.scope_columns", id="scope-null"),
        pytest.param("cache: {max_result_bytes: -1}", "cache.max_result_bytes", id="negative"),
        pytest.param("relations: [agents]", "relations", id="relations-list"),
        pytest.param("relations: {agents: m.a}", "relations.agents", id="relation-string"),
        pytest.param("relations: {agents: [m.]}", "relations.agents", id="relation-no-col"),
        pytest.param("relations: {agents: [.a]}", "relations.agents", id="relation-no-table"),
        pytest.param("relations: {agents: [3]}", "relations.agents", id="relation-number"),
        pytest.param("relations: {s.agents: [m.a]}", "relations", id="relation-qualified"),
        pytest.param("limits: {max_message_bytes: big}", "limits.max_message_bytes", id="lim"),
        pytest.param(
            "limits: {shutdown_grace_seconds: -1}", "limits.shutdown_grace_seconds", id="grace"
        ),
        pytest.param(
            "limits: {shutdown_grace_seconds: .inf}", "limits.shutdown_grace_seconds", id="inf"
        ),
        pytest.param("limits: 10", "limits", id="limits-scalar"),
        pytest.param("limits: {startup_timeout: 0}", "limits.startup_timeout", id="startup-0"),
        pytest.param("limits: {startup_timeout: soon}", "limits.startup_timeout", id="startup"),
        pytest.param(
            "limits: {max_client_connections: 0}", "limits.max_client_connections", id="max-0"
        ),
        pytest.param(
            "limits: {max_client_connections: 1.5}", "limits.max_client_connections", id="max-f"
        ),
        pytest.param("upstream: {connect_timeout: 0}", "upstream.connect_timeout", id="t0"),
        pytest.param("upstream: {connect_timeout: .nan}", "upstream.connect_timeout", id="nan"),
        pytest.param("upstream: {port: 0}", "upstream.port", id="upstream-port-0"),
        pytest.param("redis: {timeout: 0}", "redis.timeout", id="redis-timeout-0"),
        pytest.param("redis: {url: 6379}", "redis.url", id="redis-url-number"),
        pytest.param("catalog: {user: 0}", "catalog.user", id="catalog-user-number"),
        pytest.param("catalog: {password: false}", "catalog.password", id="password-bool"),
        pytest.param("catalog: {max_age: -5}", "catalog.max_age", id="catalog-max-age"),
        pytest.param("events: {channel: ''}", "events.channel", id="empty-channel"),
        pytest.param("upstream: {url: 'postgresql://x:1?sslmod=require'}", "upstream.url",
                     id="upstream-url-unknown-parameter"),
        pytest.param("upstream: {url: 'postgresql://x?sslmode=prefer&sslmode=require'}",
                     "upstream.url", id="upstream-url-parameter-twice"),
        pytest.param("upstream: {sslmode: allow}", "upstream.sslmode", id="sslmode-allow"),
        pytest.param("upstream: {url: 'postgresql://x?sslmode=on'}", "upstream.sslmode",
                     id="sslmode-unknown"),
        pytest.param("upstream: {sslmode: verify-full}", "upstream.sslrootcert",
                     id="verify-without-root"),
        pytest.param("upstream: {sslcert: c.pem}", "upstream.sslkey", id="sslcert-alone"),
        pytest.param("tls: {cert_file: c.pem}", "tls.key_file", id="tls-cert-alone"),
        pytest.param("tls: {key_file: k.pem}", "tls.cert_file", id="tls-key-alone"),
        pytest.param("tls: {required: true}", "tls.required", id="tls-required-no-cert"),
        pytest.param("tls: {client_ca_file: ca.pem}", "tls.client_ca_file", id="tls-ca-no-cert"),
        pytest.param("tls: {required: 'yes'}", "tls.required", id="tls-required-string"),
        pytest.param("events: {stream_maxlen: 0}", "events.stream_maxlen", id="stream-0"),
        pytest.param("events: {requires_ack: 1}", "events.requires_ack", id="ack-number"),
        pytest.param("events: {sse_heartbeat_seconds: 0}", "events.sse_heartbeat_seconds",
                     id="sse-heartbeat-0"),
        pytest.param("events: {sse_client_buffer: 0}", "events.sse_client_buffer",
                     id="sse-buffer-0"),
        pytest.param("metrics: '127.0.0.1:9187'", "metrics", id="metrics-string"),
        pytest.param("metrics: {listen: 70000}", "metrics.listen", id="metrics-port-big"),
        pytest.param("metrics: {token: 5}", "metrics.token", id="metrics-token-number"),
        pytest.param("log: {level: 3}", "log.level", id="log-level-number"),
        pytest.param("replication: 5", "replication", id="replication-scalar"),
        pytest.param("replication: {enabled: 'yes'}", "replication.enabled", id="repl-enabled"),
        pytest.param("replication: {enabled: true}", "replication.database", id="repl-no-db"),
        pytest.param("replication: {enabled: true, database: app}", "replication.enabled",
                     id="repl-without-catalog-user"),
        pytest.param("replication: {database: 5}", "replication.database", id="repl-db-number"),
        pytest.param("replication: {slot: ''}", "replication.slot", id="repl-slot-empty"),
        pytest.param("replication: {slot: My-Slot}", "replication.slot", id="repl-slot-chars"),
        pytest.param("replication: {slot: 7}", "replication.slot", id="repl-slot-number"),
        pytest.param("replication: {publication: 'a b'}", "replication.publication",
                     id="repl-publication-space"),
        pytest.param("replication: {publication: \"p'; drop\"}", "replication.publication",
                     id="repl-publication-quote"),
        pytest.param("replication: {tables: users}", "replication.tables", id="repl-tables-str"),
        pytest.param("replication: {tables: [s.users]}", "replication.tables",
                     id="repl-tables-qualified"),
        pytest.param("replication: {tables: [1]}", "replication.tables", id="repl-tables-num"),
        pytest.param("replication: {tables: ['']}", "replication.tables", id="repl-tables-empty"),
        pytest.param("replication: {tables: ['a; drop table b']}", "replication.tables",
                     id="repl-tables-sql"),
        pytest.param("replication: {tables: ['a\"b']}", "replication.tables",
                     id="repl-tables-quote"),
        pytest.param("replication: {tables: [1abc]}", "replication.tables",
                     id="repl-tables-digit-first"),
        pytest.param("replication: {tables: [" + "t" * 64 + "]}", "replication.tables",
                     id="repl-tables-too-long"),
        pytest.param("replication: {create_if_missing: 1}", "replication.create_if_missing",
                     id="repl-create-number"),
        pytest.param("replication: {failover_seconds: 0}", "replication.failover_seconds",
                     id="repl-failover-0"),
        pytest.param("replication: {failover_seconds: -1}", "replication.failover_seconds",
                     id="repl-failover-negative"),
        pytest.param("replication: {failover_seconds: soon}", "replication.failover_seconds",
                     id="repl-failover-text"),
        pytest.param("replication: {failover_seconds: .nan}", "replication.failover_seconds",
                     id="repl-failover-nan"),
        pytest.param("cache: {default_ttl: 5}\ncache: {enabled: true}", "cache", id="twice"),
        pytest.param("cache:\n  ttl: {a: 1, a: 2}\n", "a", id="twice-nested"),
    ],
)
def test_bad_values_name_their_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(text, {}, {})
    message = str(info.value)
    assert message.startswith(f"{key}:"), message
    assert "\n" not in message


@pytest.mark.parametrize(
    "section",
    ["upstream", "tls", "redis", "cache", "catalog", "events", "metrics", "log", "limits",
     "replication"],
)
def test_unknown_keys_are_refused_in_every_section(section: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{section}\.nope: unknown key"):
        load(f"{section}: {{nope: 1}}", {}, {})


def test_replication_values_are_parsed() -> None:
    config = load(
        "catalog: {user: pgreactive}\n"
        "replication: {enabled: true, database: app, slot: s_1, publication: p_1,"
        " tables: [orders, Line_Items], create_if_missing: false, failover_seconds: 2.5}\n",
        {},
        {},
    )
    r = config.replication
    assert (r.enabled, r.database, r.slot, r.publication) == (True, "app", "s_1", "p_1")
    assert (r.tables, r.create_if_missing, r.failover_seconds) == (
        ("orders", "Line_Items"), False, 2.5
    )
    default = load("replication: {tables: }", {}, {}).replication
    assert (default.enabled, default.slot, default.tables, default.failover_seconds) == (
        False, "pgreactive", (), 5.0
    )


def test_cli_bad_replication_key_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("catalog: {user: u}\nreplication: {enabled: true, database: d, slot: A-B}\n")
    result = _run_cli("--config", str(bad))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "replication.slot: " in line, result.stderr


def test_null_values_mean_the_default() -> None:
    """`exclude:` with nothing after it (YAML null) is an empty list, as is an empty section."""
    text = "cache:\n  exclude:\n  ttl:\nrelations:\nlog:\ncatalog: {user: , password: }\n"
    assert load(text, {}, {}) == Config()


def test_environment_upstream_url_wins_over_host_and_port_in_the_file() -> None:
    text = "upstream: {host: db, port: 5433}"
    assert (load(text, {}, {}).upstream.host, load(text, {}, {}).upstream.port) == ("db", 5433)
    env = {"PGREACTIVE_UPSTREAM": "postgresql://other:6000"}
    upstream = load(text, env, {}).upstream
    assert (upstream.host, upstream.port) == ("other", 6000)
    flagged = load(text, {}, {"upstream.url": "postgresql://third:7000"}).upstream
    assert (flagged.host, flagged.port) == ("third", 7000)


def test_upstream_tls_from_the_url_or_the_keys() -> None:
    url = "postgresql://db:6432?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=c&sslkey=k"
    upstream = load(None, {"PGREACTIVE_UPSTREAM": url}, {}).upstream
    assert (upstream.host, upstream.port, upstream.sslmode) == ("db", 6432, "verify-full")
    assert (upstream.sslrootcert, upstream.sslcert, upstream.sslkey) == ("/ca.pem", "c", "k")
    assert upstream.url() == "postgresql://db:6432?sslmode=verify-full"
    assert load(None, {}, {}).upstream.sslmode == "disable"
    # In the file, a key wins over the url's parameter ...
    text = "upstream: {url: 'postgresql://db?sslmode=require', sslmode: prefer}"
    assert load(text, {}, {}).upstream.sslmode == "prefer"
    # ... and a url from a flag wins over both for the parameters it names, not the others.
    flag = {"upstream.url": "postgresql://db?sslmode=require"}
    assert load(text, {}, flag).upstream.sslmode == "require"
    assert load(text, {}, {"upstream.url": "postgresql://db"}).upstream.sslmode == "prefer"


def test_file_host_refines_file_url() -> None:
    upstream = load("upstream: {url: 'postgresql://a:1', host: b}", {}, {}).upstream
    assert (upstream.host, upstream.port) == ("b", 1)


def test_environment_cannot_hide_a_bad_section_in_the_file() -> None:
    """`upstream: 5` in the file is an error even when the environment sets upstream.url."""
    with pytest.raises(ConfigError, match=r"^upstream: expected a mapping"):
        load("upstream: 5", {"PGREACTIVE_UPSTREAM": "postgresql://h:1"}, {})


def test_invalid_yaml_names_the_line() -> None:
    with pytest.raises(ConfigError, match="line 2"):
        load("listen: 127.0.0.1:1\ncache: {a: b: c}\n", {}, {})


def test_bad_environment_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^listen:"):
        load(None, {"PGREACTIVE_LISTEN": "nowhere"}, {})


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_bad_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cache:\n  default_ttl: soon\n")
    result = _run_cli("--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cache.default_ttl" in lines[0], result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--listen", "nowhere"], id="bad-listen"),
        pytest.param(["--upstream", "http://x"], id="bad-upstream"),
        pytest.param(["--upstream", "postgresql://x?sslmode=require&gssencmode=disable"],
                     id="unknown-upstream-url-parameter"),
        pytest.param(["--bogus"], id="unknown-flag"),
        pytest.param(["--config", "/nonexistent/file.yaml"], id="missing-file"),
        pytest.param(["--log-level", "chatty"], id="bad-log-level"),
        pytest.param(["--log-format", "xml"], id="bad-log-format"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(args: list[str]) -> None:
    result = _run_cli(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_log_format_flag_wins_over_environment() -> None:
    from proxy.cli import config_from_args

    env = {"PGREACTIVE_LOG_FORMAT": "text"}
    assert config_from_args(["--log-format", "json"], env).log_format == "json"
    assert config_from_args([], env).log_format == "text"
    assert config_from_args([], {"PGREACTIVE_LOG_FORMAT": "json"}).log_format == "json"


# --- reload planning (SIGHUP) ----------------------------------------------------------

BASE = """
listen: 127.0.0.1:7000
cache: {default_ttl: 60, ttl: {users: 300}, exclude: [audit], scope_columns: [org_id]}
relations: {agents: [messages.agent_id]}
log: {level: info}
limits: {shutdown_grace_seconds: 10}
"""


def _reload(new_text: str) -> tuple[Config, Config, tuple[str, ...], tuple[str, ...]]:
    running, loaded = load(BASE, {}, {}), load(new_text, {}, {})
    plan = plan_reload(running, loaded)
    return running, plan.config, plan.applied, plan.restart


def test_reload_without_changes_applies_nothing() -> None:
    running, config, applied, restart = _reload(BASE)
    assert (applied, restart) == ((), ())
    assert config == running


def test_reload_applies_live_settings_and_keeps_the_rest() -> None:
    new = (
        BASE.replace("ttl: {users: 300}", "ttl: {users: 5}")
        .replace("default_ttl: 60", "default_ttl: 7")
        .replace("exclude: [audit]", "exclude: []")
        .replace("[messages.agent_id]", "[memories.agent_id]")
        .replace("level: info", "level: debug")
        .replace("7000", "7001")
        .replace("shutdown_grace_seconds: 10", "shutdown_grace_seconds: 1")
        .replace("[org_id]", "[team_id]")
    ) + "tls: {cert_file: new.crt, key_file: new.key}\n"
    running, config, applied, restart = _reload(new)
    assert applied == (
        "tls.cert_file", "tls.key_file",
        "cache.default_ttl", "cache.ttl", "cache.exclude", "relations", "log.level",
    )  # fmt: skip
    assert (config.tls.cert_file, config.tls.key_file) == ("new.crt", "new.key")
    assert restart == ("listen", "cache.scope_columns", "limits.shutdown_grace_seconds")
    cache = config.cache
    assert (cache.default_ttl, cache.ttl, cache.exclude) == (7, {"users": 5}, ())
    assert config.relations == {"agents": ("memories.agent_id",)}
    assert config.log_level == "DEBUG"
    # Not applied: still what is running.
    assert config.listen == running.listen
    assert config.cache.scope_columns == ("org_id",)
    assert config.limits == running.limits


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        pytest.param("upstream: {host: elsewhere}", "upstream.url", id="upstream-host"),
        pytest.param("redis: {url: 'redis://h:1/0'}", "redis.url", id="redis"),
        pytest.param("metrics: {listen: '127.0.0.1:9'}", "metrics.listen", id="metrics"),
        pytest.param("catalog: {password: secret}", "catalog.password", id="catalog-password"),
        pytest.param("events: {channel: other}", "events.channel", id="events"),
        pytest.param("upstream: {sslmode: require}", "upstream.sslmode", id="upstream-sslmode"),
    ],
)
def test_reload_reports_keys_that_need_a_restart(extra: str, key: str) -> None:
    running, config, applied, restart = _reload(BASE + extra)
    assert (applied, restart) == ((), (key,))
    assert config == running


# --- JSON log lines ---------------------------------------------------------------------


def _json_line(msg: str, *args: object, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("pgreactive.session", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, object] = json.loads(line)
    return parsed


def test_json_log_line_carries_the_connection_id() -> None:
    entry = _json_line("conn=%d open from %s", 42, "127.0.0.1:5000")
    assert entry["conn"] == 42 and entry["msg"] == "conn=42 open from 127.0.0.1:5000"
    assert entry["level"] == "INFO" and entry["logger"] == "pgreactive.session"
    assert _json_line("listening on %s", "x").get("conn") is None
    assert _json_line("cache paused", conn=7)["conn"] == 7


def test_json_log_line_keeps_a_traceback_on_its_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "conn=%d oops", (3,), info)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["conn"] == 3 and "ValueError: boom" in entry["exc"]


# --- check-config (pure part; the command itself is run in tests/integration/test_reload.py)


def test_check_blames_an_environment_variable(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("cache: {default_ttl: 5}\n")
    assert check(str(good), {}) is None
    problem = check(str(good), {"PGREACTIVE_LISTEN": "nowhere"})
    assert problem is not None and problem.startswith("listen:")
    assert problem.endswith("(from PGREACTIVE_LISTEN)")
    assert check(str(tmp_path / "missing.yaml"), {}) == "cannot read: No such file or directory"


# --- namespace ---------------------------------------------------------------------------


def _ns(**overrides: Any) -> str:
    return namespace(load(None, {}, overrides))


def test_the_derived_namespace_differs_per_redis_database_and_upstream() -> None:
    base = _ns(**{"redis.url": "redis://r:6379/7"})
    assert base.startswith("pgr-")
    assert base == _ns(**{"redis.url": "redis://other:6379/7"})  # the number, not the host
    assert base != _ns(**{"redis.url": "redis://r:6379/12"})  # pub/sub ignores the number
    assert base != _ns(**{"redis.url": "redis://r:6379/7", "upstream.url": "postgresql://db:5432"})
    assert _ns(**{"redis.url": "redis://r:6379/7", "namespace": "app"}) == "app"


@pytest.mark.parametrize(
    ("url", "db"),
    [
        (None, 0),
        ("redis://r:6379", 0),
        ("redis://r:6379/", 0),
        ("redis://r:6379/5", 5),
        ("rediss://u:p@r:6379/11", 11),
        ("redis://r:6379?db=3", 3),
        ("unix:///run/redis.sock?db=4", 4),
        ("unix:///run/redis.sock", 0),
    ],
)
def test_redis_database(url: str | None, db: int) -> None:
    assert redis_database(url) == db


def test_events_go_to_the_namespaced_channel() -> None:
    config = load(None, {"PGREACTIVE_NAMESPACE": "app"}, {"events.channel": "inv"})
    assert events_channel(config) == "app:inv"


@pytest.mark.parametrize("bad", ["a b", "{tag}", "-x", "ns*"])
def test_a_namespace_with_other_characters_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^namespace: expected letters"):
        load(None, {}, {"namespace": bad})


@pytest.mark.parametrize("listen", ["9187", 9187])
def test_a_bare_metrics_port_binds_this_host_only(listen: object) -> None:
    config = load(None, {}, {"metrics.listen": listen})
    assert config.metrics == Address("127.0.0.1", 9187)


def test_invalid_yaml_names_the_file_the_line_and_the_reason(tmp_path: Path) -> None:
    from proxy.cli import config_from_args

    path = tmp_path / "server.yaml"
    path.write_text("cache:\n  ttl: {a: 1\nlisten: x\n")
    with pytest.raises(ConfigError) as info:
        config_from_args(["--config", str(path)], {})
    assert str(info.value) == (
        f"{path}: invalid YAML at line 3, column 7: while parsing a flow mapping,"
        " expected ',' or '}', but got ':'"
    )
    # check-config prints the file name itself, once.
    assert check(str(path), {}) == (
        "invalid YAML at line 3, column 7: while parsing a flow mapping,"
        " expected ',' or '}', but got ':'"
    )
