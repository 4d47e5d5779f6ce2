"""The request lifecycle under MockClock: every way a request ends, counted once, gauges at 0."""

from __future__ import annotations

import orjson
import pytest
import trio

from tests.support.asgi_client import Harness, running_gateway
from tests.support.bodies import chat
from tests.support.recording_engine import RecordingEngine
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.errors import internal_error
from trio_gateway.generation import Chunk, GenerationRequest

CHAT = "/v1/chat/completions"


def recording_engine(**kwargs: float) -> RecordingEngine:
    return RecordingEngine(MockEngine(("mock",), **kwargs))  # type: ignore[arg-type]


def assert_idle(harness: Harness, engine: RecordingEngine) -> None:
    assert len(harness.gateway.ledger) == 0
    assert engine.inner.active == 0
    assert harness.metric("trio_gateway_inflight_requests", model="mock") == 0
    assert harness.metric("trio_gateway_queued_requests", model="mock") == 0


def count(harness: Harness, error_type: str, request_type: str = "stream") -> float:
    return harness.metric(
        "trio_gateway_requests_total",
        model="mock",
        endpoint="chat",
        request_type=request_type,
        status="success" if error_type == "none" else "error",
        error_type=error_type,
    )


async def test_stream_completes_with_done(autojump_clock: trio.testing.MockClock) -> None:
    engine = recording_engine(ttft_ms=5, itl_ms=10)
    async with running_gateway(engines=[engine]) as harness:
        start = trio.current_time()
        exchange = await harness.request("POST", CHAT, chat(stream=True, max_tokens=20))
        elapsed = trio.current_time() - start
        assert exchange.status == 200
        assert exchange.headers[b"content-type"].startswith(b"text/event-stream")
        events = exchange.events()
        assert events[-1] == "[DONE]"
        assert len(exchange.tokens()) == 20
        assert orjson.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        # 5 ms prefill, then 19 more steps of 10 ms: the engine's clock, not the writer's.
        assert elapsed == pytest.approx(0.005 + 19 * 0.010, abs=1e-6)
        assert engine.endings == ["finished"]
        assert count(harness, "none") == 1
        assert harness.metric("trio_gateway_output_tokens_total", model="mock") == 20
        assert_idle(harness, engine)


async def test_disconnect_before_first_token(autojump_clock: trio.testing.MockClock) -> None:
    engine = recording_engine(ttft_ms=10_000)
    async with running_gateway(engines=[engine]) as harness:
        exchange = harness.start("POST", CHAT, chat(stream=True))
        await trio.sleep(1)
        assert engine.inner.active == 1
        assert harness.metric("trio_gateway_queued_requests", model="mock") == 1
        exchange.disconnect()
        await exchange.finished.wait()
        assert trio.current_time() < 2  # not the 10 s of prefill
        assert exchange.status is None  # nothing was ever sent
        assert engine.endings == ["cancelled"]
        assert count(harness, "cancelled") == 1
        assert harness.metric("trio_gateway_disconnected_clients_total", model="mock") == 1
        assert harness.metric("trio_gateway_cancellations_total", reason="client_disconnected") == 1
        assert_idle(harness, engine)


async def test_disconnect_mid_stream(autojump_clock: trio.testing.MockClock) -> None:
    engine = recording_engine(ttft_ms=5, itl_ms=10)
    async with running_gateway(engines=[engine]) as harness:
        exchange = harness.start("POST", CHAT, chat(stream=True, mock={"tokens": 1000}))
        await exchange.wait_until(lambda e: len(e.tokens()) >= 3)
        exchange.disconnect()
        await exchange.finished.wait()
        assert trio.current_time() < 1  # far from the 10 s the stream would take
        assert engine.endings == ["cancelled"]
        assert "[DONE]" not in exchange.events()
        assert count(harness, "cancelled") == 1
        assert_idle(harness, engine)


async def test_disconnect_during_unary_request(autojump_clock: trio.testing.MockClock) -> None:
    engine = recording_engine(ttft_ms=5, itl_ms=10)
    async with running_gateway(engines=[engine]) as harness:
        exchange = harness.start("POST", CHAT, chat(mock={"tokens": 1000}))
        await trio.sleep(0.5)
        exchange.disconnect()
        await exchange.finished.wait()
        assert trio.current_time() < 1
        assert engine.endings == ["cancelled"]
        assert count(harness, "cancelled", "unary") == 1
        assert_idle(harness, engine)


async def test_inactivity_timeout_mid_stream(autojump_clock: trio.testing.MockClock) -> None:
    engine = recording_engine(ttft_ms=5, itl_ms=10)
    config = GatewayConfig(inactivity_timeout_s=7)
    async with running_gateway(config, engines=[engine]) as harness:
        exchange = harness.start("POST", CHAT, chat(stream=True, mock={"stall_after": 3}))
        await exchange.wait_until(lambda e: len(e.tokens()) == 3)
        silent_since = trio.current_time()
        await exchange.finished.wait()
        assert trio.current_time() - silent_since == pytest.approx(7, abs=0.011)
        events = exchange.events()
        assert events[-1] == "[DONE]"
        error = orjson.loads(events[-2])["error"]
        assert error["type"] == "response_timeout"
        assert set(error) == {"message", "type", "code"}
        assert engine.endings == ["cancelled"]
        assert count(harness, "response_timeout") == 1
        assert harness.metric("trio_gateway_cancellations_total", reason="response_timeout") == 1
        assert_idle(harness, engine)


async def test_inactivity_timeout_unary_is_504(autojump_clock: trio.testing.MockClock) -> None:
    engine = recording_engine()
    async with running_gateway(GatewayConfig(inactivity_timeout_s=3), engines=[engine]) as h:
        exchange = await h.request("POST", CHAT, chat(mock={"stall_after": 0}))
        assert exchange.status == 504
        assert exchange.json()["error"]["type"] == "response_timeout"
        assert engine.endings == ["cancelled"]
        assert count(h, "response_timeout", "unary") == 1
        assert_idle(h, engine)


async def test_inactivity_timeout_zero_disables(autojump_clock: trio.testing.MockClock) -> None:
    engine = recording_engine(itl_ms=100_000)
    async with running_gateway(GatewayConfig(inactivity_timeout_s=0), engines=[engine]) as h:
        exchange = await h.request("POST", CHAT, chat(stream=True, max_tokens=3))
        assert trio.current_time() > 150  # two 100 s silences, no timeout
        assert exchange.events()[-1] == "[DONE]"
        assert len(exchange.tokens()) == 3
        assert count(h, "none") == 1


async def test_engine_error_mid_stream(autojump_clock: trio.testing.MockClock) -> None:
    engine = recording_engine()
    async with running_gateway(engines=[engine]) as harness:
        exchange = await harness.request("POST", CHAT, chat(stream=True, mock={"error_after": 3}))
        assert exchange.status == 200
        assert len(exchange.tokens()) == 3
        events = exchange.events()
        assert events[-1] == "[DONE]"
        assert orjson.loads(events[-2])["error"]["type"] == "internal_error"
        assert engine.endings == ["GatewayError"]
        assert count(harness, "internal") == 1
        assert_idle(harness, engine)


async def test_engine_error_before_first_token_is_http_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = recording_engine()
    async with running_gateway(engines=[engine]) as harness:
        exchange = await harness.request("POST", CHAT, chat(stream=True, mock={"error_after": 0}))
        assert exchange.status == 500
        assert exchange.json()["error"]["code"] == "internal_error"
        assert count(harness, "internal") == 1
        assert_idle(harness, engine)


async def test_stream_longer_than_quarts_response_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = recording_engine()
    async with running_gateway(engines=[engine]) as harness:
        exchange = await harness.request(
            "POST", CHAT, chat(stream=True, mock={"tokens": 121, "itl_ms": 1000})
        )
        assert trio.current_time() >= 120
        assert len(exchange.tokens()) == 121
        assert exchange.events()[-1] == "[DONE]"
        assert count(harness, "none") == 1


async def test_bad_requests_do_not_disturb_a_running_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = recording_engine()
    async with running_gateway(engines=[engine]) as harness:
        good = harness.start("POST", CHAT, chat(stream=True, max_tokens=50))
        bad = [
            await harness.request("POST", CHAT, body=b"{not json"),
            await harness.request("POST", CHAT, {"model": "mock"}),
            await harness.request("POST", CHAT, chat(model="nope")),
            await harness.request("POST", CHAT, chat(n=0)),
            await harness.request("POST", CHAT, chat(max_tokens=-1)),
            await harness.request("POST", CHAT, chat(), headers={"content-type": "text/plain"}),
            await harness.request("POST", CHAT, body=b"x" * (GatewayConfig().max_body_bytes + 1)),
        ]
        assert [e.status for e in bad] == [400, 400, 404, 400, 400, 415, 413]
        for exchange in bad:
            assert set(exchange.json()["error"]) == {"message", "type", "param", "code"}
        await good.finished.wait()
        assert len(good.tokens()) == 50
        assert good.events()[-1] == "[DONE]"
        assert_idle(harness, engine)


async def test_unary_response_shape(autojump_clock: trio.testing.MockClock) -> None:
    async with running_gateway() as harness:
        exchange = await harness.request("POST", CHAT, chat(max_tokens=4))
        body = exchange.json()
        assert body["object"] == "chat.completion"
        assert body["id"].startswith("chatcmpl-")
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert len(body["choices"][0]["message"]["content"].split()) == 4
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 4
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 4
        completion = await harness.request(
            "POST", "/v1/completions", {"model": "mock", "prompt": "Say", "max_tokens": 2}
        )
        assert completion.json()["object"] == "text_completion"
        assert completion.json()["choices"][0]["text"]


async def test_include_usage_and_completion_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway() as harness:
        exchange = await harness.request(
            "POST",
            "/v1/completions",
            {
                "model": "mock",
                "prompt": "Once",
                "stream": True,
                "max_tokens": 5,
                "stream_options": {"include_usage": True},
            },
        )
        events = exchange.events()
        assert events[-1] == "[DONE]"
        usage_chunk = orjson.loads(events[-2])
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["completion_tokens"] == 5
        first = orjson.loads(events[0])
        assert first["object"] == "text_completion"


async def test_request_id_header_is_echoed(autojump_clock: trio.testing.MockClock) -> None:
    async with running_gateway() as harness:
        ok = await harness.request("POST", CHAT, chat(max_tokens=1), headers={"x-request-id": "r1"})
        bad = await harness.request("POST", CHAT, {"model": 3}, headers={"x-request-id": "r2"})
        assert ok.headers[b"x-request-id"] == b"r1"
        assert ok.headers[b"x-worker-id"] == b"mock"
        assert bad.headers[b"x-request-id"] == b"r2"


async def test_coalesces_queued_chunks_into_one_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # itl 0: the engine emits the whole answer in one step, and the writer sends it at once.
    async with running_gateway() as harness:
        exchange = await harness.request(
            "POST", CHAT, chat(stream=True, mock={"tokens": 30, "itl_ms": 0})
        )
        assert len(exchange.tokens()) == 30
        # One write with every token, then the end of the stream once the engine returned.
        assert exchange.writes[0].count(b'"content":') == 1 + 30  # the role event, 30 tokens
        assert exchange.writes[1].endswith(b"data: [DONE]\n\n")
        assert len(exchange.writes) == 2


async def test_control_routes(autojump_clock: trio.testing.MockClock) -> None:
    async with running_gateway() as harness:
        models = await harness.request("GET", "/v1/models")
        assert models.json()["data"][0]["id"] == "mock"
        assert (await harness.request("GET", "/health")).status == 200
        assert (await harness.request("GET", "/ready")).status == 200
        assert (await harness.request("GET", "/live")).status == 200
        metrics = await harness.request("GET", "/metrics")
        assert b"trio_gateway_inflight_requests" in metrics.body
        missing = await harness.request("GET", "/nope")
        assert missing.status == 404
        assert missing.json()["error"]["type"] == "invalid_request_error"
        wrong_method = await harness.request("GET", CHAT)
        assert wrong_method.status == 405


async def test_over_capacity_is_429_and_a_queued_client_that_leaves_frees_its_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = GatewayConfig(max_inflight=1, queue_size=1, queue_timeout_s=5)
    async with running_gateway(config) as harness:
        running = harness.start("POST", CHAT, chat(stream=True, mock={"tokens": 1000}))
        await running.wait_until(lambda e: len(e.tokens()) >= 1)
        queued = harness.start("POST", CHAT, chat(stream=True))
        await trio.sleep(0.1)
        assert harness.gateway.router.queued == 1
        full = await harness.request("POST", CHAT, chat())
        assert full.status == 429
        assert full.headers[b"retry-after"] == b"5"
        assert full.json()["error"]["type"] == "overload"
        queued.disconnect()
        await queued.finished.wait()
        assert harness.gateway.router.queued == 0
        waited = harness.start("POST", CHAT, chat())
        await waited.finished.wait()
        assert waited.status == 429  # no slot within the 5 s queue timeout
        assert trio.current_time() >= 5
        assert count(harness, "overload", "unary") == 2
        running.disconnect()
        await running.finished.wait()
        assert harness.metric("trio_gateway_inflight_requests", model="mock") == 0
        assert harness.metric("trio_gateway_queued_requests", model="mock") == 0


class WholeAnswerEngine(RecordingEngine):
    """An engine that, like an OpenAI upstream, answers a unary request whole, late."""

    def __init__(self, answer_after: float) -> None:
        super().__init__(MockEngine(("mock",)))
        self.streams_unary = False
        self.answer_after = answer_after

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        if request.stream:
            await super().generate(request, send)
            return
        await trio.sleep(self.answer_after)
        await send.send(Chunk(tokens=3, finish_reason="stop", prompt_tokens=1, payload=b"{}"))


@pytest.mark.parametrize(("answer_after", "status"), [(90, 200), (599, 200), (601, 504)])
async def test_a_unary_answer_given_whole_is_timed_as_a_whole(
    autojump_clock: trio.testing.MockClock, answer_after: float, status: int
) -> None:
    """A thinking model answering unary in 90 s is not a stalled engine (inactivity 60 s);
    the unary timeout (600 s) bounds it instead."""
    engine = WholeAnswerEngine(answer_after)
    config = GatewayConfig(inactivity_timeout_s=60, unary_timeout_s=600)
    async with running_gateway(config, engines=[engine]) as harness:
        started = trio.current_time()
        exchange = await harness.request("POST", CHAT, chat())
        assert exchange.status == status
        if status == 200:
            assert exchange.body == b"{}"
            assert trio.current_time() - started == pytest.approx(answer_after)
        else:
            assert exchange.json()["error"]["type"] == "response_timeout"
            assert trio.current_time() - started == pytest.approx(600, abs=0.01)
        # The same engine's streams are still held to the inactivity timeout.
        stalled = await harness.request(
            "POST", CHAT, chat(stream=True, mock={"stall_after": 1, "ttft_ms": 0})
        )
        assert "response_timeout" in stalled.events()[-2]


async def test_reasoning_is_activity_for_the_inactivity_timeout_and_ttft(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A thinking model silent in `content` for 90 s is not a stalled engine (timeout 7 s)."""
    engine = recording_engine(ttft_ms=5, itl_ms=10)
    config = GatewayConfig(inactivity_timeout_s=7)
    async with running_gateway(config, engines=[engine]) as harness:
        mock = {"reasoning_tokens": 90, "tokens": 2, "itl_ms": 1000, "ttft_ms": 0}
        started = trio.current_time()
        exchange = await harness.request("POST", CHAT, chat(stream=True, mock=mock))
        assert trio.current_time() - started == pytest.approx(91, abs=1.1)
        events = [orjson.loads(e) for e in exchange.events()[:-1]]
        assert exchange.events()[-1] == "[DONE]"
        assert not any("error" in e for e in events)
        reasoning = [
            e for e in events if e["choices"] and "reasoning_content" in e["choices"][0]["delta"]
        ]
        assert len(reasoning) == 90
        ttft = harness.gateway.metrics.registry.get_sample_value(
            "trio_gateway_time_to_first_token_seconds_sum", {"model": "mock"}
        )
        assert ttft is not None and ttft < 1.5  # the first reasoning token, not the content
        assert count(harness, "none") == 1


class FailsAfterOneChunk(RecordingEngine):
    """An engine whose failure arrives in the same batch as its first output."""

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        send.send_nowait(Chunk(tokens=1, payload=b'data: {"choices":[]}\n\n'))
        raise internal_error("broke right after its first token")


async def test_output_in_the_same_batch_as_a_failure_still_reaches_the_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = FailsAfterOneChunk(MockEngine(("mock",)))
    async with running_gateway(engines=[engine]) as harness:
        exchange = await harness.request("POST", CHAT, chat(stream=True))
    assert exchange.status == 200
    events = exchange.events()
    assert events[0] == '{"choices":[]}'
    assert orjson.loads(events[1])["error"]["type"] == "internal_error"
    assert events[-1] == "[DONE]"
