"""Framing: where messages begin and end in the two byte streams.

Theory of operation.  Two readers, both sans-IO (`feed(bytes)` in, messages out):

* `FrontendReader` reads what a client sends.  It starts in start-up mode (untagged packets:
  Int32 length, then body) and switches to tagged messages once told to.  Client messages
  are returned whole, because the proxy decodes most of them; a message longer than
  `max_message_bytes` (10000 for the small control messages, as in PG; a start-up packet
  whose body is over 10000 bytes) is a protocol violation, and nothing is allocated from a
  declared length: bytes are buffered only as they arrive.

* `BackendScanner` reads what Postgres sends and must stay cheap per byte: results of any
  size stream through it.  It returns only the messages whose tag is in its `decode` set
  (whole, as ``(tag, payload)``); every other message is skipped by length without being
  copied, so a DataRow costs one header read.  The caller forwards the raw chunks it fed.

Invariants: a length field below 4 is a violation; no reader ever returns a partial message;
feeding the same bytes in any split gives the same messages.
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.codec import FRONTEND_TAGS, MAX_STARTUP_PACKET
from proxy.errors import MessageTooLarge, ProtocolViolation

# PG's PQ_SMALL_MESSAGE_LIMIT applies to these frontend messages (postgres.c SocketBackend):
# Sync, Flush, Close, Describe, Execute, CopyDone, CopyFail, Terminate.
_SMALL_MESSAGE_LIMIT = 10000
_SMALL_MESSAGES = frozenset(b"SHCDEcfX")


class FrontendReader:
    """Splits the client's byte stream into whole messages."""

    __slots__ = ("_buf", "max_message_bytes", "quick_limit", "startup")

    def __init__(self, max_message_bytes: int) -> None:
        self._buf = bytearray()
        self.max_message_bytes = max_message_bytes
        # A length at most this is within the limit whatever the message type.
        self.quick_limit = min(_SMALL_MESSAGE_LIMIT, max_message_bytes)
        self.startup = True  # untagged start-up packets until the caller switches

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add bytes; return the complete messages as ``(tag, whole message bytes)``.

        In start-up mode the tag is 0 and the bytes are the whole untagged packet.
        """
        buf = self._buf
        if not buf and not self.startup:
            return self._feed_fresh(data)
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while True:
            if self.startup:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos : pos + 4], "big")
                # PG's ProcessStartupPacket: the limit applies to the length minus its own 4.
                if length < 8 or length - 4 > MAX_STARTUP_PACKET:
                    raise ProtocolViolation("invalid length of startup packet")
                if end - pos < length:
                    break
                out.append((0, bytes(buf[pos : pos + length])))
                pos += length
                # One start-up packet at a time: the caller decides what mode comes next.
                break
            if end - pos < 5:
                break
            tag = buf[pos]
            length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            self.check(tag, length)
            if end - pos < length + 1:
                break
            out.append((tag, bytes(buf[pos : pos + 1 + length])))
            pos += 1 + length
        if pos:
            del buf[:pos]
        return out

    def _feed_fresh(self, data: bytes) -> list[tuple[int, bytes]]:
        """`feed` when nothing is buffered (the usual case): slice `data` directly."""
        out: list[tuple[int, bytes]] = []
        pos = 0
        n = len(data)
        check = self.check
        while n - pos >= 5:
            tag = data[pos]
            length = int.from_bytes(data[pos + 1 : pos + 5], "big")
            check(tag, length)
            end = pos + 1 + length
            if end > n:
                break
            out.append((tag, data[pos:end]))
            pos = end
        if pos < n:
            self._buf += data[pos:]
        return out

    def keep(self, data: bytes) -> None:
        """Buffer the start of a message whose header was already checked (by `check`)."""
        self._buf += data

    def pending(self) -> bytes:
        """Bytes received but not yet returned as a message."""
        return bytes(self._buf)

    @property
    def buffered(self) -> int:
        """How many bytes wait for the rest of their message."""
        return len(self._buf)

    def check(self, tag: int, length: int) -> None:
        """Raise if a message with this header may not be accepted."""
        if tag not in FRONTEND_TAGS:
            raise ProtocolViolation(f"invalid frontend message type {tag}")
        if length < 4:
            raise ProtocolViolation(f"invalid message length {length}")
        limit = _SMALL_MESSAGE_LIMIT if tag in _SMALL_MESSAGES else self.max_message_bytes
        if length > limit:
            raise MessageTooLarge(
                f"message of type {chr(tag)!r} is {length} bytes, over the limit of {limit}"
            )


class BackendScanner:
    """Finds message boundaries in the upstream's byte stream without buffering results."""

    __slots__ = ("_partial", "_skip", "decode")

    def __init__(self, decode: Iterable[int]) -> None:
        self.decode = frozenset(decode)
        self._partial = bytearray()  # an incomplete header, or an incomplete decoded message
        self._skip = 0  # bytes of a skipped message still to come

    def at_boundary(self) -> bool:
        """True when everything fed so far ended exactly at a message boundary."""
        return not self._skip and not self._partial

    def feed(self, data: bytes) -> list[tuple[int, bytes, int]]:
        """Scan one chunk; return the decoded messages in it as ``(tag, payload, end)``.

        `end` is the offset in `data` just past the message (its start is ``end - 5 -
        len(payload)``, negative when the message began in an earlier chunk).
        """
        out: list[tuple[int, bytes, int]] = []
        n = len(data)
        pos = 0
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                return out
            pos, self._skip = self._skip, 0
        if self._partial:
            pos = self._complete_partial(data, pos, out)
            if pos < 0:
                return out
        decode = self.decode
        while pos < n:
            if n - pos < 5:
                self._partial += data[pos:]
                break
            tag = data[pos]
            length = int.from_bytes(data[pos + 1 : pos + 5], "big")
            if length < 4:
                raise ProtocolViolation(f"invalid backend message length {length}")
            end = pos + 1 + length
            if tag in decode:
                if end > n:
                    self._partial += data[pos:]
                    break
                out.append((tag, data[pos + 5 : end], end))
            elif end > n:
                self._skip = end - n
                break
            pos = end
        return out

    def _complete_partial(
        self, data: bytes, pos: int, out: list[tuple[int, bytes, int]]
    ) -> int:
        """Finish the message begun in `_partial`; return the new position or -1 if short."""
        partial = self._partial
        if len(partial) < 5:
            need = 5 - len(partial)
            partial += data[pos : pos + need]
            pos += need
            if len(partial) < 5:
                return -1
        tag = partial[0]
        length = int.from_bytes(partial[1:5], "big")
        if length < 4:
            raise ProtocolViolation(f"invalid backend message length {length}")
        if tag not in self.decode:
            # Only the header was split; skip the body as usual.
            partial.clear()
            remaining = length - 4
            if pos + remaining > len(data):
                self._skip = pos + remaining - len(data)
                return -1
            return pos + remaining
        need = 1 + length - len(partial)
        partial += data[pos : pos + need]
        if len(partial) < 1 + length:
            return -1
        out.append((tag, bytes(partial[5:]), pos + need))
        partial.clear()
        return pos + need
