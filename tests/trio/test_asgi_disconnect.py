"""The HTTP side of a flight's client-gone signal: ASGI `receive()` read until a disconnect."""

from __future__ import annotations

import trio
import trio.testing

from trio_gateway.http.asgi import Message
from trio_gateway.http.disconnect import AsgiClientGone
from trio_gateway.lifecycle.flight import ClientGoneSignal


async def test_wait_returns_on_disconnect_only(autojump_clock: trio.testing.MockClock) -> None:
    send, inbox = trio.open_memory_channel[Message](4)

    async def receive() -> Message:
        return await inbox.receive()

    signal: ClientGoneSignal = AsgiClientGone(receive)
    await send.send({"type": "http.request", "body": b"", "more_body": False})
    with trio.move_on_after(10) as waited:
        await signal.wait()
    assert waited.cancelled_caught  # a request message is not the client leaving
    await send.send({"type": "http.request", "body": b"", "more_body": False})
    await send.send({"type": "http.disconnect"})
    with trio.fail_after(1):
        await signal.wait()
    assert trio.current_time() == 10  # at once, not after a timer
