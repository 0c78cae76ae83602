"""Errors the proxy itself raises, each carrying the SQLSTATE and severity it is sent as.

Pure code raises these; the session shell catches them in one place and renders them with
`as_error_response()`.  An ErrorResponse that comes from Postgres is never an exception:
it is data, forwarded unchanged.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base of every error the proxy turns into an ErrorResponse."""

    sqlstate = "XX000"
    severity = "FATAL"

    def as_error_response(self) -> bytes:
        from proxy import codec  # codec raises these errors: import it only when rendering

        return codec.error_response(self.severity, self.sqlstate, str(self))


class ProtocolViolation(ProxyError):
    """Malformed or out-of-place client bytes: the session ends."""

    sqlstate = "08P01"


class UnsupportedProtocol(ProtocolViolation):
    """A protocol major version other than 3 (Postgres says feature_not_supported)."""

    sqlstate = "0A000"


class MessageTooLarge(ProtocolViolation):
    """A client message longer than the configured maximum."""


class TLSRequired(ProxyError):
    """A plaintext client while `tls.required` is set (as pg_hba's hostssl refuses it)."""

    sqlstate = "28000"


class ChannelBindingUnavailable(ProxyError):
    """A SCRAM login Postgres would refuse: the client can bind to its TLS channel, but the
    proxy hid SCRAM-SHA-256-PLUS, which Postgres offered on its own TLS connection."""

    sqlstate = "28000"


class UpstreamUnavailable(ProxyError):
    """The proxy could not reach, or lost, its upstream Postgres."""

    sqlstate = "08006"


class InternalError(ProxyError):
    """A bug in the proxy: the session ends, every other session carries on."""

    sqlstate = "XX000"


class StartupTimeout(ProxyError):
    """Start-up and authentication took longer than `limits.startup_timeout`.

    Postgres's authentication_timeout raises this FATAL with query_canceled (57014) and
    only logs it; the proxy also tells the client, so it does not just see the socket close.
    """

    sqlstate = "57014"


class TooManyConnections(ProxyError):
    """`limits.max_client_connections` sessions are open already (Postgres's 53300)."""

    sqlstate = "53300"


class ShuttingDown(ProxyError):
    """The proxy is stopping (SIGTERM/SIGINT), as Postgres says on a fast shutdown."""

    sqlstate = "57P01"
