"""Response tracker: which request each backend message answers, and what the session holds.

Theory of operation.  Every client request that Postgres answers pushes one `Pending` entry
(in the order it was sent); backend messages pop them as the protocol says they are answered
(PGdocs "Message Flow").  From this the session knows at any moment what is in flight, which
Execute a DataRow belongs to, which prepared statements and portals exist upstream (updated
only when Postgres confirms them, so pipeline order is respected — PITFALLS B11), and the
transaction status of the last ReadyForQuery.

Rules the tracker encodes (each has a conversation test):

* Simple Query: one entry, answered by everything up to its ReadyForQuery.
* Extended: Parse→ParseComplete, Bind→BindComplete, Describe→(ParameterDescription)
  RowDescription|NoData, Execute→CommandComplete|EmptyQueryResponse|PortalSuspended,
  Close→CloseComplete, Sync→ReadyForQuery; Flush gets no answer.
* An ErrorResponse during extended-protocol messages makes Postgres discard every message up
  to the next Sync ("skip till Sync"), including a simple Query: those entries are dropped,
  and entries pushed while skipping are not recorded at all.
* COPY FROM STDIN: after CopyInResponse, the backend ignores Flush and Sync until CopyDone or
  CopyFail (PGdocs "COPY Operations"), so Syncs sent in that window get no ReadyForQuery.
* The unnamed statement is replaced by the next Parse of it (even one that fails) and
  destroyed by a simple Query; a Query that runs a statement replaces the unnamed portal.
  DEALLOCATE ALL drops statements only; DISCARD ALL drops statements and portals.

It knows no sockets, no cache and nothing about SQL beyond command tags.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum, auto

from proxy import codec
from proxy.codec import BackendTag, FrontendTag, TxnStatus


class Request(Enum):
    """What a pending entry is waiting to be answered for."""

    QUERY = auto()
    FUNCTION_CALL = auto()
    PARSE = auto()
    BIND = auto()
    DESCRIBE = auto()
    EXECUTE = auto()
    CLOSE = auto()
    SYNC = auto()
    COPY_END = auto()  # the client's CopyDone/CopyFail: answered by nothing, only a marker


@dataclass(slots=True)
class Pending:
    """One request awaiting its response.  `name`/`sql` are set where they apply."""

    request: Request
    name: str = ""
    sql: str = ""
    kind: str = ""  # 'S' or 'P' for Describe and Close
    param_oids: tuple[int, ...] = ()
    statement: str = ""  # for Bind: the statement the portal is built from
    # Set by the cache layer (opaque here): answer not relayed, result capture, what the
    # statement is and the parameters it was bound with.
    hidden: bool = False
    capture: object = None
    analysis: object = None
    params: tuple[str | None, ...] = ()


_READY_FOR_QUERY = int(BackendTag.READY_FOR_QUERY)
_ERROR_RESPONSE = int(BackendTag.ERROR_RESPONSE)
_COMMAND_COMPLETE = int(BackendTag.COMMAND_COMPLETE)
_COPY_IN_RESPONSE = int(BackendTag.COPY_IN_RESPONSE)
_COMPLETES_HEAD = frozenset(
    int(t)
    for t in (
        BackendTag.PARSE_COMPLETE,
        BackendTag.BIND_COMPLETE,
        BackendTag.CLOSE_COMPLETE,
        BackendTag.ROW_DESCRIPTION,
        BackendTag.NO_DATA,
    )
)
_ENDS_EXECUTE = frozenset(
    int(t)
    for t in (
        BackendTag.COMMAND_COMPLETE,
        BackendTag.EMPTY_QUERY_RESPONSE,
        BackendTag.PORTAL_SUSPENDED,
    )
)
# Module-level aliases: on Python 3.11 an enum member lookup (`Request.SYNC`) costs ~90 ns,
# a module global ~8 ns, and the relay does several per message.
_QUERY = Request.QUERY
_FUNCTION_CALL = Request.FUNCTION_CALL
_PARSE = Request.PARSE
_BIND = Request.BIND
_DESCRIBE = Request.DESCRIBE
_EXECUTE = Request.EXECUTE
_CLOSE = Request.CLOSE
_SYNC = Request.SYNC
_COPY_END = Request.COPY_END
_IDLE = TxnStatus.IDLE
_SIMPLE = (_QUERY, _FUNCTION_CALL)
_STATUS = {int(s): s for s in TxnStatus}


def pending_for(tag: int, payload: bytes) -> Pending | None:
    """The entry for one frontend message forwarded upstream (None: it gets no answer).

    Hot path: plain int dispatch, most frequent first, and no decoding for the unnamed
    portal's Execute and Describe (the common extended-protocol case).
    """
    if tag == _F_BIND:
        portal, statement = codec.decode_bind_names(payload)
        return Pending(_BIND, portal, "", "", (), statement)
    if tag == _F_EXECUTE:
        if payload[0] == 0 and len(payload) == 5:
            return Pending(_EXECUTE)
        return Pending(_EXECUTE, codec.decode_execute(payload).portal)
    if tag == _F_SYNC:
        return SYNC_ENTRY  # never changed by anyone: one shared entry
    if tag == _F_DESCRIBE:
        if payload == b"P\x00":
            return Pending(_DESCRIBE, "", "", "P")
        d = codec.decode_describe(payload)
        return Pending(_DESCRIBE, d.name, "", d.kind)
    if tag == _F_QUERY:
        return Pending(_QUERY, "", codec.decode_query(payload))
    if tag == _F_PARSE:
        p = codec.decode_parse(payload)
        return Pending(_PARSE, p.statement, p.query, "", p.param_oids)
    if tag == _F_CLOSE:
        c = codec.decode_close(payload)
        return Pending(_CLOSE, c.name, "", c.kind)
    if tag == _F_FUNCTION_CALL:
        return Pending(_FUNCTION_CALL)
    if tag in (_F_COPY_DONE, _F_COPY_FAIL):
        return Pending(_COPY_END)
    return None  # Flush, CopyData, PasswordMessage


SYNC_ENTRY = Pending(_SYNC)
_F_BIND = int(FrontendTag.BIND)
_F_EXECUTE = int(FrontendTag.EXECUTE)
_F_SYNC = int(FrontendTag.SYNC)
_F_DESCRIBE = int(FrontendTag.DESCRIBE)
_F_QUERY = int(FrontendTag.QUERY)
_F_PARSE = int(FrontendTag.PARSE)
_F_CLOSE = int(FrontendTag.CLOSE)
_F_FUNCTION_CALL = int(FrontendTag.FUNCTION_CALL)
_F_COPY_DONE = int(FrontendTag.COPY_DONE)
_F_COPY_FAIL = int(FrontendTag.COPY_FAIL)


@dataclass(frozen=True, slots=True)
class PreparedStatement:
    """A statement Postgres has confirmed with ParseComplete."""

    sql: str
    param_oids: tuple[int, ...]


@dataclass(slots=True)
class Tracker:
    """Pending requests plus the statements and portals that exist upstream."""

    pending: deque[Pending] = field(default_factory=deque)
    statements: dict[str, PreparedStatement] = field(default_factory=dict)
    portals: dict[str, str] = field(default_factory=dict)  # portal → statement name
    status: TxnStatus = _IDLE
    skipping: bool = False  # Postgres is discarding messages until Sync
    copy_in: bool = False  # the backend is in copy-in mode
    status_known: bool = False  # a ReadyForQuery has been seen (start-up is over)

    # --- client side ---------------------------------------------------------------

    def push(self, entry: Pending) -> None:
        """Record a request forwarded to Postgres, in send order."""
        request = entry.request
        if request is _COPY_END:
            if self.copy_in:
                self.copy_in = False
            elif not self.skipping and self.pending:
                self.pending.append(entry)  # the COPY's CopyInResponse may still be coming
            return
        if request is _SYNC:
            if self.copy_in:
                return  # ignored by the backend in copy-in mode
            self.skipping = False
        elif self.skipping:
            return  # Postgres will discard it without a word
        self.pending.append(entry)

    def idle(self) -> bool:
        """Nothing is in flight: every request has been answered."""
        if self.copy_in:
            return False
        return all(entry.request is _COPY_END for entry in self.pending)

    # --- backend side --------------------------------------------------------------

    def on_backend(self, tag: int, payload: bytes) -> Pending | None:
        """Account for one backend message; return the entry it completed, if any.

        Hot path (every decoded backend message): dispatch on plain ints, no enum calls.
        """
        pending = self.pending
        if pending and pending[0].request is _COPY_END:
            while pending and pending[0].request is _COPY_END:
                pending.popleft()  # a copy that ended before its marker was reached
        head = pending[0] if pending else None
        if tag == _READY_FOR_QUERY:
            return self._ready(payload)
        if tag in _COMPLETES_HEAD:  # ParseComplete, BindComplete, CloseComplete, T, n
            if head is None or head.request in _SIMPLE:
                return None
            pending.popleft()
            if head.request is not _DESCRIBE:
                self._confirm(head)
            return head
        if tag in _ENDS_EXECUTE:  # CommandComplete, EmptyQueryResponse, PortalSuspended
            if tag == _COMMAND_COMPLETE and payload[:1] == b"D":
                self._command_tag(payload)
            if head is None:
                return None
            if head.request is _EXECUTE:
                return pending.popleft()
            if head.request is _QUERY and tag == _COMMAND_COMPLETE:
                self.portals.pop("", None)  # each statement ran in a new unnamed portal
            return None
        if tag == _ERROR_RESPONSE:
            return self._error(head)
        if tag == _COPY_IN_RESPONSE:
            self._enter_copy_in()
        return None

    def _confirm(self, entry: Pending) -> None:
        request = entry.request
        if request is _BIND:
            self.portals[entry.name] = entry.statement
        elif request is _PARSE:
            self.statements[entry.name] = PreparedStatement(entry.sql, entry.param_oids)
        elif request is _CLOSE:
            if entry.kind == "S":
                self.statements.pop(entry.name, None)
            else:
                self.portals.pop(entry.name, None)

    def _ready(self, payload: bytes) -> Pending | None:
        self.status = _STATUS.get(payload[0], _IDLE) if payload else _IDLE
        self.status_known = True
        self.copy_in = False
        self.skipping = False
        if self.status is _IDLE and self.portals:
            self.portals.clear()  # portals live until the end of their transaction
        pending = self.pending
        while pending:
            entry = pending.popleft()
            if entry.request is _QUERY:
                self.statements.pop("", None)  # a simple Query destroys the unnamed statement
            if entry.request in (_SYNC, _QUERY, _FUNCTION_CALL):
                return entry
            # Anything still ahead of the Sync went unanswered: drop it (desync guard).
        return None

    def _error(self, head: Pending | None) -> Pending | None:
        self.copy_in = False
        if head is None or head.request in (_QUERY, _FUNCTION_CALL):
            return None  # the simple Query still ends with its ReadyForQuery
        if head.request is _SYNC:
            return None  # e.g. a deferred constraint failing at the implicit COMMIT
        # Skip till Sync: every entry before the next Sync gets no response.
        pending = self.pending
        failed = pending.popleft()
        if failed.request is _PARSE and not failed.name:
            self.statements.pop("", None)  # PG dropped the old one before parsing the new
        while pending and pending[0].request is not _SYNC:
            pending.popleft()
        if not pending:
            self.skipping = True
        return failed

    def _enter_copy_in(self) -> None:
        self.copy_in = True
        # Syncs (and Flushes, never recorded) the client sent after the COPY's Execute and
        # before its CopyDone/CopyFail reach the backend in copy-in mode and are ignored.
        kept: deque[Pending] = deque()
        pending = self.pending
        if pending:
            kept.append(pending.popleft())
        while pending:
            entry = pending.popleft()
            if entry.request is _COPY_END:
                self.copy_in = False
                kept.extend(pending)
                pending.clear()
                break
            if entry.request is not _SYNC:
                kept.append(entry)
        self.pending = kept

    def _command_tag(self, payload: bytes) -> None:
        # DEALLOCATE ALL and DISCARD ALL drop every prepared statement (PITFALLS B11: keyed
        # on the CommandComplete tag, so a Parse pipelined after them survives).  Portals
        # outlive DEALLOCATE ALL; DISCARD ALL closes them too.
        if payload.startswith(b"DEALLOCATE ALL"):
            self.statements.clear()
        elif payload.startswith(b"DISCARD ALL"):
            self.statements.clear()
            self.portals.clear()
