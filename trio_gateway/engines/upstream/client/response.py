"""A response whose head was read: its framing chosen by h11's rules, its body read.

A body read is one socket read and one pass of the framing's decoder: no generator, no
state machine per read (the relay reads one SSE event per socket read).
"""

from __future__ import annotations

import h11
import trio

from trio_gateway.engines.upstream.client.connection import Connection
from trio_gateway.engines.upstream.client.errors import UpstreamDisconnected, innermost_reason
from trio_gateway.engines.upstream.client.framing import (
    BodyFraming,
    ChunkedBody,
    CloseBody,
    LengthBody,
)


class UpstreamResponse:
    """A response whose head was read; the body is read with `receive_some` or `read`."""

    __slots__ = (
        "_body",
        "_buffered",
        "_conn",
        "_keep_alive",
        "_leftover",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        conn: Connection,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        body: BodyFraming,
        keep_alive: bool,
        leftover: bytes,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers  # names lowercased, in the order received
        self._conn = conn
        self._body = body
        self._buffered = b""  # body bytes decoded but not yet returned
        self._leftover = leftover  # bytes read with the head, not yet decoded
        self._keep_alive = keep_alive

    @classmethod
    def from_head(
        cls,
        conn: Connection,
        event: h11.Response,
        leftover: bytes,
        head_only: bool,
        keep_alive: bool,
    ) -> UpstreamResponse:
        """The response `event` opens: reuse is decided with h11's own rules (HTTP/1.1,
        no `Connection: close` on either side, a body whose end is known)."""
        headers: list[tuple[bytes, bytes]] = list(event.headers)
        chunked = False
        length: int | None = None
        for name, value in headers:
            if name == b"transfer-encoding":  # h11 allows only `chunked`
                chunked = True
            elif name == b"content-length":  # h11 checked the digits and duplicates
                length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                keep_alive = False
        if event.http_version < b"1.1":
            keep_alive = False
        body: BodyFraming
        if head_only or event.status_code in (204, 304):
            body = LengthBody(0)
        elif chunked:
            body = ChunkedBody()
        elif length is not None:
            body = LengthBody(length)
        else:
            body = CloseBody()
            keep_alive = False
        if body.done and leftover:  # no body expected, yet bytes came after the head
            keep_alive, leftover = False, b""
        return cls(
            conn, event.status_code, bytes(event.reason), headers, body, keep_alive, leftover
        )

    def __repr__(self) -> str:
        return f"UpstreamResponse({self.status}, complete={self.complete})"

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (names are case-insensitive), None if absent."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def connection(self) -> Connection:
        return self._conn

    @property
    def complete(self) -> bool:
        """The body was read to its end (then the connection can serve another request)."""
        return self._body.done and not self._buffered and not self._leftover

    def reusable(self) -> bool:
        """Read to the end with nothing after it, and both sides meant to keep it open."""
        return self._keep_alive and self.complete and not self._body.extra

    async def receive_some(self) -> bytes:
        """The body bytes of one socket read (never empty), or b"" once the body ended.

        One await per socket read: a read holding only framing (a chunk terminator) is
        followed by the next read within the call.
        """
        body = self._body
        if self._buffered or self._leftover or body.done:
            return await self._receive_held()
        conn = self._conn
        while True:
            try:
                received = await conn.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                raise UpstreamDisconnected(
                    f"the connection to the upstream failed mid-body ({innermost_reason(error)})"
                ) from error
            if not received:
                body.eof()
                return b""
            data = body.feed(received)
            if data or body.done:
                return data

    async def _receive_held(self) -> bytes:
        """What came with the head or past a `read` limit, before any socket read."""
        await trio.lowlevel.checkpoint()
        if self._buffered:
            data, self._buffered = self._buffered, b""
            return data
        if self._leftover:  # decoded here, so its errors are the body's, like any read's
            leftover, self._leftover = self._leftover, b""
            data = self._body.feed(leftover)
            if not data and not self._body.done:
                return await self.receive_some()
            return data
        return b""

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body (an error page, a unary JSON answer).

        Bytes past `limit` are kept for the next read, not lost.
        """
        data = bytearray()
        while len(data) < limit:
            chunk = await self.receive_some()
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            self._buffered = bytes(data[limit:])
            del data[limit:]
        return bytes(data)
