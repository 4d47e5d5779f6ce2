"""The gateway in front of a real engine: llama-cpp-python's server with SmolLM2-135M on CPU.

Each test serves a `Gateway` whose engine is `OpenAIUpstream(llamacpp_url)` on hypercorn
(`serving`, as `trio-gateway serve` runs it) and sends the same greedy requests
(`temperature: 0`, `seed: 1`) to the gateway and straight to llama.cpp. Answers stay short
(8-16 tokens) so the whole file runs in seconds. Every wait is bounded with `trio.fail_after`.

The server comes from `.ci/install_llamacpp.sh` (see tests/llamacpp_server.py): without it
these tests skip, unless TRIO_GATEWAY_REQUIRE_LLAMACPP=1 (as in CI).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import trio

from tests.asgi_client import Exchange
from tests.conftest import chat
from tests.llamacpp_server import MODEL_ALIAS
from tests.test_real_sockets import serving
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.upstream.engine import OpenAIUpstream
from trio_gateway.gateway import Gateway

pytestmark = pytest.mark.llamacpp

CHAT = "/chat/completions"
COMPLETIONS = "/completions"
GREEDY: dict[str, Any] = {"model": MODEL_ALIAS, "temperature": 0, "seed": 1}
# One short answer takes well under a second on 2 idle cores, but llama.cpp's threads slow
# down a hundredfold when other processes keep both cores busy.
REQUEST_TIMEOUT = 60.0


def completion(prompt: str, **extra: Any) -> dict[str, Any]:
    return {**GREEDY, "prompt": prompt, **extra}


@dataclass
class Both:
    """The gateway over llama.cpp, and clients for the gateway and for llama.cpp itself."""

    gateway: Gateway
    via: httpx.AsyncClient  # the gateway's /v1
    direct: httpx.AsyncClient  # llama.cpp's /v1

    def metric(self, name: str, **labels: str) -> float:
        value = self.gateway.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def post_both(self, path: str, body: dict[str, Any]) -> tuple[Exchange, Exchange]:
        """The same request to the gateway, then to llama.cpp (it serves one at a time)."""
        answers = []
        for client in (self.via, self.direct):
            with trio.fail_after(REQUEST_TIMEOUT):
                response = await client.post(path, json=body)
            answers.append(as_exchange(response))
        return answers[0], answers[1]


def as_exchange(response: httpx.Response) -> Exchange:
    """A response read whole, as an `Exchange` (for its `json`, `events` and `tokens`)."""
    return Exchange(
        status=response.status_code,
        headers={k.lower(): v for k, v in response.headers.raw},
        body=bytearray(response.content),
        complete=True,
    )


@asynccontextmanager
async def gateway_over_llamacpp(llamacpp_url: str) -> AsyncIterator[Both]:
    engine = OpenAIUpstream(llamacpp_url)
    gateway = Gateway(GatewayConfig(port=1), [engine])
    async with serving(gateway) as url:
        with trio.fail_after(10):
            await engine.wait_probes(1)
        assert engine.available
        assert engine.models == (MODEL_ALIAS,)
        async with (
            httpx.AsyncClient(base_url=url + "/v1", timeout=REQUEST_TIMEOUT) as via,
            httpx.AsyncClient(base_url=llamacpp_url, timeout=REQUEST_TIMEOUT) as direct,
        ):
            yield Both(gateway, via, direct)


def text_of_unary(exchange: Exchange) -> str:
    choice = exchange.json()["choices"][0]
    return str(choice["message"]["content"] if "message" in choice else choice["text"])


def check_stream(via: Exchange, direct: Exchange) -> str:
    assert via.status == direct.status == 200
    assert via.headers[b"content-type"].startswith(b"text/event-stream")
    text = "".join(via.tokens())
    assert text, "no text"
    assert text == "".join(direct.tokens())
    assert via.events()[-1] == "[DONE]"
    assert direct.events()[-1] == "[DONE]"
    finishes = [
        choice["finish_reason"]
        for event in via.events()[:-1]
        for choice in orjson.loads(event)["choices"]
        if choice.get("finish_reason")
    ]
    assert finishes == ["length"]
    return text


async def test_chat_stream_through_the_gateway_is_llamacpps_own(llamacpp_url: str) -> None:
    async with gateway_over_llamacpp(llamacpp_url) as both:
        via, direct = await both.post_both(
            CHAT, chat("Say hello.", **GREEDY, max_tokens=12, stream=True)
        )
        check_stream(via, direct)
        assert both.metric("trio_gateway_inflight_requests", model=MODEL_ALIAS) == 0


async def test_chat_unary_through_the_gateway_is_llamacpps_own(llamacpp_url: str) -> None:
    async with gateway_over_llamacpp(llamacpp_url) as both:
        via, direct = await both.post_both(CHAT, chat("Say hello.", **GREEDY, max_tokens=12))
        assert via.status == direct.status == 200
        assert text_of_unary(via)
        assert text_of_unary(via) == text_of_unary(direct)
        choice = via.json()["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] == "length"
        assert via.json()["usage"] == direct.json()["usage"]
        assert via.json()["usage"]["completion_tokens"] == 12


async def test_completions_stream_and_unary(llamacpp_url: str) -> None:
    async with gateway_over_llamacpp(llamacpp_url) as both:
        body = completion("The capital of France is", max_tokens=10)
        via, direct = await both.post_both(COMPLETIONS, {**body, "stream": True})
        streamed = check_stream(via, direct)
        via, direct = await both.post_both(COMPLETIONS, body)
        assert via.status == direct.status == 200
        assert text_of_unary(via) == text_of_unary(direct) == streamed
        assert via.json()["choices"][0]["finish_reason"] == "length"


async def first_token(lines: AsyncIterator[str]) -> None:
    """Read a stream's lines until its first event with text."""
    async for line in lines:
        if line.startswith("data: ") and Exchange(body=bytearray(line.encode())).tokens():
            return
    raise AssertionError("the stream ended without a token")


# httpcore leaves its body async generators to the garbage collector when a stream is left
# early, which trio reports as a ResourceWarning: httpx's leftovers, not the gateway's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_client_leaving_a_long_stream_frees_the_engine(llamacpp_url: str) -> None:
    async with gateway_over_llamacpp(llamacpp_url) as both:
        # 1500 tokens, EOS banned so it cannot stop early: ~50 s on 2 idle cores, run out.
        long = chat(
            "Write a very long story about a dragon.",
            **GREEDY,
            max_tokens=1500,
            stream=True,
            logit_bias={"2": -100},  # <|im_end|>
        )
        with trio.fail_after(REQUEST_TIMEOUT):
            async with both.via.stream("POST", CHAT, json=long) as response:
                assert response.status_code == 200
                async with aclosing(response.aiter_lines()) as lines:
                    await first_token(lines)
            await both.gateway.ledger.wait_empty()
        assert both.metric("trio_gateway_inflight_requests", model=MODEL_ALIAS) == 0

        # llama.cpp serves one request at a time: this one starts only once the long one
        # has stopped, which it does when it sees its connection closed, between tokens.
        short = chat("Say hello.", **GREEDY, max_tokens=16, stream=True)
        started = trio.current_time()
        with trio.fail_after(REQUEST_TIMEOUT):
            async with both.via.stream("POST", CHAT, json=short) as response:
                assert response.status_code == 200
                async with aclosing(response.aiter_lines()) as lines:
                    await first_token(lines)
                    first = trio.current_time()
                    tokens = 1
                    async for line in lines:
                        tokens += len(Exchange(body=bytearray(line.encode())).tokens())
                    last = trio.current_time()
            await both.gateway.ledger.wait_empty()
        assert tokens > 2
        # Had the long stream gone on, this first token would have waited for its other
        # 1499 tokens, at (at least) the pace this stream ran at, which scales with how
        # busy the machine is. Well under that: a tenth, and never less than 2 s.
        pace = (last - first) / (tokens - 1)
        assert first - started < max(1499 * pace / 10, 2.0), (first - started, pace)
        assert both.metric("trio_gateway_inflight_requests", model=MODEL_ALIAS) == 0
        assert both.metric("trio_gateway_disconnected_clients_total", model=MODEL_ALIAS) == 1
