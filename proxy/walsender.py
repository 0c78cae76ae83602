"""A replication connection: `PgClient` started with ``replication=database``.

Shell module.  Before streaming, a walsender in database mode takes replication commands
(``IDENTIFY_SYSTEM``, ``CREATE_REPLICATION_SLOT``) and plain SQL through the simple Query
protocol, which `PgClient.execute` speaks.  ``START_REPLICATION`` answers CopyBothResponse;
from then on only CopyData flows (both ways) until one side sends CopyDone.  This class adds
just that: `start_copy_both`, `read_copy` and `send_copy`.  Decoding the payloads is
`cache.pgoutput`'s business.
"""

from __future__ import annotations

import asyncio

from proxy.codec import BackendTag, FrontendTag, decode_error_fields, message
from proxy.pgclient import PgClient, PgError


class WalSender(PgClient):
    """A walsender connection; use `WalSender.open`."""

    streaming = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        user: str,
        database: str,
        password: str | None,
        timeout: float,
    ) -> WalSender:
        client = await cls.connect(
            host, port, user, database, password, timeout,
            application_name="pgreactive-replication",
            parameters={"replication": "database"},
        )  # fmt: skip
        assert isinstance(client, WalSender)
        return client

    async def start_copy_both(self, command: str) -> None:
        """Send `command` (START_REPLICATION) and wait for CopyBothResponse."""
        self._writer.write(message(ord("Q"), command.encode() + b"\x00"))
        try:
            async with asyncio.timeout(self._timeout):
                while True:
                    tag, payload = await self._read_message()
                    if tag == BackendTag.COPY_BOTH_RESPONSE:
                        self.streaming = True
                        return
                    if tag == BackendTag.ERROR_RESPONSE:
                        error = PgError.from_fields(decode_error_fields(payload))
                        while tag != BackendTag.READY_FOR_QUERY:
                            tag, payload = await self._read_message()
                        raise error
                    if tag not in (BackendTag.NOTICE_RESPONSE, BackendTag.PARAMETER_STATUS):
                        raise PgError("08P01", f"unexpected message {chr(tag)!r} from the server")
        except TimeoutError as exc:
            self._abort()
            raise PgError("57014", "START_REPLICATION timed out") from exc
        except PgError as exc:
            if exc.sqlstate.startswith("08"):
                self._abort()
            raise

    async def read_copy(self) -> bytes | None:
        """The next CopyData payload; None when the server ended the stream (CopyDone).
        An ErrorResponse (the slot was dropped, the server shuts down) raises `PgError`."""
        while True:
            tag, payload = await self._read_message()
            if tag == BackendTag.COPY_DATA:
                return payload
            if tag == BackendTag.COPY_DONE:
                self.streaming = False
                return None
            if tag == BackendTag.ERROR_RESPONSE:
                self._abort()
                raise PgError.from_fields(decode_error_fields(payload))
            if tag not in (BackendTag.NOTICE_RESPONSE, BackendTag.PARAMETER_STATUS):
                self._abort()
                raise PgError("08P01", f"unexpected message {chr(tag)!r} in a replication stream")

    def abort(self) -> None:
        """Close the connection at once (the reader of the stream then sees it closed)."""
        self._abort()

    def send_copy(self, payload: bytes) -> None:
        """Queue one CopyData (a standby status update) for the server."""
        if not self.closed:
            self._writer.write(message(FrontendTag.COPY_DATA, payload))
