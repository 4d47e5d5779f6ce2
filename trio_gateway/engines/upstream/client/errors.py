"""What can go wrong in an exchange with the upstream, as the client reports it.

The client says only what failed on the wire; the engine turns these into the errors a
client of the gateway sees (`engines/upstream/errors.py`), where retrying and the
breaker are decided.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """Any failure of the upstream exchange; the gateway classifies the subclasses."""


class UpstreamConnectError(UpstreamError):
    """No connection: DNS, refused, connect timeout, TLS handshake. The request was not sent."""


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something that is not HTTP/1.1 we can read."""


class UpstreamDisconnected(UpstreamError):
    """The connection closed or reset mid-response, or before any response on a new one."""


class StaleConnection(Exception):
    """Closed or reset before any byte of a response: if reused, the server closed it idle.

    Never leaves the client: the pool sends the request again, or raises
    `UpstreamDisconnected`.
    """


def innermost_reason(error: BaseException) -> str:
    """The innermost cause's message: trio wraps the OSError or SSLError that says what failed."""
    while True:
        if isinstance(error, BaseExceptionGroup) and error.exceptions:
            error = error.exceptions[0]
        elif error.__cause__ is not None:
            error = error.__cause__
        else:
            return str(error) or type(error).__name__
