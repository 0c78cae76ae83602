"""Session settings: what every setting of a session is now, with transactional semantics.

Theory of operation.  Postgres reports some settings itself (ParameterStatus, the GUC_REPORT
ones); the others change only through SQL (`SET`, `RESET`, `DISCARD`, `SET ROLE`, ...), and a
SET is undone by ROLLBACK, by ROLLBACK TO SAVEPOINT, and SET LOCAL ends with its transaction
(PITFALLS C11).  `Settings` keeps three layers:

* `committed`: values that survive the transaction (start-up parameters, committed SETs,
  ParameterStatus reports, which are authoritative whenever they come);
* the transaction layer: SETs made inside the current transaction, with a snapshot per
  savepoint so ROLLBACK TO can restore it;
* the local layer: SET LOCAL, dropped at the end of the transaction.

The session calls `apply()` when a statement that changes settings completes, the
`savepoint`/`rollback_to`/`release` methods for savepoint commands, and `end_transaction()`
at a ReadyForQuery that leaves the transaction (committed=True unless it rolled back).

`RESET x` returns `x` to its value at session start when the start-up packet set it, else to
`DEFAULT` (the server default).

Settings can also change where no SQL text shows it (`DO`, `CALL`, functions), and per-role /
per-database defaults (`ALTER ROLE ... SET`) differ between sessions without a word.  For
those the session asks its own backend (`REREAD_SQL`, at start and after such a statement)
and `resync()` takes the answer as the truth: the settings that can change a cacheable read's
result, the roles, and whether temporary relations exist.  Pure: no I/O.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

DEFAULT = "\x00default"  # "whatever the server default is" (never a real setting value)

# Start-up packet keys that are not settings.
_NOT_SETTINGS = frozenset({"user", "database", "replication", "options"})
_NO_RESET_ALL = ("role", "session_authorization", "transaction_isolation",
                 "transaction_read_only", "transaction_deferrable")
_OPTION = re.compile(r"(?:-c\s*|--)((?:\\.|[^\s\\])+)")


def startup_settings(parameters: dict[str, str]) -> dict[str, str]:
    """Settings given in a StartupMessage: plain parameters plus ``options=-c name=value``."""
    settings = {k.lower(): v for k, v in parameters.items() if k not in _NOT_SETTINGS}
    for match in _OPTION.finditer(parameters.get("options", "")):
        name, sep, value = re.sub(r"\\(.)", r"\1", match.group(1)).partition("=")
        if sep:
            settings[name.replace("-", "_").lower()] = value
    if "user" in parameters:
        settings.setdefault("session_authorization", parameters["user"])
    return settings


# The settings that can change what a cacheable read returns (its result bytes or which rows
# match).  Custom settings (`app.tenant`) are not among them: the cache never serves tables
# with row-level security, nor views or functions that are not immutable, which is where
# `current_setting()` can read them (those set by SQL text are still part of the key).
RESULT_SETTINGS = (
    "search_path", "timezone", "datestyle", "intervalstyle", "extra_float_digits",
    "bytea_output", "client_encoding", "standard_conforming_strings", "transform_null_equals",
    "array_nulls", "backslash_quote", "lc_monetary", "lc_numeric", "lc_time", "xmlbinary",
    "xmloption", "quote_all_identifiers", "default_text_search_config",
    "timezone_abbreviations", "gin_fuzzy_search_limit", "row_security",
    "default_transaction_isolation", "default_transaction_read_only",
)
# What a session's state is, as its own backend sees it (at start, which also covers
# `ALTER ROLE/DATABASE ... SET` defaults, and after a statement that may have changed it out
# of sight): the roles, whether it has temporary relations (they shadow tables of the same
# name; none at start, and the pg_class probe would cost a new backend ~0.8 ms), and every
# result setting.  On a warm backend about 0.1 ms more than `SELECT 1` (pg_settings: 0.7 ms).
_SETTINGS_COLUMNS = "".join(
    f", pg_catalog.current_setting('{name}', true)" for name in RESULT_SETTINGS
)
STARTUP_SQL = "SELECT session_user, current_user, false" + _SETTINGS_COLUMNS
REREAD_SQL = (
    "SELECT session_user, current_user, EXISTS (SELECT FROM pg_catalog.pg_class"
    " WHERE relnamespace = pg_catalog.pg_my_temp_schema())" + _SETTINGS_COLUMNS
)


def _text_columns(row: bytes) -> list[str | None]:
    """The values of a text-format DataRow payload (raises struct.error when malformed)."""
    (count,) = struct.unpack_from("!H", row)
    values: list[str | None] = []
    pos = 2
    for _ in range(count):
        (length,) = struct.unpack_from("!i", row, pos)
        pos += 4
        if length < 0:
            values.append(None)
            continue
        if pos + length > len(row):
            raise struct.error("DataRow value past its end")
        values.append(row[pos : pos + length].decode("utf-8", "surrogateescape"))
        pos += length
    return values


def decode_reread(row: bytes | None) -> tuple[dict[str, str], bool] | None:
    """The DataRow answering `REREAD_SQL` or `STARTUP_SQL` as (settings, has temporary
    relations); None if it is missing or not what those queries return."""
    if row is None:
        return None
    try:
        columns = _text_columns(row)
    except struct.error:
        return None
    if len(columns) != 3 + len(RESULT_SETTINGS):
        return None
    session_user, current_user, temporary = columns[:3]
    if session_user is None or current_user is None:
        return None
    settings = zip(RESULT_SETTINGS, columns[3:], strict=True)
    out = {name: value for name, value in settings if value is not None}
    out["session_authorization"] = session_user
    if current_user != session_user:
        out["role"] = current_user
    return out, temporary == "t"


@dataclass(slots=True)
class Settings:
    """The effective settings of one session."""

    committed: dict[str, str] = field(default_factory=dict)
    initial: dict[str, str] = field(default_factory=dict)
    txn: dict[str, str] = field(default_factory=dict)
    local: dict[str, str] = field(default_factory=dict)
    savepoints: list[tuple[str, dict[str, str], dict[str, str]]] = field(default_factory=list)
    version: int = 0  # bumped by every change, so derived values can be memoised

    @classmethod
    def from_startup(cls, parameters: dict[str, str]) -> Settings:
        initial = startup_settings(parameters)
        return cls(committed=dict(initial), initial=initial)

    def get(self, name: str) -> str | None:
        name = name.lower()
        for layer in (self.local, self.txn, self.committed):
            if name in layer:
                return layer[name]
        return None

    def effective(self) -> dict[str, str]:
        """Every setting known to differ from the server default, with its current value
        (a RESET to the default counts as never set, as in a fresh session)."""
        merged = {**self.committed, **self.txn, **self.local}
        return {name: value for name, value in merged.items() if value != DEFAULT}

    # --- changes -------------------------------------------------------------------

    def resync(self, values: Mapping[str, str], reported: Collection[str], at_start: bool) -> None:
        """The state as the backend reports it at an idle moment (`decode_reread`): it
        replaces what was followed from SQL text for those settings, except the ones
        ParameterStatus reports (authoritative whenever they come).  At start (which
        includes the role's and database's defaults) it is also what RESET returns to."""
        self.version += 1
        self.committed.update(
            {name: value for name, value in values.items() if name not in reported}
        )
        if "role" not in values:
            self.committed.pop("role", None)  # current_user is the session user
        self.txn.clear()
        self.local.clear()
        self.savepoints.clear()
        if at_start:
            self.initial = dict(self.committed)

    def reported(self, name: str, value: str) -> None:
        """A ParameterStatus from the server: the current value, whatever layer set it."""
        self.version += 1
        name = name.lower()
        self.committed[name] = value
        self.txn.pop(name, None)
        self.local.pop(name, None)

    def apply(self, action: str, name: str | None, value: str | None, local: bool) -> None:
        """A completed SET / RESET / DISCARD (the analyzer's `SessionChange` fields)."""
        self.version += 1
        match action:
            case "set" if name is not None:
                self._set(name.lower(), value if value is not None else DEFAULT, local)
            case "reset" if name is not None:
                key = name.lower()
                self._set(key, self.initial.get(key, DEFAULT), local)
            case "reset_all" | "discard_all":
                # RESET ALL leaves role and session authorization alone (GUC_NO_RESET_ALL);
                # DISCARD ALL resets them too (it runs SET SESSION AUTHORIZATION DEFAULT).
                keep = () if action == "discard_all" else _NO_RESET_ALL
                self.local.clear()
                kept = {k: v for k, v in self.txn.items() if k in keep}
                self.txn = {
                    k: self.initial.get(k, DEFAULT)
                    for k in {**self.committed, **self.txn}
                    if k not in keep
                }
                self.txn.update(kept)
                if action == "discard_all":
                    self.txn["role"] = DEFAULT

    def _set(self, name: str, value: str, local: bool) -> None:
        if name == "session_authorization":
            self._set("role", DEFAULT, local)  # Postgres resets the role with it
        if local:
            self.local[name] = value
        else:
            self.local.pop(name, None)
            self.txn[name] = value

    # --- transactions --------------------------------------------------------------

    def savepoint(self, name: str) -> None:
        self.savepoints.append((name.lower(), dict(self.txn), dict(self.local)))

    def rollback_to(self, name: str) -> None:
        """ROLLBACK TO SAVEPOINT: undo what was set since; the savepoint remains."""
        self.version += 1
        index = self._find(name)
        if index is None:
            return
        _, txn, local = self.savepoints[index]
        self.txn, self.local = dict(txn), dict(local)
        del self.savepoints[index + 1 :]

    def release(self, name: str) -> None:
        """RELEASE SAVEPOINT: keep what was set, forget the savepoint and later ones."""
        index = self._find(name)
        if index is not None:
            del self.savepoints[index:]

    def _find(self, name: str) -> int | None:
        key = name.lower()
        for index in range(len(self.savepoints) - 1, -1, -1):
            if self.savepoints[index][0] == key:
                return index
        return None

    def end_transaction(self, committed: bool) -> None:
        """The transaction ended: keep its SETs if it committed; SET LOCAL ends either way."""
        if not (self.txn or self.local or self.savepoints):
            return  # nothing was set: the usual case, on every ReadyForQuery
        self.version += 1
        if committed:
            self.committed.update(self.txn)
        self.txn.clear()
        self.local.clear()
        self.savepoints.clear()
