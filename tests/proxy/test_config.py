"""Configuration loading: defaults, precedence, and one-line errors naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import Address, Config, ConfigError, load

ROOT = Path(__file__).resolve().parents[2]


def test_example_file_states_the_defaults() -> None:
    """config.example.yaml documents every default: loading it changes nothing."""
    assert load((ROOT / "config.example.yaml").read_text(), {}, {}) == Config()


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
    ],
)
def test_bad_values_name_their_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(text, {}, {})
    message = str(info.value)
    assert message.startswith(f"{key}:"), message
    assert "\n" not in message


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
        pytest.param(["--bogus"], id="unknown-flag"),
        pytest.param(["--config", "/nonexistent/file.yaml"], id="missing-file"),
        pytest.param(["--log-level", "chatty"], id="bad-log-level"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(args: list[str]) -> None:
    result = _run_cli(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
