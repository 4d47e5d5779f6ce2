"""hypercorn's trio write path with a non-blocking first try.

For every write, hypercorn's `TCPServer.protocol_send` takes a `trio.Lock`, opens a shielded
`CancelScope` and goes through `SocketStream.send_all` (a context manager, a conflict
detector and a checkpoint). A token stream is nothing but small writes: profiled at c=64,
that path was over half of the gateway's CPU and its Python part cost more than the
`send` system call itself. When no write is in progress, the kernel's send buffer almost
always has room for one SSE event, so `fast_protocol_send` writes it with one non-blocking
`os.write` and returns. Only what the kernel does not take (a client reading slowly) goes
through hypercorn's own path, which waits for the socket under its lock and shield; a
write in progress keeps the lock, so the order of bytes never changes.

This replaces one method of a pinned hypercorn, and only of the version it was written
against (`install` checks): anything else keeps hypercorn's own method.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from importlib.metadata import version

import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger("trio_gateway.http")

WRITTEN_FOR = "0.18.0"  # the hypercorn whose TCPServer internals this relies on

_hypercorn_protocol_send: Callable[[TCPServer, Event], Awaitable[None]] = TCPServer.protocol_send


async def fast_protocol_send(self: TCPServer, event: Event) -> None:
    if type(event) is RawData and not self.send_lock.locked():
        sock = getattr(self.stream, "socket", None)  # None on TLS streams
        if sock is not None:
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
    installed = version("hypercorn")
    if installed != WRITTEN_FOR:
        log.warning(
            "hypercorn %s is not %s: keeping its own write path (slower per token)",
            installed,
            WRITTEN_FOR,
        )
        return False
    TCPServer.protocol_send = fast_protocol_send  # type: ignore[method-assign]
    return True
