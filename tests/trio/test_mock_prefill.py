"""The mock engine's prefill under MockClock: the prompt tokens its prefix cache holds are not
prefilled again, and the answer's usage says how many there were, as vLLM's does; in the
engine, through the HTTP app, and on a worker built from its settings."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from tests.support.asgi_client import Exchange, running_gateway
from tests.support.engine_driver import Collector, events, generate, request, running
from tests.support.worker_harness import InMemoryWorker, running_worker
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.errors import GatewayError
from trio_gateway.generation import Endpoint, GenerationRequest, MockOptions

# 4000 characters: 1000 tokens, 62 full blocks of 16 tokens (3968 characters) and 8 tokens
# after them. A second request finds 992 tokens cached and prefills 8.
LONG = "".join(f"line {i:04d} of a long shared system prompt.\n"[:40] for i in range(100))
assert len(LONG) == 4000
CACHED = 992


def usage(collector: Collector, *, stream: bool = True) -> dict[str, Any]:
    if stream:
        last = events(collector.chunks)[-1]
        assert last["choices"] == []
        result: dict[str, Any] = last["usage"]
        return result
    body: dict[str, Any] = orjson.loads(collector.chunks[-1].payload)["usage"]
    return body


def with_usage(
    prompt: str = LONG,
    *,
    stream: bool = True,
    endpoint: Endpoint = "chat",
    mock: MockOptions | None = None,
    session_id: str | None = None,
) -> GenerationRequest:
    req = request(
        prompt, max_tokens=3, stream=stream, endpoint=endpoint, mock=mock, session_id=session_id
    )
    return dataclasses.replace(req, include_usage=True)


async def test_a_cached_prefix_shortens_the_second_prefill(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 5 ms + 100 ms per 1000 uncached tokens: 105 ms cold, 5.8 ms warm.
    engine = MockEngine(ttft_ms=5, itl_ms=10, prefill_ms_per_1k_tokens=100)
    async with running(engine):
        cold = await generate(engine, with_usage())
        warm = await generate(engine, with_usage())
    assert cold.times[0] == pytest.approx(0.105)
    assert warm.times[0] == pytest.approx(0.0058)
    assert cold.times[0] - warm.times[0] == pytest.approx(0.1 * CACHED / 1000)
    assert warm.times[1:] == pytest.approx([t - 0.0992 for t in cold.times[1:]])  # same steps
    assert usage(cold)["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage(warm)["prompt_tokens_details"] == {"cached_tokens": CACHED}
    assert usage(warm)["prompt_tokens"] == 1000


async def test_prefills_queue_first_come_first_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 5 ms each, in parallel; the 100 ms of prefill per 1000 uncached tokens one after another.
    engine = MockEngine(ttft_ms=5, itl_ms=10, prefill_ms_per_1k_tokens=100)
    other = "".join(f"row {i:04d} of another long prompt here.\n"[:40] for i in range(100))
    results: dict[str, Collector] = {}

    async def run(name: str, prompt: str, delay: float) -> None:
        await trio.sleep(delay)
        results[name] = await generate(engine, with_usage(prompt))

    async with running(engine), trio.open_nursery() as nursery:
        nursery.start_soon(run, "first", LONG, 0.0)
        nursery.start_soon(run, "second", other, 0.001)
        nursery.start_soon(run, "warm", LONG, 0.5)  # alone by then: not delayed
    # Times from each request's arrival.
    assert results["first"].times[0] == pytest.approx(0.105)
    # Its 100 ms start when the first one's end, 99 ms after it came; its 5 ms in parallel.
    assert results["second"].times[0] == pytest.approx(0.099 + 0.1 + 0.005)
    assert results["warm"].times[0] == pytest.approx(0.0058)


async def test_a_shared_prefix_counts_and_the_rest_is_prefilled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine(ttft_ms=0, prefill_ms_per_1k_tokens=1000)  # 1 ms a token
    other_question = LONG[:2000] + "x" * 2000  # shares 31 blocks (1984 characters)
    async with running(engine):
        await generate(engine, with_usage())
        collector = await generate(engine, with_usage(other_question))
    assert usage(collector)["prompt_tokens_details"] == {"cached_tokens": 31 * 16}
    assert collector.times[0] == pytest.approx((1000 - 31 * 16) / 1000)


async def test_a_request_s_own_ttft_replaces_the_base_not_the_prefill(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine(ttft_ms=5, prefill_ms_per_1k_tokens=100)
    async with running(engine):
        cold = await generate(engine, with_usage(mock=MockOptions(ttft_ms=50)))
        warm = await generate(engine, with_usage(mock=MockOptions(ttft_ms=0)))
    assert cold.times[0] == pytest.approx(0.150)
    assert warm.times[0] == pytest.approx(0.0008)


@pytest.mark.parametrize("endpoint", ["chat", "completion"])
async def test_unary_answers_report_cached_tokens(
    autojump_clock: trio.testing.MockClock, endpoint: Endpoint
) -> None:
    engine = MockEngine()
    async with running(engine):
        cold = await generate(engine, with_usage(stream=False, endpoint=endpoint))
        warm = await generate(engine, with_usage(stream=False, endpoint=endpoint))
    assert usage(cold, stream=False)["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage(warm, stream=False)["prompt_tokens_details"] == {"cached_tokens": CACHED}


async def test_default_timings_are_unchanged_and_cached_tokens_still_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine()  # prefill_ms_per_1k_tokens 0: ttft 5 ms whatever the cache holds
    async with running(engine):
        cold = await generate(engine, with_usage(endpoint="completion"))
        warm = await generate(engine, with_usage(endpoint="completion"))
    assert cold.times == pytest.approx(warm.times)
    assert cold.times[0] == pytest.approx(0.005)
    assert usage(warm)["prompt_tokens_details"] == {"cached_tokens": CACHED}


async def test_a_disabled_cache_prefills_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine(ttft_ms=0, prefix_cache_blocks=0, prefill_ms_per_1k_tokens=10)
    async with running(engine):
        await generate(engine, with_usage())
        warm = await generate(engine, with_usage())
    assert warm.times[0] == pytest.approx(0.010)
    assert usage(warm)["prompt_tokens_details"] == {"cached_tokens": 0}
    assert len(engine.prefix_cache) == 0


async def test_a_session_s_history_is_its_cached_prefix(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine(ttft_ms=0, prefill_ms_per_1k_tokens=1000)
    async with running(engine):
        await engine.open_session("s1", 60)
        first = await generate(engine, with_usage(session_id="s1"))
        second = await generate(engine, with_usage("and then?", session_id="s1"))
    # The second prompt is LONG + the first answer + "and then?": LONG's full blocks are
    # cached; the block LONG's tail shares with the answer, and what follows, are not.
    prompt = LONG + first.text + "and then?"
    assert usage(second)["prompt_tokens"] == (len(prompt) + 3) // 4
    assert usage(second)["prompt_tokens_details"] == {"cached_tokens": CACHED}
    assert second.times[0] == pytest.approx(((len(prompt) + 3) // 4 - CACHED) / 1000)


async def test_a_session_past_its_kept_history_misses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine()
    async with running(engine):
        await engine.open_session("s1", 60)
        await generate(engine, with_usage(session_id="s1"))
        second = await generate(engine, with_usage("x" * 200, session_id="s1"))
        # Over 4096 characters now: the kept history starts inside LONG, not where it did.
        assert len(engine.sessions["s1"]) == engine.session_capacity
        third = await generate(engine, with_usage("and then?", session_id="s1"))
    assert usage(second)["prompt_tokens_details"] == {"cached_tokens": CACHED}
    assert usage(third)["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_a_request_refused_with_a_400_leaves_the_cache_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine()
    async with running(engine):
        with pytest.raises(GatewayError):
            await engine.generate(request(LONG, n=129), Collector().send)
    assert len(engine.prefix_cache) == 0


CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def http_usage(exchange: Exchange, *, stream: bool) -> dict[str, Any]:
    assert exchange.status == 200, bytes(exchange.body)
    if not stream:
        result: dict[str, Any] = exchange.json()["usage"]
        return result
    data = exchange.events()
    assert data[-1] == "[DONE]"
    last = orjson.loads(data[-2])
    assert last["choices"] == []
    result = last["usage"]
    return result


def bodies(stream: bool) -> list[tuple[str, dict[str, Any]]]:
    """The same 4000-character prefix, to chat (after "system: ") and completions."""
    extra: dict[str, Any] = {"stream": stream, "max_tokens": 2}
    if stream:
        extra["stream_options"] = {"include_usage": True}
    messages = [{"role": "system", "content": LONG}, {"role": "user", "content": "hi"}]
    return [
        (CHAT, {"model": "mock", "messages": messages, **extra}),
        (COMPLETIONS, {"model": "mock", "prompt": LONG + "\nhi", **extra}),
    ]


@pytest.mark.parametrize("stream", [True, False])
async def test_the_app_reports_cached_tokens(
    autojump_clock: trio.testing.MockClock, stream: bool
) -> None:
    async with running_gateway(GatewayConfig()) as harness:
        for path, body in bodies(stream):
            cold = await harness.request("POST", path, body)
            warm = await harness.request("POST", path, body)
            assert http_usage(cold, stream=stream)["prompt_tokens_details"] == {"cached_tokens": 0}
            # "system: " + LONG + "\nuser: hi" is 4017 characters: 62 full blocks.
            assert http_usage(warm, stream=stream)["prompt_tokens_details"] == {
                "cached_tokens": CACHED
            }


async def test_a_worker_s_mock_takes_the_prefix_cache_settings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = {"mock_prefill_ms_per_1k_tokens": 100.0, "mock_prefix_block_tokens": 8}
    async with running_worker("w1", **settings) as server:
        assert isinstance(server.engine, MockEngine)
        assert server.engine.prefix_cache.block_tokens == 8
        worker = InMemoryWorker("ws://w1", handler=server._handle)
        async with running_gateway(engines=[worker]) as harness:
            await worker.wait_connected()
            path, body = bodies(stream=True)[1]  # LONG + "\nhi": 1001 tokens, 125 blocks of 8
            elapsed = []
            usages = []
            for _ in range(2):
                start = trio.current_time()
                exchange = await harness.request("POST", path, body)
                elapsed.append(trio.current_time() - start)
                usages.append(http_usage(exchange, stream=True))
    assert exchange.headers[b"x-worker-id"] == b"w1"
    assert [u["prompt_tokens_details"]["cached_tokens"] for u in usages] == [0, 1000]
    assert elapsed[0] - elapsed[1] == pytest.approx(0.1)  # 100 ms per 1000 tokens saved
