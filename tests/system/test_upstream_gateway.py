"""The gateway in front of an OpenAI-compatible upstream (the mock in tests/upstream_server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import trio

from tests.support.asgi_client import Harness, running_gateway
from tests.support.upstream_server import MockUpstream, running_upstream
from trio_gateway.engines.upstream.engine import OpenAIUpstream

CHAT = "/v1/chat/completions"
MODELS = ["up-a", "fail-400", "fail-503", "inband-error", "slow"]


@asynccontextmanager
async def gateway_over_upstream() -> AsyncIterator[tuple[Harness, MockUpstream, str]]:
    async with running_upstream(models=MODELS, graceful_timeout=0.5) as upstream:
        engine = OpenAIUpstream(upstream.url)
        async with running_gateway(engines=[engine]) as harness:
            with trio.fail_after(5):
                await engine.wait_probes(1)
            yield harness, upstream, engine.name


def ask(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_streams_and_unary_pass_through() -> None:
    async with gateway_over_upstream() as (harness, upstream, name):
        with trio.fail_after(10):
            stream = await harness.request("POST", CHAT, ask("up-a", stream=True, max_tokens=5))
            unary = await harness.request("POST", CHAT, ask("up-a", max_tokens=3))
        assert stream.status == 200
        assert stream.headers[b"x-worker-id"] == name.encode()
        assert "".join(stream.tokens()) == "t0 t1 t2 t3 t4 "
        assert stream.events()[-1] == "[DONE]"
        assert unary.json()["choices"][0]["message"]["content"] == "t0 t1 t2 "
        assert unary.json()["usage"]["completion_tokens"] == 3
        stream_sent, unary_sent = upstream.generations
        assert (stream_sent.body["stream"], unary_sent.body["stream"]) == (True, False)
        assert unary.body == unary_sent.answer  # the upstream's answer, byte for byte


async def test_upstream_4xx_stays_a_client_error_and_5xx_is_unavailable() -> None:
    async with gateway_over_upstream() as (harness, _, _name):
        with trio.fail_after(10):
            bad = await harness.request("POST", CHAT, ask("fail-400", stream=True))
            down = await harness.request("POST", CHAT, ask("fail-503"))
        assert bad.status == 400
        assert bad.json()["error"]["type"] == "BadRequestError"  # the upstream's own words
        assert down.status == 503
        assert down.json()["error"]["type"] == "unavailable"
        assert down.headers[b"retry-after"] == b"5"


async def test_inband_error_becomes_an_error_frame_and_done() -> None:
    async with gateway_over_upstream() as (harness, _, _name):
        with trio.fail_after(10):
            exchange = await harness.request("POST", CHAT, ask("inband-error", stream=True))
        events = exchange.events()
        assert events[-1] == "[DONE]"
        assert "error" in orjson.loads(events[-2])
        assert exchange.tokens()  # what came before the error got through


async def test_client_disconnect_closes_the_upstream_stream() -> None:
    async with gateway_over_upstream() as (harness, upstream, _name):
        exchange = harness.start("POST", CHAT, ask("slow", stream=True))
        with trio.fail_after(10):
            await exchange.wait_until(lambda e: len(e.tokens()) >= 2)
            exchange.disconnect()
            await exchange.finished.wait()
            await upstream.wait_until(lambda: upstream.generations[-1].disconnected)
        assert not upstream.generations[-1].finished
        assert harness.metric("trio_gateway_inflight_requests", model="slow") == 0


async def test_max_tokens_is_checked_against_each_models_own_context_length() -> None:
    lengths = {"up-a": 2048}  # vLLM lists max_model_len per model; up-b says nothing
    async with running_upstream(models=["up-a", "up-b"], context_lengths=lengths) as upstream:
        engine = OpenAIUpstream(upstream.url)
        async with running_gateway(engines=[engine]) as harness:
            with trio.fail_after(10):
                await engine.wait_probes(1)
                assert engine.context_lengths == {"up-a": 2048}
                over = await harness.request("POST", CHAT, ask("up-a", max_tokens=2049))
                at = await harness.request("POST", CHAT, ask("up-a", max_tokens=2048))
                unknown = await harness.request("POST", CHAT, ask("up-b", max_tokens=10**6))
    assert over.status == 400
    assert over.json()["error"]["code"] == "integer_above_max_value"
    assert "2048" in over.json()["error"]["message"]
    assert at.status == 200  # the upstream's own limit, not the gateway's --max-model-len
    assert unknown.status == 200  # no length known: the upstream judges
    assert len(upstream.generations) == 2  # the refused one never left the gateway
