"""The upstream's HTTP/1.1 client, by concept: `pool` (requests, idle connections, reuse),
`connection` (a socket: request sent, head read), `response` (a body read),
`framing` (sans-IO body framing: length, chunked, until close) and `errors`.

Its users need only what is named here: `UpstreamPool.stream(...)` gives an
`UpstreamResponse`, and failures are `UpstreamError`s.
"""

from trio_gateway.engines.upstream.client.errors import (
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
)
from trio_gateway.engines.upstream.client.pool import KEEPALIVE_EXPIRY, StreamContext, UpstreamPool
from trio_gateway.engines.upstream.client.response import UpstreamResponse

__all__ = [
    "KEEPALIVE_EXPIRY",
    "StreamContext",
    "UpstreamConnectError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
]
