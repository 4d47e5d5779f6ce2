"""The upstream HTTP/1.1 client against a raw trio TCP server that each test drives byte by byte.

Every wait on the server's or the client's side is bounded with `trio.fail_after`; expiry is
tested on a `MockClock` that only moves when the test jumps it.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing
import trustme

from tests.support.ports import refused_port
from trio_gateway.engines.upstream.client import (
    KEEPALIVE_EXPIRY,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
)

BOUND = 5.0  # seconds any single wait may take before the test fails


class Peer:
    """One accepted connection, seen from the server."""

    def __init__(self, stream: trio.abc.Stream, index: int) -> None:
        self.stream = stream
        self.index = index
        self.buffer = bytearray()
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.eof = trio.Event()  # the client closed its side
        self.done = trio.Event()  # the handler returned and the server closed its side

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof.set()
            return False
        self.buffer += data
        return True

    async def request(self) -> tuple[bytes, bytes] | None:
        """The next request (head, body), or None when the client closed instead."""
        with trio.fail_after(BOUND):
            while b"\r\n\r\n" not in self.buffer:
                if not await self._fill():
                    return None
            end = self.buffer.index(b"\r\n\r\n") + 4
            head = bytes(self.buffer[:end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(self.buffer) < end + length:
                if not await self._fill():
                    return None
            body = bytes(self.buffer[end : end + length])
            del self.buffer[: end + length]
        self.requests.append((head, body))
        return head, body

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def wait_eof(self) -> None:
        """Read (and drop) until the client closes."""
        with trio.fail_after(BOUND):
            while await self._fill():
                pass

    def reset(self) -> None:
        """Close with RST rather than FIN."""
        sock = self.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def socket(self) -> trio.socket.SocketType:
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        assert isinstance(stream, trio.SocketStream)
        return stream.socket


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    def __init__(self) -> None:
        self.handler: Handler = serve_forever(ok(b"hello"))
        self.peers: list[Peer] = []
        self.tls: ssl.SSLContext | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def serve(self, stream: trio.SocketStream) -> None:
        peer = Peer(stream, len(self.peers))
        self.peers.append(peer)
        if self.tls is not None:
            peer.stream = trio.SSLStream(stream, self.tls, server_side=True, https_compatible=True)
        try:
            await self.handler(peer)
        except trio.BrokenResourceError:
            pass  # the client reset: its tests look at the outcome, not at this
        finally:
            await trio.aclose_forcefully(peer.stream)
            peer.done.set()


@pytest.fixture
async def server(nursery: trio.Nursery) -> RawServer:
    raw = RawServer()
    listeners = await nursery.start(partial(trio.serve_tcp, raw.serve, 0, host="127.0.0.1"))
    raw.port = listeners[0].socket.getsockname()[1]
    return raw


def ok(body: bytes, *headers: bytes) -> bytes:
    extra = b"".join(header + b"\r\n" for header in headers)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def serve_forever(response: bytes) -> Handler:
    """Answer every request on the connection with `response`, until the client closes."""

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(response)

    return handler


def answer_then_close(count: int, response: bytes = ok(b"hello")) -> Handler:
    """Answer `count` requests, then read one more and close without answering."""

    async def handler(peer: Peer) -> None:
        for _ in range(count):
            if await peer.request() is None:
                return
            await peer.send(response)
        await peer.request()

    return handler


async def get(pool: UpstreamPool, target: str = "/") -> tuple[int, bytes]:
    with trio.fail_after(BOUND):
        async with pool.stream("GET", target) as response:
            return response.status, await response.read(1 << 20)


async def read(response: UpstreamResponse, limit: int) -> bytes:
    """`response.read(limit)`, bounded."""
    with trio.fail_after(BOUND):
        return await response.read(limit)


async def receive(response: UpstreamResponse) -> bytes:
    """`response.receive_some()`, bounded."""
    with trio.fail_after(BOUND):
        return await response.receive_some()


# -- bodies ----------------------------------------------------------------------------------


async def test_a_content_length_body_and_the_request_the_server_saw(server: RawServer) -> None:
    server.handler = serve_forever(ok(b"hello", b"Content-Type: text/plain", b"X-Two: 2"))
    async with UpstreamPool(server.url) as pool:
        body = b'{"model": "m"}'
        headers = [(b"content-type", b"application/json"), (b"X-Request-Id", b"r1")]
        async with pool.stream("POST", "/v1/chat/completions", headers, body) as response:
            assert response.status == 200
            assert response.header(b"Content-Type") == b"text/plain"
            assert response.header(b"x-missing") is None
            assert (b"x-two", b"2") in response.headers
            assert await read(response, 100) == b"hello"
            assert response.complete
            assert await receive(response) == b""
    head, sent = server.peers[0].requests[0]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}\r\n".encode() in head.lower()
    assert b"content-length: 14\r\n" in head.lower()
    assert b"x-request-id: r1\r\n" in head.lower()
    assert sent == body


async def test_a_get_carries_no_content_length(server: RawServer) -> None:
    async with UpstreamPool(server.url) as pool:
        assert await get(pool, "/v1/models") == (200, b"hello")
    head, _ = server.peers[0].requests[0]
    assert b"content-length" not in head.lower()


async def test_a_chunked_body_split_anywhere(server: RawServer) -> None:
    body = chunk(b"hel") + b"2;ext=1 \r\nlo\r\n" + chunk(b" world") + b"0\r\nX-Trailer: t\r\n\r\n"

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + body[:5])
        for i in range(5, len(body), 3):
            await peer.send(body[i : i + 3])
        await peer.wait_eof()

    server.handler = handler
    async with UpstreamPool(server.url) as pool:
        assert await get(pool) == (200, b"hello world")
        assert pool.idle_connections == 1


async def test_an_sse_stream_one_read_at_a_time(server: RawServer) -> None:
    events = [b'data: {"i": %d}\n\n' % i for i in range(20)] + [b"data: [DONE]\n\n"]
    go_send, go_receive = trio.open_memory_channel[None](0)

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD)
        for event in events:
            await peer.send(chunk(event))
            with trio.fail_after(BOUND):
                await go_receive.receive()  # the client got it: the next one is a read of its own
        await peer.send(b"0\r\n\r\n")
        await peer.wait_eof()

    server.handler = handler
    async with (
        UpstreamPool(server.url) as pool,
        pool.stream("POST", "/v1/completions", [(b"accept", b"text/event-stream")], b"{}") as r,
    ):
        assert r.header(b"content-type") == b"text/event-stream"
        for event in events:
            with trio.fail_after(BOUND):
                assert await receive(r) == event
            await go_send.send(None)
        assert await receive(r) == b""
        assert r.complete


async def test_read_keeps_what_is_past_its_limit(server: RawServer) -> None:
    server.handler = serve_forever(ok(b"0123456789"))
    async with UpstreamPool(server.url) as pool:
        async with pool.stream("GET", "/") as response:
            assert await read(response, 4) == b"0123"
            assert not response.complete
            assert await read(response, 100) == b"456789"
            assert response.complete
        assert pool.idle_connections == 1


@pytest.mark.parametrize(
    ("response", "status", "body"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
        (b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after"), 200, b"after"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, b""),
    ],
    ids=["204", "informational-first", "empty"],
)
async def test_bodies_that_are_empty_or_come_late(
    server: RawServer, response: bytes, status: int, body: bytes
) -> None:
    server.handler = serve_forever(response)
    async with UpstreamPool(server.url) as pool:
        for _ in range(2):
            assert await get(pool) == (status, body)
        assert pool.connections_opened == 1


async def test_a_head_response_has_no_body_whatever_its_length(server: RawServer) -> None:
    server.handler = serve_forever(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    async with UpstreamPool(server.url) as pool:
        for _ in range(2):
            async with pool.stream("HEAD", "/") as response:
                assert response.header(b"content-length") == b"1000"
                assert await receive(response) == b""
        assert pool.connections_opened == 1


async def test_an_http10_body_ends_with_the_connection(server: RawServer) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")

    server.handler = handler
    async with UpstreamPool(server.url) as pool:
        assert await get(pool) == (200, b"until the end")
        assert pool.idle_connections == 0


# -- reuse -----------------------------------------------------------------------------------


async def test_keep_alive_reuses_the_same_server_connection(server: RawServer) -> None:
    async with UpstreamPool(server.url) as pool:
        for _ in range(3):
            assert await get(pool) == (200, b"hello")
        assert pool.connections_opened == 1
        assert len(server.peers) == 1
        assert len(server.peers[0].requests) == 3


@pytest.mark.parametrize(
    ("request_headers", "response"),
    [
        ([(b"connection", b"close")], ok(b"hello")),
        ([], ok(b"hello", b"Connection: close")),
        ([], b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        ([], ok(b"hello") + b"junk after the body"),
    ],
    ids=["client-close", "server-close", "http10", "bytes-after-the-body"],
)
async def test_no_reuse_when_the_connection_must_close(
    server: RawServer, request_headers: list[tuple[bytes, bytes]], response: bytes
) -> None:
    server.handler = serve_forever(response)
    async with UpstreamPool(server.url) as pool:
        for _ in range(2):
            async with pool.stream("GET", "/", request_headers) as r:
                assert await read(r, 100) == b"hello"
        assert pool.connections_opened == 2
        with trio.fail_after(BOUND):
            await server.peers[0].eof.wait()


async def test_leaving_early_closes_the_connection(server: RawServer) -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(CHUNKED_HEAD + chunk(b"data: 1\n\n"))
            await peer.wait_eof()
        else:
            await serve_forever(ok(b"hello"))(peer)

    server.handler = handler
    async with UpstreamPool(server.url) as pool:
        async with pool.stream("GET", "/") as response:
            assert await receive(response) == b"data: 1\n\n"
        with trio.fail_after(BOUND):
            await server.peers[0].eof.wait()
        assert await get(pool) == (200, b"hello")
        assert len(server.peers) == 2


async def test_an_exception_inside_closes_even_a_finished_response(server: RawServer) -> None:
    async with UpstreamPool(server.url) as pool:
        with pytest.raises(KeyError):
            async with pool.stream("GET", "/") as response:
                assert await read(response, 100) == b"hello"
                raise KeyError("the caller's own failure")
        assert pool.idle_connections == 0
        with trio.fail_after(BOUND):
            await server.peers[0].eof.wait()


async def test_cancellation_mid_body_closes_the_connection(server: RawServer) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"data: 1\n\n"))
        await peer.wait_eof()  # the generation would go on until the client leaves

    server.handler = handler
    async with UpstreamPool(server.url) as pool:
        with trio.CancelScope() as scope:
            async with pool.stream("POST", "/", body=b"{}") as response:
                assert await receive(response) == b"data: 1\n\n"
                scope.cancel()
                await receive(response)
        assert scope.cancelled_caught
        with trio.fail_after(BOUND):
            await server.peers[0].eof.wait()
        assert pool.idle_connections == 0


async def test_cancellation_before_the_head_closes_the_connection(server: RawServer) -> None:
    arrived = trio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        arrived.set()
        await peer.wait_eof()

    server.handler = handler
    async with UpstreamPool(server.url) as pool, trio.open_nursery() as nursery:

        async def request() -> None:
            async with pool.stream("GET", "/"):
                raise AssertionError("no head was sent")

        nursery.start_soon(request)
        with trio.fail_after(BOUND):
            await arrived.wait()
        nursery.cancel_scope.cancel()
    with trio.fail_after(BOUND):
        await server.peers[0].eof.wait()


async def test_a_server_closed_idle_connection_is_not_used(server: RawServer) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b"hello"))  # kept alive by its headers, closed all the same

    server.handler = handler
    async with UpstreamPool(server.url) as pool:
        assert await get(pool) == (200, b"hello")
        with trio.fail_after(BOUND):
            await server.peers[0].done.wait()
        assert await get(pool) == (200, b"hello")
        assert pool.stale_retries == 0  # seen closed when taken, not after sending
        assert pool.connections_opened == 2


async def test_a_stale_connection_is_retried_on_a_new_one(server: RawServer) -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await answer_then_close(1)(peer)
        else:
            await serve_forever(ok(b"hello"))(peer)

    server.handler = handler
    async with UpstreamPool(server.url) as pool:
        assert await get(pool) == (200, b"hello")
        assert await get(pool) == (200, b"hello")
        assert pool.stale_retries == 1
    assert [len(peer.requests) for peer in server.peers] == [2, 1]


async def test_a_server_that_never_answers_again_fails_after_the_retry(server: RawServer) -> None:
    async def handler(peer: Peer) -> None:
        await answer_then_close(1 if peer.index == 0 else 0)(peer)

    server.handler = handler
    async with UpstreamPool(server.url) as pool:
        assert await get(pool) == (200, b"hello")
        with pytest.raises(UpstreamDisconnected, match="before answering"):
            await get(pool)
        assert pool.stale_retries == 1
    assert [len(peer.requests) for peer in server.peers] == [2, 1]


async def test_a_new_connection_closed_unanswered_is_not_retried(server: RawServer) -> None:
    server.handler = answer_then_close(0)
    async with UpstreamPool(server.url) as pool:
        with pytest.raises(UpstreamDisconnected, match="before answering"):
            await get(pool)
        assert pool.connections_opened == 1


async def test_idle_connections_expire(
    server: RawServer, mock_clock: trio.testing.MockClock
) -> None:
    async with UpstreamPool(server.url) as pool:
        assert pool.keepalive_expiry == KEEPALIVE_EXPIRY
        await get(pool)
        mock_clock.jump(KEEPALIVE_EXPIRY - 0.5)
        await get(pool)  # not yet expired, and its expiry starts again now
        assert pool.connections_opened == 1
        mock_clock.jump(KEEPALIVE_EXPIRY + 0.1)
        await get(pool)
        assert pool.connections_opened == 2
        with trio.fail_after(BOUND):
            await server.peers[0].eof.wait()


async def test_at_most_max_idle_are_kept(server: RawServer) -> None:
    async with UpstreamPool(server.url, max_idle=1) as pool:
        async with pool.stream("GET", "/") as first, pool.stream("GET", "/") as second:
            assert await read(first, 100) == await read(second, 100) == b"hello"
        assert pool.idle_connections == 1
        with trio.fail_after(BOUND):
            await server.peers[1].eof.wait()  # the one released first, then pushed out
        await get(pool)
        assert pool.connections_opened == 2


async def test_idle_connections_are_taken_most_recent_first(server: RawServer) -> None:
    async with UpstreamPool(server.url) as pool:
        async with pool.stream("GET", "/") as first, pool.stream("GET", "/") as second:
            await read(first, 100)
            await read(second, 100)
        # `second` was released first (contexts exit inside out): `first` is on top.
        await get(pool)
        assert [len(peer.requests) for peer in server.peers] == [2, 1]


async def test_aclose(server: RawServer) -> None:
    pool = UpstreamPool(server.url)
    await get(pool)
    async with pool.stream("GET", "/") as in_flight:
        await pool.aclose()
        assert await read(in_flight, 100) == b"hello"
    assert pool.idle_connections == 0
    with trio.fail_after(BOUND):
        for peer in server.peers:
            await peer.eof.wait()
    with pytest.raises(trio.ClosedResourceError):
        await get(pool)


# -- failures --------------------------------------------------------------------------------


async def test_connection_refused() -> None:
    with refused_port() as port:
        async with UpstreamPool(f"http://127.0.0.1:{port}") as pool:
            with pytest.raises(UpstreamConnectError, match=f"127.0.0.1:{port}"):
                await get(pool)


async def test_a_malformed_status_line(server: RawServer) -> None:
    server.handler = serve_forever(b"HTCPCP/1.0 418 I'm a teapot\r\n\r\n")
    async with UpstreamPool(server.url) as pool:
        with pytest.raises(UpstreamProtocolError, match="malformed response"):
            await get(pool)


async def test_a_malformed_chunk_mid_stream(server: RawServer) -> None:
    server.handler = serve_forever(CHUNKED_HEAD + chunk(b"data: 1\n\n") + b"nothex\r\n")
    async with UpstreamPool(server.url) as pool, pool.stream("GET", "/") as response:
        with pytest.raises(UpstreamProtocolError, match="chunk header"):
            await read(response, 100)


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        CHUNKED_HEAD + chunk(b"data: 1\n\n"),
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ],
    ids=["content-length", "chunked", "mid-head"],
)
@pytest.mark.parametrize("how", ["close", "reset"])
async def test_the_connection_lost_mid_response(
    server: RawServer, partial: bytes, how: str
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(partial)
        if how == "reset":
            peer.reset()

    server.handler = handler
    async with UpstreamPool(server.url) as pool:
        with pytest.raises(UpstreamDisconnected):
            async with pool.stream("GET", "/") as response:
                await read(response, 100)
        assert pool.stale_retries == 0


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


async def test_https_with_reuse(server: RawServer, ca: trustme.CA) -> None:
    server.tls = tls_server(ca)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    async with UpstreamPool(server.url, ssl_context=client) as pool:
        for _ in range(2):
            assert await get(pool) == (200, b"hello")
        assert pool.connections_opened == 1
        async with pool.stream("GET", "/") as response:
            assert await receive(response) == b"hello"
    with trio.fail_after(BOUND):
        await server.peers[0].eof.wait()


async def test_https_with_an_untrusted_certificate(server: RawServer, ca: trustme.CA) -> None:
    server.tls = tls_server(ca)
    async with UpstreamPool(server.url, ssl_context=ssl.create_default_context()) as pool:
        with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await get(pool)


async def test_a_tls_handshake_that_never_ends_is_a_connect_timeout(
    server: RawServer, autojump_clock: trio.testing.MockClock
) -> None:
    async def silent(peer: Peer) -> None:
        await trio.sleep_forever()  # accepts, never speaks TLS

    server.handler = silent
    async with UpstreamPool(
        f"https://127.0.0.1:{server.port}",
        connect_timeout=3.0,
        ssl_context=ssl.create_default_context(),
    ) as pool:
        start = trio.current_time()
        with pytest.raises(UpstreamConnectError, match="timed out after 3 s"):
            await get(pool)
        assert trio.current_time() - start == pytest.approx(3.0)


async def test_a_dns_member_dials_its_address_as_the_name_it_was_resolved_from(
    server: RawServer, ca: trustme.CA
) -> None:
    """A `dns+https` member dials one pod's address, but the certificate is the Service's
    name's and so is the Host the server expects."""
    server.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("vllm.test").configure_cert(server.tls)  # the name only, not 127.0.0.1
    client = ssl.create_default_context()
    ca.configure_trust(client)
    async with UpstreamPool(server.url, ssl_context=client, host_name="vllm.test") as pool:
        assert await get(pool, "/v1/models") == (200, b"hello")
    head, _ = server.peers[0].requests[0]
    assert f"host: vllm.test:{server.port}\r\n".encode() in head.lower()
    async with UpstreamPool(server.url, ssl_context=client) as pool:  # by address: refused
        with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await get(pool)
