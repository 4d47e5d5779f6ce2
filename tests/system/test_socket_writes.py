"""The non-blocking first try in front of hypercorn's write path (`http/socket_writes.py`).

Most tests drive `fast_protocol_send` on a real socketpair with hypercorn's own path
recorded; the last ones serve a real hypercorn on an ephemeral loopback port, one to a client
that stops reading, so the kernel buffer fills and the rest must go through hypercorn's path
intact (the version check of `install`: tests/unit/test_socket_writes_install.py).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

from trio_gateway.http import socket_writes


@dataclass
class RecordingProtocol:
    events: list[Event] = field(default_factory=list)

    async def handle(self, event: Event) -> None:
        self.events.append(event)


@dataclass
class FakeServer:
    """The three attributes of hypercorn's TCPServer that the fast path touches."""

    stream: Any
    protocol: RecordingProtocol = field(default_factory=RecordingProtocol)
    send_lock: trio.Lock = field(default_factory=trio.Lock)


@pytest.fixture
def slow_path(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Records what reaches hypercorn's own `protocol_send` instead of running it."""
    reached: list[Event] = []

    async def record(server: object, event: Event) -> None:
        reached.append(event)

    monkeypatch.setattr(socket_writes, "_hypercorn_protocol_send", record)
    return reached


@pytest.fixture
def pair() -> Iterator[tuple[trio.SocketStream, socket.socket]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    try:
        yield stream, peer
    finally:
        ours.close()
        peer.close()


async def test_a_write_the_kernel_takes_whole_never_reaches_hypercorn(
    pair: tuple[trio.SocketStream, socket.socket], slow_path: list[Event]
) -> None:
    stream, peer = pair
    server = FakeServer(stream)
    await socket_writes.fast_protocol_send(server, RawData(b"data: one\n\n"))  # type: ignore[arg-type]
    await socket_writes.fast_protocol_send(server, RawData(b"data: two\n\n"))  # type: ignore[arg-type]
    assert slow_path == []
    assert peer.recv(100) == b"data: one\n\ndata: two\n\n"


async def test_what_the_kernel_does_not_take_goes_through_hypercorn_in_order(
    pair: tuple[trio.SocketStream, socket.socket], slow_path: list[Event]
) -> None:
    stream, peer = pair
    data = bytes(range(256)) * 16384  # 4 MiB: more than a socket buffer holds
    await socket_writes.fast_protocol_send(FakeServer(stream), RawData(data))  # type: ignore[arg-type]
    [rest] = slow_path
    assert isinstance(rest, RawData)
    assert 0 < len(rest.data) < len(data)
    received = b""
    while len(received) < len(data) - len(rest.data):
        received += peer.recv(1 << 20)
    assert received + rest.data == data


async def test_the_rest_of_a_partial_write_follows_even_when_cancelled(
    pair: tuple[trio.SocketStream, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    reached: list[Event] = []

    async def checkpointing(server: object, event: Event) -> None:
        await trio.lowlevel.checkpoint()  # raises Cancelled unless shielded
        reached.append(event)

    monkeypatch.setattr(socket_writes, "_hypercorn_protocol_send", checkpointing)
    stream, _ = pair
    data = bytes(range(256)) * 16384
    with trio.CancelScope() as scope:
        scope.cancel()
        await socket_writes.fast_protocol_send(FakeServer(stream), RawData(data))  # type: ignore[arg-type]
    [rest] = reached
    assert isinstance(rest, RawData) and 0 < len(rest.data) < len(data)
    assert data.endswith(rest.data)


async def test_a_write_in_progress_keeps_the_order(
    pair: tuple[trio.SocketStream, socket.socket], slow_path: list[Event]
) -> None:
    stream, peer = pair
    server = FakeServer(stream)
    async with server.send_lock:  # hypercorn is still sending an earlier write
        await socket_writes.fast_protocol_send(server, RawData(b"later"))  # type: ignore[arg-type]
    assert slow_path == [RawData(b"later")]
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)


async def test_a_peer_that_is_gone_closes_the_connection(
    pair: tuple[trio.SocketStream, socket.socket], slow_path: list[Event]
) -> None:
    stream, peer = pair
    peer.close()
    server = FakeServer(stream)
    await socket_writes.fast_protocol_send(server, RawData(b"data: x\n\n"))  # type: ignore[arg-type]
    assert server.protocol.events == [Closed()]
    assert slow_path == []


async def test_a_closed_stream_closes_the_connection(
    pair: tuple[trio.SocketStream, socket.socket], slow_path: list[Event]
) -> None:
    stream, _ = pair
    await stream.aclose()  # fileno() is -1 from now on
    server = FakeServer(stream)
    await socket_writes.fast_protocol_send(server, RawData(b"data: x\n\n"))  # type: ignore[arg-type]
    assert server.protocol.events == [Closed()]


async def test_other_events_and_tls_streams_take_hypercorns_path(slow_path: list[Event]) -> None:
    class TLSLike:  # an SSLStream has no `socket`
        pass

    server = FakeServer(TLSLike())
    await socket_writes.fast_protocol_send(server, RawData(b"x"))  # type: ignore[arg-type]
    await socket_writes.fast_protocol_send(server, Closed())  # type: ignore[arg-type]
    assert slow_path == [RawData(b"x"), Closed()]


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[int]:
    """`app` on a real hypercorn on an ephemeral loopback port; yields the port."""
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        try:
            yield int(binds[0].rsplit(":", 1)[1])
        finally:
            stop.set()


REQUEST = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"


async def raw_response(app: Any) -> bytes:
    """Every byte hypercorn writes for one request to `app`, on a real loopback socket."""
    received = bytearray()
    with trio.fail_after(10):
        async with served(app) as port, await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(REQUEST)
            while data := await client.receive_some(1 << 16):
                received += data
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    # The date header changes by the second; nothing else may differ.
    kept = [line for line in head.split(b"\r\n") if not line.startswith(b"date:")]
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def body_app(bodies: list[bytes], headers: list[tuple[bytes, bytes]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for body in bodies:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


@pytest.mark.parametrize(
    "headers",
    [[(b"content-type", b"text/event-stream")], [(b"content-length", b"23")]],
    ids=["chunked", "content-length"],
)
async def test_framing_ourselves_writes_what_h11_writes(
    monkeypatch: pytest.MonkeyPatch, headers: list[tuple[bytes, bytes]]
) -> None:
    bodies = [b"data: a\n\n", b"", b"data: \xe2\x9c\x93\n\n", b"x" * 4]  # 23 bytes
    monkeypatch.setattr(TCPServer, "protocol_send", socket_writes._hypercorn_protocol_send)
    monkeypatch.setattr(H11Protocol, "stream_send", socket_writes._hypercorn_stream_send)
    by_h11 = await raw_response(body_app(bodies, headers))
    assert socket_writes.install()
    to_h11: list[object] = []
    original = socket_writes._hypercorn_stream_send

    async def counting(protocol: H11Protocol, event: Any) -> None:
        to_h11.append(type(event).__name__)
        await original(protocol, event)

    monkeypatch.setattr(socket_writes, "_hypercorn_stream_send", counting)
    framed_here = await raw_response(body_app(bodies, headers))
    assert framed_here == by_h11
    chunked = headers[0][0] == b"content-type"
    assert by_h11.endswith(b"0\r\n\r\n") == chunked
    # Framed here: no body chunk went to h11 (only the head, the end, the close).
    assert to_h11.count("Body") == (0 if chunked else 3)


async def test_a_client_that_stops_reading_gets_every_byte_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(TCPServer, "protocol_send", socket_writes._hypercorn_protocol_send)
    assert socket_writes.install()
    slow_writes = 0
    buffers_full = trio.Event()
    original = socket_writes._hypercorn_protocol_send

    async def counting(server: TCPServer, event: Event) -> None:
        nonlocal slow_writes
        if isinstance(event, RawData):
            slow_writes += 1
            buffers_full.set()
        await original(server, event)

    monkeypatch.setattr(socket_writes, "_hypercorn_protocol_send", counting)
    chunks = [bytes([index % 251]) * 65536 for index in range(128)]  # 8 MiB, each chunk distinct

    received = bytearray()
    with trio.fail_after(30):
        async with (
            served(body_app(chunks, [])) as port,
            await trio.open_tcp_stream("127.0.0.1", port) as client,
        ):
            await client.send_all(REQUEST)
            await buffers_full.wait()  # the server filled the buffers we are not reading
            while data := await client.receive_some(1 << 20):
                received += data
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert _dechunk(body) == b"".join(chunks)
    assert slow_writes > 0


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += body[:size]
        body = body[size + 2 :]
