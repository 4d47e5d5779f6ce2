"""Body-read deadlines on a real socket, where what matters is the bytes hypercorn puts on the
wire: 413 for a huge declared length, 408 and a close for a slow body, and the keep-alive
timer for unfinished headers. Every wait is bounded."""

from __future__ import annotations

import orjson
import trio

from tests.support.bodies import chat
from tests.support.serving import serving
from trio_gateway.config import GatewayConfig
from trio_gateway.gateway import Gateway

READING = "trio_gateway_reading_requests"

BODY = orjson.dumps(chat(stream=True, mock={"tokens": 20, "itl_ms": 100}))


async def raw_exchange(port: int, raw: bytes, *, trickle_s: float | None = None) -> bytes:
    """Write `raw` (then a byte every `trickle_s`), read until the server closes."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream, trio.open_nursery() as nursery:
            await stream.send_all(raw)

            async def dribble() -> None:
                assert trickle_s is not None
                while True:
                    await trio.sleep(trickle_s)
                    try:
                        await stream.send_all(b" ")
                    except trio.BrokenResourceError:
                        return

            if trickle_s is not None:
                nursery.start_soon(dribble)
            received = b""
            try:
                while data := await stream.receive_some():
                    received += data
            except trio.BrokenResourceError:  # a reset after the answer
                pass
            nursery.cancel_scope.cancel()
            return received


def post_head(length: int | str) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %s\r\n\r\n" % str(length).encode()
    )


def status_and_body(received: bytes) -> tuple[int, dict[str, str], bytes]:
    """The one response in `received`, its body de-chunked."""
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    if headers.get("transfer-encoding") != "chunked":
        return int(status_line.split()[1]), headers, rest
    body = b""
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2 :]
    return int(status_line.split()[1]), headers, body


async def test_real_socket_huge_content_length_is_answered_413() -> None:
    gateway = Gateway(GatewayConfig(port=1))
    async with serving(gateway) as url:
        port = int(url.rsplit(":", 1)[1])
        received = await raw_exchange(port, post_head(99999999999))
        status, headers, body = status_and_body(received)
        assert status == 413
        assert headers["connection"] == "close"
        assert orjson.loads(body)["error"]["code"] == "request_too_large"


async def test_real_socket_slow_body_is_answered_408_and_closed() -> None:
    gateway = Gateway(GatewayConfig(port=1, body_read_timeout_s=1))
    async with serving(gateway) as url:
        port = int(url.rsplit(":", 1)[1])
        started = trio.current_time()
        received = await raw_exchange(port, post_head(len(BODY)) + b"{", trickle_s=0.1)
        assert 1 <= trio.current_time() - started < 3
        status, headers, body = status_and_body(received)
        assert status == 408
        assert headers["connection"] == "close"
        assert orjson.loads(body)["error"]["code"] == "request_timeout"
        assert gateway.metrics.registry.get_sample_value(READING) == 0


async def test_real_socket_unfinished_headers_are_closed_by_the_keep_alive_timer() -> None:
    """Not ours: hypercorn's idle timer runs until a request's headers are in (5 s by default,
    `keep_alive_timeout_s`; 1 s here), then closes the connection without a word."""
    gateway = Gateway(GatewayConfig(port=1, keep_alive_timeout_s=1))
    async with serving(gateway) as url:
        port = int(url.rsplit(":", 1)[1])
        started = trio.current_time()
        received = await raw_exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        assert received == b""
        assert 1 <= trio.current_time() - started < 2
