"""Configuration: the YAML file, `PGREACTIVE_*` environment variables and command-line flags.

Theory of operation.  `load()` merges, in rising precedence, the built-in defaults, the YAML
file, the environment and the flags into one plain mapping, then `build()` validates it into
frozen dataclasses.  Validation is strict: an unknown key or a value of the wrong type raises
`ConfigError` whose message names the key (``cache.default_ttl: expected an integer ≥ 0,
got 'ten'``); the command line prints that one line and exits with code 2.  YAML that
gives one key twice is refused too (YAML itself would silently keep the last).

`settings()` walks the dataclasses to list every setting under its dotted key in the file:
`config.example.yaml` is checked against it, and `plan_reload()` (SIGHUP) compares with it
to tell which changed keys apply at once and which need a restart.

Pure: reads only the text and mappings it is given (the caller reads the file and passes
`os.environ`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from cache.settings import CacheSettings


class ConfigError(Exception):
    """A bad configuration value; the message names the key."""


@dataclass(frozen=True, slots=True)
class Address:
    """A host and TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# libpq's sslmode values pgreactive implements, weakest first (`allow` is not: it would
# mean opening a second upstream connection after a refused plaintext login).
SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
# The upstream TLS settings: keys of `upstream` in the file, and parameters of its URL.
UPSTREAM_TLS_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """The Postgres the proxy relays to, and how its connections use TLS (libpq's names
    and meanings; the default is `disable`, not libpq's `prefer`)."""

    host: str = "127.0.0.1"
    port: int = 5432
    connect_timeout: float = 5.0
    sslmode: str = "disable"
    sslrootcert: str = ""  # CA file, or "system" for the system's CAs
    sslcert: str = ""  # client certificate presented to the upstream (with sslkey)
    sslkey: str = ""

    def url(self) -> str:
        suffix = "" if self.sslmode == "disable" else f"?sslmode={self.sslmode}"
        return f"postgresql://{Address(self.host, self.port)}{suffix}"


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS towards clients.  Without `cert_file` none: SSLRequest is answered `N`."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""  # when set, clients must present a certificate it signed
    required: bool = False  # refuse clients that do not use TLS (FATAL 28000)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """What may be cached, for how long, and how big."""

    enabled: bool = True
    default_ttl: int = 60
    max_result_bytes: int = 1 << 20
    ttl: Mapping[str, int] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    scope_columns: tuple[str, ...] = ("organization_id",)
    inflight_ttl: float = 30.0  # seconds an unconfirmed in-flight mark lives


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """Where invalidation events go."""

    channel: str = "invalidations"  # after the namespace: NAMESPACE:invalidations
    stream_maxlen: int = 10000
    requires_ack: bool = True
    source: str = ""
    sse_heartbeat_seconds: float = 15.0  # GET /events: a ": ping" comment this often
    sse_client_buffer: int = 1000  # GET /events: events queued per client before it is cut off


@dataclass(frozen=True, slots=True)
class CatalogConfig:
    """The proxy's own connection for reading the catalog (empty user: none)."""

    user: str = ""
    password: str = ""
    max_age: float = 300.0  # seconds between reloads (0: only after DDL through a proxy)


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """Invalidation from Postgres's logical replication stream (docs/replication.md)."""

    enabled: bool = False
    database: str = ""  # the database whose writes are followed (required when enabled)
    slot: str = "pgreactive"
    publication: str = "pgreactive"
    tables: tuple[str, ...] = ()  # publication created for these tables; empty: ALL TABLES
    create_if_missing: bool = True
    failover_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Protocol limits, hostile-client limits and shutdown behaviour."""

    max_message_bytes: int = 256 << 20
    shutdown_grace_seconds: float = 10.0
    startup_timeout: float = 60.0  # seconds from accept to authenticated (Postgres: 60 s)
    max_client_connections: int = 1000


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    listen: Address = Address("127.0.0.1", 6543)
    namespace: str = ""  # empty: derived from the upstream and the Redis database
    upstream: UpstreamConfig = UpstreamConfig()
    tls: TLSConfig = TLSConfig()
    redis_url: str | None = None
    redis_timeout: float = 0.25  # seconds a lookup or fill may wait for Redis
    cache: CacheConfig = CacheConfig()
    relations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    catalog: CatalogConfig = CatalogConfig()
    events: EventsConfig = EventsConfig()
    replication: ReplicationConfig = ReplicationConfig()
    metrics: Address | None = None
    metrics_token: str = ""  # when set, /metrics and /stats require it as a bearer token
    log_level: str = "INFO"
    log_format: str = "text"
    limits: LimitsConfig = LimitsConfig()


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Environment variables and the dotted keys they set.
ENVIRONMENT = {
    "PGREACTIVE_LISTEN": "listen",
    "PGREACTIVE_NAMESPACE": "namespace",
    "PGREACTIVE_UPSTREAM": "upstream.url",
    "PGREACTIVE_REDIS": "redis.url",
    "PGREACTIVE_METRICS": "metrics.listen",
    "PGREACTIVE_METRICS_TOKEN": "metrics.token",
    "PGREACTIVE_LOG_LEVEL": "log.level",
    "PGREACTIVE_LOG_FORMAT": "log.format",
    "PGREACTIVE_CACHE_ENABLED": "cache.enabled",
    "PGREACTIVE_CATALOG_USER": "catalog.user",
    "PGREACTIVE_CATALOG_PASSWORD": "catalog.password",
}


def read_config_file(path: str | None) -> str | None:
    """The text of the `--config` file (None without one); ConfigError if unreadable."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None


def load(
    text: str | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any],
    source: str = "config file",
) -> Config:
    """Merge file text, environment and flag overrides (dotted keys) into a `Config`.

    `source` names the text in the errors that concern the file as a whole (its path; ""
    when the caller prints the path itself)."""
    raw: dict[str, Any] = {}
    prefix = f"{source}: " if source else ""
    if text is not None:
        try:
            parsed = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader
        except yaml.YAMLError as exc:
            raise ConfigError(f"{prefix}invalid YAML{_yaml_problem(exc)}") from None
        if parsed is not None and not isinstance(parsed, dict):
            raise ConfigError(f"{prefix}expected a mapping at the top level")
        raw = parsed or {}
    for variable, key in ENVIRONMENT.items():
        if variable in environ:
            _override(raw, key, _env_value(environ[variable]))
    for key, value in overrides.items():
        _override(raw, key, value)
    return build(raw)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`` at line L, column C: PyYAML's reason`` (as much of it as PyYAML gives)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    reason = ", ".join(str(part) for part in (context, problem) if part)
    return f"{where}: {reason}" if reason else where


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping: plain YAML keeps the
    last one, so a second `cache:` section would silently undo the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` may be overridden by the keys beside it
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"{key}: given twice in one mapping (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _env_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def _override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a key from the environment or a flag.  An upstream URL from there names host and
    port (and any TLS parameter in its query), so those keys from the file must not win
    over it."""
    node = _set(raw, dotted, value)
    if dotted == "upstream.url":
        given = _url_parameters(value) if isinstance(value, str) else []
        for name in ("host", "port", *(name for name, _ in given)):
            node.pop(name, None)


def _set(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Set a dotted key; returns the mapping that holds its last part."""
    parts = dotted.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1], 1):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[:depth])
            raise ConfigError(f"{where}: expected a mapping, got {_show(child)}")
        node = child
    node[parts[-1]] = value
    return node


# --- validation ------------------------------------------------------------------------


def build(raw: Mapping[str, Any]) -> Config:
    """Validate a merged mapping into a `Config`."""
    sections: dict[str, Callable[[Any], Any]] = {
        "listen": lambda v: parse_address("listen", v),
        "namespace": _namespace,
        "upstream": _upstream,
        "tls": _tls,
        "redis": _redis,
        "cache": _cache,
        "relations": _relations,
        "catalog": _catalog,
        "events": _events,
        "replication": _replication,
        "metrics": _metrics,
        "log": _log,
        "limits": _limits,
    }
    _no_unknown("", raw, sections)
    values: dict[str, Any] = {}
    for key, parse in sections.items():
        if key in raw and raw[key] is not None:
            result = parse(raw[key])
            if key == "redis":
                values["redis_url"], values["redis_timeout"] = result
            elif key == "log":
                values["log_level"], values["log_format"] = result
            elif key == "metrics":
                values["metrics"], values["metrics_token"] = result
            else:
                values[key] = result
    config = Config(**values)
    if config.replication.enabled and not config.catalog.user:
        raise ConfigError(
            "replication.enabled: needs catalog.user (a role with the REPLICATION attribute)"
        )
    return config


def _no_unknown(prefix: str, raw: Mapping[str, Any], known: Mapping[str, Any]) -> None:
    for key in raw:
        if key not in known:
            where = f"{prefix}{key}"
            raise ConfigError(f"{where}: unknown key (expected one of: {', '.join(known)})")


def _mapping(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _int(key: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {_show(value)}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {number}")
    return number


def _float(key: str, value: Any, *, positive: bool = False) -> float:
    """A finite number >= 0 (> 0 when `positive`: a timeout of 0 would always expire)."""
    wanted = f"a number {'>' if positive else '>='} 0"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{key}: expected {wanted}, got {_show(value)}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{key}: expected {wanted}, got {value!r}") from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ConfigError(f"{key}: expected {wanted}, got {number}")
    return number


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
    return value


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {_show(value)}")
    return value


def _str_list(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: expected a list of non-empty strings, got {_show(value)}")
    return tuple(value)


def _table(key: str, name: Any) -> str:
    """A table name as the planner matches it: bare (it matches that name in every schema,
    so `public.users` could never match anything)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{key}: expected a table name, got {_show(name)}")
    if "." in name:
        raise ConfigError(
            f"{key}: expected a bare table name (it applies in every schema), got {name!r}"
        )
    return name


def _optional(raw: Mapping[str, Any], name: str, empty: Any) -> Any:
    """`raw[name]`, with an absent or null value (`exclude:` with nothing after it) as
    `empty`; any other value is returned as given, for its parser to check."""
    value = raw.get(name)
    return empty if value is None else value


def parse_address(key: str, value: Any) -> Address:
    """``HOST:PORT`` (or ``[v6]:PORT``) into an `Address`."""
    text = _str(key, value)
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{key}: expected HOST:PORT, got {text!r}")
    return Address(host.strip("[]"), _port(key, port, minimum=0))


def _port(key: str, value: Any, minimum: int = 1) -> int:
    """A TCP port; listening addresses may use 0 (the system picks a free port)."""
    port = _int(key, value, minimum)
    if port > 65535:
        raise ConfigError(f"{key}: port must be 1..65535, got {port}")
    return port


_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def _namespace(value: Any) -> str:
    text = _str("namespace", value)
    if text and not _NAMESPACE.fullmatch(text):
        raise ConfigError(
            "namespace: expected letters, digits and _ . : - (starting with a letter or a"
            f" digit), got {text!r}"
        )
    return text


def namespace(config: Config) -> str:
    """The prefix of every Redis key, the event channel and stream of this deployment:
    `config.namespace`, or when empty ``pgr-`` and a hash of the upstream (as spelled) and
    the Redis database number, so deployments sharing a Redis server stay apart (pub/sub
    channels ignore the database number)."""
    if config.namespace:
        return config.namespace
    upstream = f"{config.upstream.host}:{config.upstream.port}"
    identity = f"{upstream}\x00{redis_database(config.redis_url)}"
    return "pgr-" + hashlib.blake2b(identity.encode(), digest_size=5).hexdigest()


def events_channel(config: Config) -> str:
    """The pub/sub channel, and the stream of the same name, that events go to."""
    return f"{namespace(config)}:{config.events.channel}"


def cache_settings(config: Config) -> CacheSettings:
    """The part of `config` the cache service runs with (the cache layer sees no `Config`)."""
    cache, upstream = config.cache, config.upstream
    return CacheSettings(
        upstream_id=f"{upstream.host}:{upstream.port}",
        root=namespace(config),
        default_ttl=cache.default_ttl,
        ttl=dict(cache.ttl),
        exclude=frozenset(cache.exclude),
        scope_columns=tuple(cache.scope_columns),
        relations=dict(config.relations),
        max_result_bytes=cache.max_result_bytes,
        inflight_ttl=cache.inflight_ttl,
        catalog_max_age=config.catalog.max_age or None,
        catalog_wait=upstream.connect_timeout,
        channel=events_channel(config),
        stream_maxlen=config.events.stream_maxlen,
        requires_ack=config.events.requires_ack,
        source=config.events.source,
        instance_port=config.listen.port,
        in_process=config.redis_url is None,
    )


def redis_database(url: str | None) -> int:
    """The database number of a Redis URL (``/N`` or ``?db=N``; 0 when absent)."""
    if not url:
        return 0
    parts = urlsplit(url)
    for item in parts.query.split("&"):
        name, _, value = item.partition("=")
        if name == "db" and value.isdigit():
            return int(value)
    path = parts.path.strip("/")
    return int(path) if parts.scheme != "unix" and path.isdigit() else 0


def _upstream(value: Any) -> UpstreamConfig:
    raw = _mapping("upstream", value)
    known = ("url", "host", "port", "connect_timeout", *UPSTREAM_TLS_KEYS)
    _no_unknown("upstream.", raw, dict.fromkeys(known))
    d = UpstreamConfig()
    host, port = d.host, d.port
    tls: dict[str, str] = {}
    if "url" in raw:
        host, port, tls = _upstream_url(raw["url"])
    if "host" in raw:
        host = _str("upstream.host", raw["host"])
    if "port" in raw:
        port = _port("upstream.port", raw["port"])
    for name in UPSTREAM_TLS_KEYS:
        if raw.get(name) is not None:
            tls[name] = _str(f"upstream.{name}", raw[name])
    timeout = d.connect_timeout
    if "connect_timeout" in raw:
        timeout = _float("upstream.connect_timeout", raw["connect_timeout"], positive=True)
    return UpstreamConfig(host, port, timeout, **_upstream_tls(tls))


def _upstream_url(value: Any) -> tuple[str, int, dict[str, str]]:
    """``postgresql://HOST:PORT[?sslmode=...&sslrootcert=...]``: host, port, parameters."""
    text = _str("upstream.url", value)
    parts = urlsplit(text)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ConfigError(f"upstream.url: expected postgresql://HOST:PORT, got {text!r}")
    if parts.username or parts.password or parts.path not in ("", "/"):
        raise ConfigError(
            "upstream.url: give only HOST:PORT (clients bring their own user and database)"
        )
    try:
        port = parts.port or 5432
    except ValueError:
        raise ConfigError(f"upstream.url: invalid port in {text!r}") from None
    parameters: dict[str, str] = {}
    for name, given in _url_parameters(text):
        if name not in UPSTREAM_TLS_KEYS:
            raise ConfigError(
                f"upstream.url: unknown parameter {name!r} "
                f"(pgreactive understands {', '.join(UPSTREAM_TLS_KEYS)})"
            )
        if name in parameters:
            raise ConfigError(f"upstream.url: parameter {name!r} given twice")
        parameters[name] = given
    return parts.hostname, port, parameters


def _url_parameters(text: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(text).query, keep_blank_values=True)


def _upstream_tls(given: Mapping[str, str]) -> dict[str, str]:
    """Check the upstream TLS settings together (libpq's rules, where pgreactive can
    check them before connecting)."""
    mode = given.get("sslmode", UpstreamConfig().sslmode)
    if mode not in SSLMODES:
        hint = " (not supported: use prefer or disable)" if mode == "allow" else ""
        raise ConfigError(
            f"upstream.sslmode: expected one of {', '.join(SSLMODES)}, got {mode!r}{hint}"
        )
    if mode.startswith("verify-") and not given.get("sslrootcert"):
        raise ConfigError(
            f"upstream.sslrootcert: sslmode={mode} needs the CA file that signed the "
            "server's certificate (or 'system' for the system's CAs)"
        )
    if bool(given.get("sslcert")) != bool(given.get("sslkey")):
        missing = "sslkey" if given.get("sslcert") else "sslcert"
        raise ConfigError(f"upstream.{missing}: sslcert and sslkey go together")
    return {**given, "sslmode": mode}


def _tls(value: Any) -> TLSConfig:
    raw = _mapping("tls", value)
    keys = [f.name for f in fields(TLSConfig)]
    _no_unknown("tls.", raw, dict.fromkeys(keys))
    files = {k: _str(f"tls.{k}", _optional(raw, k, "")) for k in keys if k != "required"}
    required = _bool("tls.required", raw.get("required", False))
    if bool(files["cert_file"]) != bool(files["key_file"]):
        missing = "key_file" if files["cert_file"] else "cert_file"
        raise ConfigError(f"tls.{missing}: tls.cert_file and tls.key_file go together")
    if not files["cert_file"] and (required or files["client_ca_file"]):
        what = "required" if required else "client_ca_file"
        raise ConfigError(f"tls.{what}: needs tls.cert_file and tls.key_file")
    return TLSConfig(**files, required=required)


def _redis(value: Any) -> tuple[str | None, float]:
    raw = _mapping("redis", value)
    _no_unknown("redis.", raw, {"url": 0, "timeout": 0})
    timeout = _float("redis.timeout", raw.get("timeout", Config().redis_timeout), positive=True)
    url = raw.get("url")
    if url is None or url == "":
        return None, timeout
    text = _str("redis.url", url)
    if urlsplit(text).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"redis.url: expected redis://HOST:PORT/DB, got {text!r}")
    return text, timeout


def _cache(value: Any) -> CacheConfig:
    raw = _mapping("cache", value)
    keys = (
        "enabled", "default_ttl", "max_result_bytes", "ttl", "exclude", "scope_columns",
        "inflight_ttl",
    )
    _no_unknown("cache.", raw, dict.fromkeys(keys))
    d = CacheConfig()
    ttl = _mapping("cache.ttl", _optional(raw, "ttl", {}))
    exclude = _str_list("cache.exclude", _optional(raw, "exclude", []))
    return CacheConfig(
        enabled=_bool("cache.enabled", raw.get("enabled", d.enabled)),
        default_ttl=_int("cache.default_ttl", raw.get("default_ttl", d.default_ttl), 1),
        max_result_bytes=_int(
            "cache.max_result_bytes", raw.get("max_result_bytes", d.max_result_bytes)
        ),
        ttl={_table("cache.ttl", t): _int(f"cache.ttl.{t}", s, 1) for t, s in ttl.items()},
        exclude=tuple(_table("cache.exclude", t) for t in exclude),
        scope_columns=_str_list(
            "cache.scope_columns", raw.get("scope_columns", list(d.scope_columns))
        ),
        inflight_ttl=_float(
            "cache.inflight_ttl", raw.get("inflight_ttl", d.inflight_ttl), positive=True
        ),
    )


def _relations(value: Any) -> Mapping[str, tuple[str, ...]]:
    """``TABLE: [TABLE.COLUMN, ...]``: a write to TABLE also invalidates reads of each listed
    table (``SCHEMA.TABLE.COLUMN`` is accepted; the schema is ignored, as everywhere)."""
    raw = _mapping("relations", value)
    out: dict[str, tuple[str, ...]] = {}
    for table, targets in raw.items():
        key = f"relations.{_table('relations', table)}"
        items = _str_list(key, targets)
        for item in items:
            if item.count(".") < 1 or not all(item.split(".")):
                raise ConfigError(f"{key}: expected TABLE.COLUMN entries, got {item!r}")
        out[table] = items
    return out


def _catalog(value: Any) -> CatalogConfig:
    raw = _mapping("catalog", value)
    _no_unknown("catalog.", raw, dict.fromkeys(("user", "password", "max_age")))
    d = CatalogConfig()
    return CatalogConfig(
        user=_str("catalog.user", _optional(raw, "user", d.user)),
        password=_str("catalog.password", _optional(raw, "password", d.password)),
        max_age=_float("catalog.max_age", raw.get("max_age", d.max_age)),
    )


def _events(value: Any) -> EventsConfig:
    raw = _mapping("events", value)
    keys = (
        "channel", "stream_maxlen", "requires_ack", "source", "sse_heartbeat_seconds",
        "sse_client_buffer",
    )
    _no_unknown("events.", raw, dict.fromkeys(keys))
    d = EventsConfig()
    channel = _str("events.channel", raw.get("channel", d.channel))
    if not channel:
        raise ConfigError("events.channel: expected a channel name, got ''")
    return EventsConfig(
        channel=channel,
        stream_maxlen=_int("events.stream_maxlen", raw.get("stream_maxlen", d.stream_maxlen), 1),
        requires_ack=_bool("events.requires_ack", raw.get("requires_ack", d.requires_ack)),
        source=_str("events.source", raw.get("source", d.source)),
        sse_heartbeat_seconds=_float(
            "events.sse_heartbeat_seconds",
            raw.get("sse_heartbeat_seconds", d.sse_heartbeat_seconds),
            positive=True,
        ),
        sse_client_buffer=_int(
            "events.sse_client_buffer", raw.get("sse_client_buffer", d.sse_client_buffer), 1
        ),
    )


def _replication(value: Any) -> ReplicationConfig:
    raw = _mapping("replication", value)
    keys = ("enabled", "database", "slot", "publication", "tables", "create_if_missing",
            "failover_seconds")
    _no_unknown("replication.", raw, dict.fromkeys(keys))
    d = ReplicationConfig()
    config = ReplicationConfig(
        enabled=_bool("replication.enabled", raw.get("enabled", d.enabled)),
        database=_str("replication.database", _optional(raw, "database", d.database)),
        slot=_identifier("replication.slot", raw.get("slot", d.slot)),
        publication=_identifier("replication.publication", raw.get("publication", d.publication)),
        tables=tuple(
            _published_table("replication.tables", t)
            for t in _str_list("replication.tables", _optional(raw, "tables", []))
        ),
        create_if_missing=_bool(
            "replication.create_if_missing", raw.get("create_if_missing", d.create_if_missing)
        ),
        failover_seconds=_float(
            "replication.failover_seconds",
            raw.get("failover_seconds", d.failover_seconds),
            positive=True,
        ),
    )
    if config.enabled and not config.database:
        raise ConfigError("replication.database: required when replication.enabled is true")
    return config


def _published_table(key: str, name: Any) -> str:
    """A bare table name for ``CREATE PUBLICATION ... FOR TABLE``: letters, digits, _ and $,
    not starting with a digit, at most 63 bytes (it goes into SQL, quoted, as Postgres spells
    it: case-sensitive)."""
    text = _table(key, name)
    head, tail = text[:1], text[1:]
    plain = (head.isalpha() or head == "_") and all(
        c.isalnum() or c in "_$" for c in tail
    )
    if not plain or not text.isascii() or len(text) > 63:
        raise ConfigError(
            f"{key}: expected a table name of letters, digits, _ and $ (at most 63), got {text!r}"
        )
    return text


def _identifier(key: str, value: Any) -> str:
    """A slot or publication name: lower-case letters, digits and underscores (what a
    replication slot name allows; a publication is named the same way here)."""
    text = _str(key, value)
    if not text or not all(c.islower() or c.isdigit() or c == "_" for c in text):
        raise ConfigError(f"{key}: expected lower-case letters, digits and _, got {text!r}")
    return text


def _metrics(value: Any) -> tuple[Address | None, str]:
    """The metrics address (a bare PORT means 127.0.0.1:PORT: /metrics and /stats are not
    exposed beyond this host unless a host says so) and the bearer token."""
    raw = _mapping("metrics", value)
    _no_unknown("metrics.", raw, {"listen": 0, "token": 0})
    token = _str("metrics.token", _optional(raw, "token", ""))
    listen = raw.get("listen")
    if listen in (None, ""):
        return None, token
    if isinstance(listen, int) and not isinstance(listen, bool):
        listen = str(listen)
    if isinstance(listen, str) and listen.isdigit():
        listen = f"127.0.0.1:{listen}"
    return parse_address("metrics.listen", listen), token


def _log(value: Any) -> tuple[str, str]:
    raw = _mapping("log", value)
    _no_unknown("log.", raw, {"level": 0, "format": 0})
    level = _str("log.level", raw.get("level", "INFO")).upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log.level: expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    fmt = _str("log.format", raw.get("format", "text"))
    if fmt not in ("text", "json"):
        raise ConfigError(f"log.format: expected text or json, got {fmt!r}")
    return level, fmt


def _limits(value: Any) -> LimitsConfig:
    raw = _mapping("limits", value)
    keys = ("max_message_bytes", "shutdown_grace_seconds", "startup_timeout",
            "max_client_connections")
    _no_unknown("limits.", raw, dict.fromkeys(keys))
    d = LimitsConfig()
    return LimitsConfig(
        max_message_bytes=_int(
            "limits.max_message_bytes", raw.get("max_message_bytes", d.max_message_bytes), 5
        ),
        shutdown_grace_seconds=_float(
            "limits.shutdown_grace_seconds",
            raw.get("shutdown_grace_seconds", d.shutdown_grace_seconds),
        ),
        startup_timeout=_float(
            "limits.startup_timeout",
            raw.get("startup_timeout", d.startup_timeout),
            positive=True,
        ),
        max_client_connections=_int(
            "limits.max_client_connections",
            raw.get("max_client_connections", d.max_client_connections),
            1,
        ),
    )


# --- the schema, and reloading ---------------------------------------------------------

# `Config` fields whose dotted key in the file differs from their path in the dataclasses
# (host and port are both given by `upstream.url`, as the environment and flags give them).
_FILE_KEYS = {
    "upstream.host": "upstream.url",
    "upstream.port": "upstream.url",
    "redis_url": "redis.url",
    "redis_timeout": "redis.timeout",
    "metrics": "metrics.listen",
    "metrics_token": "metrics.token",
    "log_level": "log.level",
    "log_format": "log.format",
}

# What SIGHUP applies to a running proxy (paths in `Config`): settings read afresh for each
# statement, log line or (`tls.*`) new client connection.  Everything else was used to open
# sockets, connections or Redis clients at start-up and needs a restart.  So do
# `cache.scope_columns`: they decide which generation counters a read depends on and a
# write bumps, so entries filled under the old columns would not be reached by writes
# planned under the new ones (and instances sharing a Redis must agree on them); the
# analyzer's options are also built from them once.
RELOADABLE = (
    # The certificate files are also read again at every reload (rotation in place).
    "tls.cert_file",
    "tls.key_file",
    "tls.client_ca_file",
    "tls.required",
    "cache.default_ttl",
    "cache.ttl",
    "cache.exclude",
    "cache.max_result_bytes",
    "relations",
    "log_level",
    "log_format",
)


def settings(config: Config) -> dict[str, tuple[Any, ...]]:
    """Every value of `config` under its dotted key in the file, found by walking the
    dataclasses, so a new field is a new key that the example file and reloads must cover.
    (A tuple per key: `upstream.url` holds the host and the port.)"""
    out: dict[str, tuple[Any, ...]] = {}
    for path, value in _leaves(config, ""):
        key = _FILE_KEYS.get(path, path)
        out[key] = (*out.get(key, ()), value)
    return out


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    for f in fields(node):
        value = getattr(node, f.name)
        path = prefix + f.name
        if is_dataclass(value) and not isinstance(value, Address):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


@dataclass(frozen=True, slots=True)
class Reload:
    """What a reload does: the configuration to run with from now on (the running one with
    the reloadable settings of the new one), the keys that changed and are applied, and the
    keys that changed but need a restart."""

    config: Config
    applied: tuple[str, ...]
    restart: tuple[str, ...]


def plan_reload(running: Config, loaded: Config) -> Reload:
    """Compare a freshly loaded configuration with the running one (SIGHUP)."""
    config = running
    for path in RELOADABLE:
        config = _with(config, path.split("."), _get(loaded, path))
    before, after = settings(running), settings(loaded)
    changed = [key for key, value in after.items() if value != before[key]]
    live = {_FILE_KEYS.get(path, path) for path in RELOADABLE}
    return Reload(
        config,
        tuple(key for key in changed if key in live),
        tuple(key for key in changed if key not in live),
    )


def _get(node: Any, path: str) -> Any:
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _with(node: Any, parts: list[str], value: Any) -> Any:
    """A copy of the (frozen) dataclass `node` with the field at `parts` set to `value`."""
    head = parts[0]
    if len(parts) > 1:
        value = _with(getattr(node, head), parts[1:], value)
    return replace(node, **{head: value})
