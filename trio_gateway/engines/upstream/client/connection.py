"""One connection to the upstream: the request sent, the response head read, body reads.

A fresh `h11.Connection` serves each request: it writes the request and parses the response
head, and stops there (the body is framed by `framing.py`, so h11 never reaches DONE to
start a second cycle). Whether the connection serves another request is the pool's call.
"""

from __future__ import annotations

import os
import select

import h11
import trio

from trio_gateway.engines.upstream.client.errors import (
    StaleConnection,
    UpstreamDisconnected,
    UpstreamProtocolError,
    innermost_reason,
)

READ_SIZE = 64 * 1024

_HAS_POLL = hasattr(select, "poll")


class Connection:
    """A socket to the upstream, plain or TLS, with what the pool knows about it."""

    __slots__ = ("expires", "plain", "reused", "socket", "stream")

    def __init__(self, stream: trio.abc.Stream, socket: trio.socket.SocketType) -> None:
        self.stream = stream
        self.socket = socket
        self.plain = not isinstance(stream, trio.SSLStream)
        self.expires = 0.0
        self.reused = False

    async def receive_some(self) -> bytes:
        """One read. On plain TCP it waits first, then reads: a stream's next event is
        never there yet when the last one was just read, so trio's own try-then-wait
        would make a failed `recv` per read (and its exception)."""
        if not self.plain:
            return bytes(await self.stream.receive_some(READ_SIZE))
        fd = self.socket.fileno()
        while True:
            await trio.lowlevel.wait_readable(self.socket)
            try:
                return os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as error:
                raise trio.BrokenResourceError(str(error)) from error

    def close(self) -> None:
        """Close the socket now, no await: safe when cancelled, in `__aexit__`, anywhere.

        The same as `trio.aclose_forcefully` on these streams (the TLS stream is
        https-compatible: no close_notify), without its checkpoint.
        """
        self.socket.close()

    def looks_closed(self) -> bool:
        """Readable while idle: the server closed it (or sent junk). One poll, no await."""
        fd = self.socket.fileno()
        if fd < 0:
            return True
        if not _HAS_POLL:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    async def exchange(
        self, request: bytes, parser: h11.Connection, origin: str
    ) -> tuple[h11.Response, bytes]:
        """Send `request` (written by `parser`) and read the response head with `parser`:
        the head and the bytes read past it (the body's first bytes).

        Raises `StaleConnection` when the connection failed before any byte of a response
        (the server never handled the request), so the pool may send it again.
        """
        stream = self.stream
        try:
            await stream.send_all(request)
        except trio.BrokenResourceError as error:
            raise StaleConnection(innermost_reason(error)) from error
        received = False
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as error:
                raise UpstreamProtocolError(f"malformed response from {origin}: {error}") from error
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(READ_SIZE)
                except trio.BrokenResourceError as error:
                    if not received:
                        raise StaleConnection(innermost_reason(error)) from error
                    raise UpstreamDisconnected(
                        f"the connection to {origin} failed mid-head ({innermost_reason(error)})"
                    ) from error
                if not data:
                    if not received:
                        raise StaleConnection("EOF")
                    raise UpstreamDisconnected(f"{origin} closed the connection mid-head")
                received = True
                parser.receive_data(bytes(data) if isinstance(data, bytearray) else data)
            elif isinstance(event, h11.Response):
                return event, parser.trailing_data[0]
            elif not isinstance(event, h11.InformationalResponse):
                raise UpstreamProtocolError(f"unexpected {type(event).__name__} from {origin}")
