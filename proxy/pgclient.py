"""A minimal asyncio PostgreSQL client for the proxy's own catalog connection.

Theory of operation.  The proxy needs to ask its upstream a handful of catalog questions
(see `cache.catalog`) without a driver dependency, so this module speaks just enough of the
v3 protocol over asyncio streams.  It is the proxy's implementation of the cache's catalog
port (`cache.catalog.CatalogConnection`; `CatalogLogin` is the `CatalogSource`): it lives in
`proxy/` because it speaks the protocol with `proxy.codec` and `proxy.tls`, and the cache
layer must not import the proxy.  `PgError`, `Result` and `Row` are the port's own types
(defined in `cache.catalog`, re-exported here).

* **Start-up**: a StartupMessage (protocol 3.0, ``client_encoding=UTF8`` so that text results
  decode as UTF-8, ``DateStyle=ISO``), then the authentication exchange the server asks for:
  trust (AuthenticationOk straight away), cleartext password, md5
  (``"md5" + md5(md5(password + user).hexdigest() + salt)``) or SCRAM-SHA-256 (RFC 5802 and
  RFC 7677, client side, no channel binding: gs2 header ``n,,``; the server's signature is
  verified, so a server that does not know the password cannot pass for one that does).
  ParameterStatus, BackendKeyData and NoticeResponse are read and ignored; start-up ends at
  the first ReadyForQuery.  The whole start-up is bounded by ``timeout``.
* **Queries** use the simple Query protocol only, one at a time (an `asyncio.Lock`
  serialises callers).  Every response is read through ReadyForQuery, so the connection is
  always left at a message boundary.  DataRow values are returned as text (``None`` for
  NULL).  An ErrorResponse becomes `PgError` *after* ReadyForQuery has been read, so the
  client stays usable; COPY is refused (CopyFail / output skipped).
* **Failures that leave the stream in an unknown state** (timeout, cancellation, EOF,
  a malformed message) close the connection; `closed` then reports True and every later
  call raises `PgError` with SQLSTATE 08003.  Client-side failures use client SQLSTATEs:
  08001 could not connect, 08006 connection lost, 08P01 protocol violation, 28000/28P01
  authentication the client cannot or will not complete (no password, bad server signature,
  unsupported method), 57014 timed out.

Only `hashlib`, `hmac`, `secrets`, `base64`, `stringprep` and `unicodedata` are used for the
authentication maths; message layouts come from `proxy.codec`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import stringprep
import struct
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from cache.catalog import PgError, Result, Row
from proxy.codec import (
    PROTOCOL_3_0,
    AuthCode,
    BackendTag,
    FrontendTag,
    StartupMessage,
    TxnStatus,
    auth_code,
    decode_error_fields,
    encode_startup,
    message,
)
from proxy.config import Config
from proxy.tls import UpstreamTLS, describe, open_connection

__all__ = [
    "MAX_MESSAGE_BYTES", "CatalogLogin", "PgClient", "PgError", "Result", "Row", "ScramClient",
    "md5_password", "saslprep",
]  # fmt: skip

#: Refuse a single backend message larger than this (a catalog row is never near it).
MAX_MESSAGE_BYTES = 1 << 30


# --- authentication maths (pure, unit-tested against known vectors) --------------------


def md5_password(user: str, password: str, salt: bytes) -> str:
    """The PasswordMessage body for AuthenticationMD5Password (without the NUL)."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def saslprep(password: str) -> bytes:
    """SASLprep (RFC 4013) as Postgres applies it to SCRAM passwords.

    Like libpq and the server (``pg_saslprep``): a password that is not valid under
    SASLprep (prohibited or unassigned characters, bad bidi) is used as its raw UTF-8 bytes.
    """
    if password.isascii():
        # RFC 4013 only changes non-ASCII characters and ASCII controls; libpq passes
        # pure-ASCII strings through unchanged.
        return password.encode()
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    if not normalized:
        return password.encode()
    for ch in normalized:
        if any(check(ch) for check in _PROHIBITED) or stringprep.in_table_a1(ch):
            return password.encode()
    has_ral = any(stringprep.in_table_d1(ch) for ch in normalized)
    if has_ral:
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            return password.encode()
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            return password.encode()
    return normalized.encode()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


class ScramClient:
    """Client side of one SCRAM-SHA-256 exchange (RFC 5802 / 7677), no channel binding."""

    __slots__ = ("_nonce", "_password", "_server_signature", "client_first_bare", "verified")

    GS2_HEADER = "n,,"

    def __init__(self, password: str, *, user: str = "", nonce: str | None = None) -> None:
        # Postgres ignores the SCRAM user name (it uses the start-up user); libpq sends "".
        self._password = saslprep(password)
        if nonce is None:
            nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._nonce = nonce
        name = user.replace("=", "=3D").replace(",", "=2C")
        self.client_first_bare = f"n={name},r={nonce}"
        self._server_signature = b""
        self.verified = False  # True once the server's signature checked out

    def client_first(self) -> str:
        return self.GS2_HEADER + self.client_first_bare

    def client_final(self, server_first: str) -> str:
        """Answer the server-first-message; raises PgError if it is not acceptable."""
        attrs = _scram_attributes(server_first)
        nonce, salt_b64, iterations = attrs.get("r"), attrs.get("s"), attrs.get("i")
        if nonce is None or salt_b64 is None or iterations is None:
            raise PgError("08P01", "malformed SCRAM server-first-message")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise PgError("08P01", "SCRAM server nonce does not extend the client nonce")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
            rounds = int(iterations)
        except ValueError as exc:
            raise PgError("08P01", "malformed SCRAM salt or iteration count") from exc
        if rounds < 1:
            raise PgError("08P01", "invalid SCRAM iteration count")
        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, rounds)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        channel = base64.b64encode(self.GS2_HEADER.encode()).decode()
        without_proof = f"c={channel},r={nonce}"
        auth_message = f"{self.client_first_bare},{server_first},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def verify_server_final(self, server_final: str) -> None:
        """Check the server's signature; raises PgError if the server cannot prove itself."""
        attrs = _scram_attributes(server_final)
        if "e" in attrs:
            raise PgError("28000", f"SCRAM authentication failed: {attrs['e']}")
        try:
            verifier = base64.b64decode(attrs.get("v", ""), validate=True)
        except ValueError as exc:
            raise PgError("08P01", "malformed SCRAM server-final-message") from exc
        if not self._server_signature or not hmac.compare_digest(verifier, self._server_signature):
            raise PgError("28000", "SCRAM server signature does not match")
        self.verified = True


def _scram_attributes(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        if len(part) >= 2 and part[1] == "=":
            out.setdefault(part[0], part[2:])
    return out


# --- the client ------------------------------------------------------------------------


def _parse_data_row(payload: bytes) -> Row:
    count = int.from_bytes(payload[:2], "big")
    pos = 2
    values: list[str | None] = []
    for _ in range(count):
        (size,) = struct.unpack_from("!i", payload, pos)
        pos += 4
        if size < 0:
            values.append(None)
        else:
            values.append(payload[pos : pos + size].decode("utf-8"))
            pos += size
    if pos != len(payload):
        raise PgError("08P01", "malformed DataRow")
    return tuple(values)


class PgClient:
    """One connection to Postgres; use `PgClient.connect`."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._closed = False
        self.parameters: dict[str, str] = {}
        self.backend_pid: int | None = None
        self.transaction_status = TxnStatus.IDLE

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        user: str,
        database: str,
        password: str | None = None,
        timeout: float = 5.0,
        *,
        application_name: str = "pgreactive-catalog",
        parameters: Mapping[str, str] | None = None,
        tls: UpstreamTLS | None = None,
    ) -> PgClient:
        """Connect and authenticate.  `host` starting with ``/`` is a Unix socket directory.

        `timeout` bounds the whole start-up and is the default bound of each `query`.
        With `tls` (TCP only), the connection starts with an SSLRequest, as the proxy's
        own upstream connections do (`proxy.tls.open_connection`).
        """
        try:
            return await asyncio.wait_for(
                cls._connect(
                    host, port, user, database, password, timeout,
                    application_name, parameters or {}, tls,
                ),
                timeout,
            )  # fmt: skip
        except TimeoutError as exc:
            raise PgError("08001", f"connecting to {host}:{port} timed out") from exc

    @classmethod
    async def _connect(
        cls,
        host: str,
        port: int,
        user: str,
        database: str,
        password: str | None,
        timeout: float,
        application_name: str,
        parameters: Mapping[str, str],
        tls: UpstreamTLS | None,
    ) -> PgClient:
        try:
            if host.startswith("/"):
                reader, writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                loop = asyncio.get_running_loop()
                reader = asyncio.StreamReader(loop=loop)
                transport, protocol = await open_connection(
                    lambda: asyncio.StreamReaderProtocol(reader), host, port, tls
                )
                writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        except OSError as exc:
            raise PgError("08001", f"could not connect to {host}:{port}: {describe(exc)}") from exc
        client = cls(reader, writer, timeout)
        try:
            params = {
                "user": user,
                "database": database,
                "application_name": application_name,
                "client_encoding": "UTF8",
                "DateStyle": "ISO",
                **parameters,
            }
            startup = StartupMessage(PROTOCOL_3_0 >> 16, PROTOCOL_3_0 & 0xFFFF, params)
            client._writer.write(encode_startup(startup))
            await client._authenticate(user, password)
            await client._read_until_ready(None)
        except BaseException:
            client._abort()
            raise
        return client

    @property
    def closed(self) -> bool:
        """True once the connection is closed or was left in an unknown state."""
        return self._closed

    @property
    def in_transaction(self) -> bool:
        """The last ReadyForQuery said a transaction block is open (or failed)."""
        return self.transaction_status != TxnStatus.IDLE

    async def query(self, sql: str, timeout: float | None = None) -> list[Row]:
        """Run `sql` (simple Query); return the rows of every statement, in order."""
        return [row for result in await self.execute(sql, timeout) for row in result.rows]

    async def execute(self, sql: str, timeout: float | None = None) -> list[Result]:
        """Run `sql` (simple Query); return one `Result` per statement that completed.

        Raises `PgError` for an ErrorResponse once ReadyForQuery has been read (statements
        before the failing one have run; after it, nothing ran).
        """
        async with self._lock:
            if self._closed:
                raise PgError("08003", "connection is closed")
            try:
                return await asyncio.wait_for(
                    self._execute(sql), self._timeout if timeout is None else timeout
                )
            except TimeoutError as exc:
                self._abort()
                raise PgError("57014", "query timed out; connection closed") from exc
            except PgError as exc:
                if exc.sqlstate.startswith("08"):
                    self._abort()
                raise
            except BaseException:
                self._abort()  # cancelled mid-response: the stream position is unknown
                raise

    async def _execute(self, sql: str) -> list[Result]:
        if "\x00" in sql:
            raise PgError("22021", "query text contains a NUL byte")
        self._writer.write(message(ord("Q"), sql.encode() + b"\x00"))
        results: list[Result] = []
        await self._read_until_ready(results)
        return results

    async def _read_until_ready(self, results: list[Result] | None) -> None:
        """Read messages through ReadyForQuery, collecting results; raise the first error."""
        error: PgError | None = None
        rows: list[Row] = []
        while True:
            tag, payload = await self._read_message()
            if tag == BackendTag.DATA_ROW:
                rows.append(_parse_data_row(payload))
            elif tag == BackendTag.COMMAND_COMPLETE:
                if results is not None:
                    results.append(Result(payload.rstrip(b"\x00").decode(), tuple(rows)))
                rows = []
            elif tag in (BackendTag.EMPTY_QUERY_RESPONSE, BackendTag.ROW_DESCRIPTION):
                rows = []
            elif tag == BackendTag.ERROR_RESPONSE:
                error = error or PgError.from_fields(decode_error_fields(payload))
                if results is None:  # during start-up an error ends the connection
                    raise error
            elif tag == BackendTag.READY_FOR_QUERY:
                self.transaction_status = TxnStatus(payload[0]) if payload else TxnStatus.IDLE
                if error is not None:
                    raise error
                return
            elif tag == BackendTag.PARAMETER_STATUS:
                name, _, rest = payload.partition(b"\x00")
                self.parameters[name.decode()] = rest.rstrip(b"\x00").decode()
            elif tag == BackendTag.BACKEND_KEY_DATA:
                self.backend_pid = int.from_bytes(payload[:4], "big")
            elif tag == BackendTag.COPY_IN_RESPONSE:
                self._writer.write(message(FrontendTag.COPY_FAIL, b"COPY is not supported\x00"))
            elif tag in (
                BackendTag.NOTICE_RESPONSE,
                BackendTag.NOTIFICATION_RESPONSE,
                BackendTag.COPY_OUT_RESPONSE,
                BackendTag.COPY_DATA,
                BackendTag.COPY_DONE,
                BackendTag.NEGOTIATE_PROTOCOL_VERSION,
            ):
                pass
            else:
                raise PgError("08P01", f"unexpected message {chr(tag)!r} from the server")

    async def _read_message(self) -> tuple[int, bytes]:
        await self._writer.drain()
        try:
            header = await self._reader.readexactly(5)
            length = int.from_bytes(header[1:5], "big")
            if length < 4 or length > MAX_MESSAGE_BYTES:
                raise PgError("08P01", f"invalid message length {length} from the server")
            payload = await self._reader.readexactly(length - 4)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise PgError("08006", "the server closed the connection") from exc
        return header[0], payload

    async def _authenticate(self, user: str, password: str | None) -> None:
        scram: ScramClient | None = None
        while True:
            tag, payload = await self._read_message()
            if tag == BackendTag.ERROR_RESPONSE:
                raise PgError.from_fields(decode_error_fields(payload))
            if tag == BackendTag.NEGOTIATE_PROTOCOL_VERSION:
                continue
            if tag != BackendTag.AUTHENTICATION:
                raise PgError("08P01", f"expected an authentication request, got {chr(tag)!r}")
            code = auth_code(payload)
            if code == AuthCode.OK:
                if scram is not None and not scram.verified:
                    raise PgError("28000", "server ended SCRAM before proving itself")
                return
            needs_password = (AuthCode.CLEARTEXT_PASSWORD, AuthCode.MD5_PASSWORD, AuthCode.SASL)
            if code in needs_password and password is None:
                raise PgError("28P01", "the server asked for a password and none is set")
            if code == AuthCode.CLEARTEXT_PASSWORD:
                assert password is not None
                self._send_password(password.encode() + b"\x00")
            elif code == AuthCode.MD5_PASSWORD:
                assert password is not None
                answer = md5_password(user, password, payload[4:8])
                self._send_password(answer.encode() + b"\x00")
            elif code == AuthCode.SASL:
                assert password is not None
                mechanisms = [m.decode() for m in payload[4:].split(b"\x00") if m]
                if "SCRAM-SHA-256" not in mechanisms:
                    raise PgError("28000", f"no supported SASL mechanism in {mechanisms}")
                scram = ScramClient(password)
                first = scram.client_first().encode()
                body = b"SCRAM-SHA-256\x00" + len(first).to_bytes(4, "big") + first
                self._send_password(body)
            elif code == AuthCode.SASL_CONTINUE:
                if scram is None:
                    raise PgError("08P01", "SASLContinue outside a SASL exchange")
                final = scram.client_final(payload[4:].decode("utf-8", "replace"))
                self._send_password(final.encode())
            elif code == AuthCode.SASL_FINAL:
                if scram is None:
                    raise PgError("08P01", "SASLFinal outside a SASL exchange")
                scram.verify_server_final(payload[4:].decode("utf-8", "replace"))
            else:
                raise PgError("28000", f"unsupported authentication method (code {code})")

    def _send_password(self, body: bytes) -> None:
        self._writer.write(message(FrontendTag.PASSWORD, body))

    async def close(self) -> None:
        """Send Terminate and close the connection (idempotent, never raises)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.write(message(FrontendTag.TERMINATE))
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), self._timeout)
        except (OSError, TimeoutError):
            pass

    def _abort(self) -> None:
        self._closed = True
        transport = self._writer.transport
        transport.abort()


@dataclass(frozen=True, slots=True)
class CatalogLogin:
    """The proxy's own login for catalog reads (`catalog.user`), on the upstream the
    sessions use and with their TLS settings: the `cache.catalog.CatalogSource` the proxy
    gives its `CacheService`."""

    host: str
    port: int
    user: str
    password: str | None
    timeout: float
    tls: UpstreamTLS | None

    @classmethod
    def from_config(cls, config: Config) -> CatalogLogin | None:
        """The login `config` gives (None without `catalog.user`: no catalog is read)."""
        upstream, catalog = config.upstream, config.catalog
        if not catalog.user:
            return None
        return cls(
            upstream.host,
            upstream.port,
            catalog.user,
            catalog.password or None,
            upstream.connect_timeout,
            UpstreamTLS.from_config(upstream),
        )

    async def connect(self, database: str) -> PgClient:
        return await PgClient.connect(
            self.host,
            self.port,
            self.user,
            database,
            password=self.password,
            timeout=self.timeout,
            tls=self.tls,
        )
