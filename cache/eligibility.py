"""Whether a session's read may use the cache now: every bypass reason its state decides.

Pure module, beside the planner: the planner decides from the *statement* (and the catalog
and configuration) whether a read may be cached; this module decides from the *session*
whether it may be looked up or filled at this moment.  It knows nothing of sockets or of
the proxy: the session describes itself in a `SessionFacts` value (built by
`proxy.caching.SessionCache`) and `bypass` answers None or the first reason, in the order
below, which is also the order of precedence of the reasons counted in
``pgreactive_cache_queries_total{outcome="bypass"}``:

1. `Bypass.IN_TRANSACTION`: the last ReadyForQuery was not ``I`` (DESIGN.md: reads inside
   a transaction go to Postgres; a fill from one could not be checked against writes).
2. `Bypass.REQUEST_SHAPE`: something else is in flight or being discarded: requests awaiting
   their replies, an error being skipped until Sync, a miss being captured, an Execute of
   this segment already sent, or a commit's invalidation running (replies wait behind it).
   An answer from the cache must be every byte the client gets next.
3. `Bypass.SESSION_STATE_UNKNOWN`: a setting may have changed out of the proxy's sight
   (``DO``, functions, per-role defaults at start), or is being read back (invariant 3).
4. `Bypass.SESSION_STATE`: the session has temporary relations, or a client_encoding other
   than UTF8 (entries hold UTF8 bytes).

An unavailable cache backend is not a reason here: the lookup itself answers at once while
the breaker is open, and is what probes (and heals) Redis once it has cooled.
"""

from __future__ import annotations

from dataclasses import dataclass

from analyzer import Analysis, Kind
from cache.planner import Bypass

CACHED_ENCODING = "UTF8"


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What a session knows of itself when a read arrives."""

    in_transaction: bool = False  # the last ReadyForQuery's status was not I
    awaiting_replies: bool = False  # requests sent upstream are not answered yet
    skipping: bool = False  # after an error, messages are discarded until Sync
    capturing: bool = False  # a miss is being copied for a fill
    executed: bool = False  # an Execute of this extended segment went upstream
    invalidating: bool = False  # a commit's invalidation runs; replies wait behind it
    state_unknown: bool = False  # settings may have changed out of sight
    rereading: bool = False  # the proxy is reading the session's settings back
    temporary: bool = False  # the session has temporary relations
    client_encoding: str = CACHED_ENCODING
    replication_behind: bool = False  # the replication stream may be behind its fence


def bypass(facts: SessionFacts) -> Bypass | None:
    """None if a read may use the cache now, else why not (see the module docstring)."""
    if facts.in_transaction:
        return Bypass.IN_TRANSACTION
    if (
        facts.awaiting_replies
        or facts.skipping
        or facts.capturing
        or facts.executed
        or facts.invalidating
    ):
        return Bypass.REQUEST_SHAPE
    if facts.state_unknown or facts.rereading:
        return Bypass.SESSION_STATE_UNKNOWN
    if facts.temporary or facts.client_encoding != CACHED_ENCODING:
        return Bypass.SESSION_STATE
    if facts.replication_behind:
        return Bypass.REPLICATION_BEHIND
    return None


def relayed_read_reason(analysis: Analysis, facts: SessionFacts) -> str | None:
    """Why an extended-protocol statement was relayed without being considered for the
    cache (part of a pipeline with other requests, in a transaction, ...): the session's
    reason, else the statement's own when it is not cacheable, else the request's shape.
    None for anything but a read (only reads are counted)."""
    if analysis.kind is not Kind.SELECT:
        return None
    reason = bypass(facts) or Bypass.REQUEST_SHAPE
    if reason is Bypass.REQUEST_SHAPE and not analysis.cacheable:
        return str(analysis.reason)
    return reason
