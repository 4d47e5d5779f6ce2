"""The gateway on hypercorn, on an ephemeral loopback port, with real clients.

Every wait here is bounded with `trio.fail_after`; nothing sleeps to let time pass.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import httpx
import openai
import pytest
import trio
from hypercorn.trio.tcp_server import TCPServer

from tests.support.bodies import chat
from tests.support.recording_engine import RecordingEngine
from tests.support.serving import in_thread, serving
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.gateway import Gateway


class Served:
    def __init__(self, url: str, gateway: Gateway, engine: RecordingEngine) -> None:
        self.url = url
        self.gateway = gateway
        self.engine = engine

    def metric(self, name: str, **labels: str) -> float:
        value = self.gateway.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@asynccontextmanager
async def served_gateway(**settings: Any) -> AsyncIterator[Served]:
    config = GatewayConfig(port=1, **settings)
    engine = RecordingEngine(
        MockEngine(("mock",), ttft_ms=config.mock_ttft_ms, itl_ms=config.mock_itl_ms)
    )
    gateway = Gateway(config, [engine])
    async with serving(gateway) as url:
        yield Served(url, gateway, engine)


async def test_openai_sdk_streams_and_calls_unary() -> None:
    async with served_gateway() as served:
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)

        def stream() -> tuple[list[str], str | None]:
            texts, finish = [], None
            for chunk in client.chat.completions.create(
                model="mock",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                max_tokens=12,
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    texts.append(chunk.choices[0].delta.content)
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
            return texts, finish

        texts, finish = await in_thread(stream)
        assert len(texts) == 12
        assert finish == "length"

        def unary() -> Any:
            return client.completions.create(model="mock", prompt="Tell me", max_tokens=7)

        completion = await in_thread(unary)
        assert completion.usage.completion_tokens == 7
        assert len(completion.choices[0].text.split()) == 7
        client.close()


async def test_openai_sdk_raises_its_own_exceptions() -> None:
    async with served_gateway() as served:
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)

        def unknown_model() -> None:
            client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )

        def bad_request() -> None:
            client.chat.completions.create(model="mock", messages=[], max_tokens=5)

        def mid_stream_failure() -> int:
            seen = 0
            stream = client.chat.completions.create(
                model="mock",
                messages=[{"role": "user", "content": "x"}],
                stream=True,
                extra_body={"mock": {"error_after": 4}},
            )
            try:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        seen += 1
            except openai.APIError as error:
                assert error.body is not None
                assert error.body["type"] == "internal_error"  # type: ignore[index]
                return seen
            raise AssertionError("the stream ended without raising")

        def failure_before_first_token() -> None:
            client.chat.completions.create(
                model="mock",
                messages=[{"role": "user", "content": "x"}],
                stream=True,
                extra_body={"mock": {"error_after": 0}},
            )

        with pytest.raises(openai.NotFoundError):
            await in_thread(unknown_model)
        with pytest.raises(openai.BadRequestError):
            await in_thread(bad_request)
        assert await in_thread(mid_stream_failure) == 4
        with pytest.raises(openai.InternalServerError):
            await in_thread(failure_before_first_token)
        client.close()


# httpcore leaves its body async generators to the garbage collector when a stream is left
# early, which trio reports as a ResourceWarning: httpx's leftovers, not the gateway's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_client_closing_mid_stream_stops_the_engine() -> None:
    async with served_gateway() as served, httpx.AsyncClient(base_url=served.url) as client:
        body = chat(stream=True, mock={"tokens": 100_000, "itl_ms": 1})
        with trio.fail_after(10):
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                events = 0
                async with aclosing(response.aiter_raw()) as raw:
                    async for data in raw:
                        events += data.count(b"data: ")
                        if events >= 5:
                            break
            assert served.engine.inner.active <= 1
            await served.gateway.ledger.wait_empty()
        # Stopped within the bound, not after the 100 s the stream would have taken.
        assert served.engine.endings == ["cancelled"]
        assert served.engine.inner.active == 0
        assert served.metric("trio_gateway_inflight_requests", model="mock") == 0
        assert served.metric("trio_gateway_disconnected_clients_total", model="mock") == 1


async def test_accepted_sockets_have_tcp_nodelay(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    original = TCPServer.__init__

    def recording_init(self: TCPServer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        seen.append(self.stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(TCPServer, "__init__", recording_init)
    async with served_gateway() as served, httpx.AsyncClient(base_url=served.url) as client:
        with trio.fail_after(10):
            response = await client.post(
                "/v1/completions", json={"model": "mock", "prompt": "x", "max_tokens": 1}
            )
        assert response.status_code == 200
    assert seen and all(seen)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/health", None),
        ("POST", "/v1/completions", b'{"model":"mock","prompt":"x","max_tokens":1}'),
    ],
)
async def test_idle_keep_alive_connection_is_closed_by_the_server(
    method: str, path: str, body: bytes | None
) -> None:
    """The quart-trio keep-alive bug (docs/architecture.md §7) leaves idle connections open
    forever."""
    async with served_gateway(keep_alive_timeout_s=0.2) as served:
        host, port = served.url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            request = (
                f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body or b'')}\r\n\r\n"
            ).encode() + (body or b"")
            await stream.send_all(request)
            received = b""
            with trio.fail_after(5):  # 0.2 s of keep-alive, and a wide margin
                while True:
                    data = await stream.receive_some()
                    if not data:
                        break  # the server closed the idle connection
                    received += data
        assert received.startswith(b"HTTP/1.1 200")
