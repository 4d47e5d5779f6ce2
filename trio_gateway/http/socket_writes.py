"""hypercorn's trio write path with a non-blocking first try.

For every write, hypercorn's `TCPServer.protocol_send` takes a `trio.Lock`, opens a shielded
`CancelScope` and goes through `SocketStream.send_all` (a context manager, a conflict detector
and a checkpoint). A token stream is nothing but small writes, so that per-write Python cost,
more than the `send` system call itself, dominates the gateway's CPU (the profile and what the
fast path saved are in the README). When no write is in progress, the kernel's send buffer
almost always has room for one SSE event, so `fast_protocol_send` writes it with one
non-blocking `os.write` and returns (on plain TCP: a TLS stream always takes hypercorn's
path, which encrypts). Only what the kernel does not take (a client reading
slowly) goes through hypercorn's own path, which waits for the socket under its lock and
shield; a write in progress keeps the lock, so the order of bytes never changes.

Before that, each body write goes through h11's `Connection.send`, a state machine and a
writer run on every event for what is, in the middle of a chunked body, only
`size CRLF data CRLF`: `fast_stream_send` frames such a chunk itself (what h11's chunked
writer writes, byte for byte) and leaves every other event, and every other framing, to
hypercorn and h11.

This replaces two methods of a pinned hypercorn, and only of the versions of hypercorn and
h11 it was written against (`install` checks): anything else keeps hypercorn's own methods.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from importlib.metadata import version

import h11
import trio
from h11._writers import ChunkedWriter
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Body
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger("trio_gateway.http")

WRITTEN_FOR = "0.18.0"  # the hypercorn whose TCPServer and H11Protocol internals this uses
H11_WRITTEN_FOR = "0.16.0"  # the h11 whose Connection internals (`_writer`) it reads

_hypercorn_protocol_send: Callable[[TCPServer, Event], Awaitable[None]] = TCPServer.protocol_send
_hypercorn_stream_send: Callable[[H11Protocol, StreamEvent], Awaitable[None]] = (
    H11Protocol.stream_send
)


async def fast_stream_send(self: H11Protocol, event: StreamEvent) -> None:
    connection = self.connection
    if (
        type(event) is Body
        and type(connection) is h11.Connection  # not a WebSocket's pass-through
        and type(connection._writer) is ChunkedWriter
        and connection.our_state is h11.SEND_BODY
    ):
        data = event.data
        if data:  # h11 writes nothing for an empty chunk (it would end the body)
            await self.send(RawData(data=b"%x\r\n%b\r\n" % (len(data), data)))
        return
    await _hypercorn_stream_send(self, event)


async def fast_protocol_send(self: TCPServer, event: Event) -> None:
    if type(event) is RawData and not self.send_lock.locked():
        # Plain TCP only: a TLS connection's stream is a `trio.SSLStream`, whose bytes must
        # be encrypted by it, so they take hypercorn's path (`tests/system/test_tls.py`).
        stream: object = self.stream
        if type(stream) is trio.SocketStream:
            sock = stream.socket
            data = event.data
            try:
                written = os.write(sock.fileno(), data)
            except BlockingIOError:
                written = 0
            except OSError:  # reset, broken pipe, or already closed (fileno -1)
                await self.protocol.handle(Closed())
                return
            if written == len(data):
                return
            if written:
                # Part of the event is on the wire: the rest must follow even if this task
                # is being cancelled (hypercorn's lock checks for cancellation before its
                # own shield), or the peer would get a truncated frame.
                with trio.CancelScope(shield=True):
                    await _hypercorn_protocol_send(self, RawData(data=data[written:]))
                return
    await _hypercorn_protocol_send(self, event)


def install() -> bool:
    """Put the fast path in place (idempotent); False, and hypercorn's own path, when the
    installed hypercorn is not the version it was written for."""
    if TCPServer.protocol_send is fast_protocol_send:
        return True
    installed = (version("hypercorn"), version("h11"))
    if installed != (WRITTEN_FOR, H11_WRITTEN_FOR):
        log.warning(
            "hypercorn %s with h11 %s is not %s with %s: keeping its own write path "
            "(slower per token)",
            *installed,
            WRITTEN_FOR,
            H11_WRITTEN_FOR,
        )
        return False
    TCPServer.protocol_send = fast_protocol_send  # type: ignore[method-assign]
    H11Protocol.stream_send = fast_stream_send  # type: ignore[method-assign]
    return True
