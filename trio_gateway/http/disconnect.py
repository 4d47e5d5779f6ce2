"""A flight's client-gone signal, read from ASGI `receive()`.

The lifecycle waits on a `ClientGoneSignal` and knows nothing of ASGI; this is the one the
HTTP handler gives it.
"""

from __future__ import annotations

from trio_gateway.http.asgi import Receive


class AsgiClientGone:
    """`wait` returns once `receive()` says `http.disconnect`.

    hypercorn only reports a gone client to a task waiting on `receive()`
    (docs/architecture.md §7), so the flight awaits this for its whole life, a unary
    request's too: without it a client that leaves while its engine works is never
    noticed. The body was read whole before the flight, so any other message is nothing
    to act on. It needs no keep-alive
    workaround (`application._keep_alive_safe`): the final body frame goes out only after
    the flight, and this wait, ended.
    """

    __slots__ = ("_receive",)

    def __init__(self, receive: Receive) -> None:
        self._receive = receive

    async def wait(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
