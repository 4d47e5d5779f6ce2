"""Request framing on a real socket (hypercorn 0.18, h11 0.16), raw bytes written with trio.

RFC 9112 §6.1: a request with both `Content-Length` and `Transfer-Encoding` must not leave
the connection open (what follows its chunked body could be a smuggled request). And a
`Transfer-Encoding` hypercorn cannot decode, refused before the gateway sees the request,
still gets an OpenAI-shaped body. Every wait is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import trio

from tests.support.serving import serving
from trio_gateway.config import GatewayConfig
from trio_gateway.gateway import Gateway

BODY = orjson.dumps(
    {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
)
SMUGGLED = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


@asynccontextmanager
async def gateway_port() -> AsyncIterator[int]:
    """The gateway on hypercorn as `trio-gateway serve` runs it, on an ephemeral port."""
    gateway = Gateway(GatewayConfig(port=1, mock_itl_ms=1, mock_ttft_ms=0))
    async with serving(gateway) as url:
        yield int(url.rsplit(":", 1)[1])


async def exchange(port: int, raw: bytes) -> bytes:
    """Write `raw`, read until the server closes (bounded: a kept-open connection fails)."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(raw)
            received = b""
            while data := await stream.receive_some():
                received += data
            return received


def responses(received: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses in `received` (each framed by content-length)."""
    found = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])
        found.append((int(status_line.split()[1]), headers, rest[:length]))
        received = rest[length:]
    return found


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/chat/completions", BODY),
        ("POST", "/admin/drain", b""),
        ("GET", "/health", b""),
    ],
)
async def test_content_length_with_transfer_encoding_is_400_and_closes(
    method: str, path: str, body: bytes
) -> None:
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + chunked(body)
    async with gateway_port() as port:
        answered = responses(await exchange(port, request + SMUGGLED))
        assert len(answered) == 1, "the request after the chunked body was answered"
        status, headers, payload = answered[0]
        assert status == 400
        assert headers["connection"] == "close"
        error = orjson.loads(payload)["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "conflicting_framing"
        assert "Content-Length" in error["message"]
        # The gateway itself is unharmed, and drained nothing.
        ok = responses(
            await exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        )
        assert ok[0][0] == 200
        assert orjson.loads(ok[0][2])["phase"] == "running"


async def test_a_large_refused_body_still_gets_its_answer() -> None:
    body = b'{"pad": "' + b"x" * 1_000_000 + b'"}'
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + chunked(body)
    async with gateway_port() as port:
        answered = responses(await exchange(port, request))
        assert [status for status, _, _ in answered] == [400]


@pytest.mark.parametrize("encoding", ["gzip, chunked", "gzip", "identity"])
async def test_unsupported_transfer_encoding_is_501_with_an_openai_body(encoding: str) -> None:
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {encoding}\r\n\r\n"
    ).encode() + chunked(BODY)
    async with gateway_port() as port:
        answered = responses(await exchange(port, request + SMUGGLED))
        assert len(answered) == 1
        status, headers, payload = answered[0]
        assert status == 501
        assert headers["connection"] == "close"
        assert headers["content-type"] == "application/json"
        error = orjson.loads(payload)["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "unsupported_transfer_encoding"


async def test_malformed_request_is_400_with_an_openai_body() -> None:
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n"
    async with gateway_port() as port:
        answered = responses(await exchange(port, request))
        assert [(status, orjson.loads(body)["error"]["code"]) for status, _, body in answered] == [
            (400, "malformed_request")
        ]


async def test_chunked_alone_is_served_and_kept_alive() -> None:
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked(BODY)
    )
    last = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with gateway_port() as port:
        received = await exchange(port, request + last)
        assert received.startswith(b"HTTP/1.1 200")
        assert received.count(b"HTTP/1.1 200") == 2  # the second request, on the same connection
