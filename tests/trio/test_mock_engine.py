"""The mock engine under MockClock: timing, limits, cancellation, failures, backpressure, and
the answer's shapes as the engine delivers them (the shapes themselves: test_mock_answer.py)."""

from __future__ import annotations

import zlib

import orjson
import pytest
import trio
import trio.testing

from tests.support.engine_driver import PROMPT, Collector, events, generate, request, running
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.mock_answer import WORDS, prompt_token_count
from trio_gateway.errors import GatewayError
from trio_gateway.generation import Chunk, GenerationRequest, MockOptions
from trio_gateway.openai.errors import error_body, http_status, openai_type


def words(prompt: str, count: int) -> str:
    seed = zlib.crc32(prompt.encode())
    return "".join(
        ("" if i == 0 else " ") + WORDS[(seed + i * 7) % len(WORDS)] for i in range(count)
    )


async def test_run_reports_started(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine()
    assert engine.started is False
    async with running(engine):
        assert engine.started is True
        assert engine.active == 0
        assert engine.name == "mock"
        assert engine.models == ("mock",)


async def test_ttft_then_one_token_per_itl(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine(ttft_ms=250, itl_ms=500)
    async with running(engine):
        start = trio.current_time()
        collector = await generate(engine, request(max_tokens=4))
        assert trio.current_time() - start == pytest.approx(1.75)
    assert collector.times == pytest.approx([0.25, 0.75, 1.25, 1.75])
    assert engine.active == 0


async def test_default_millisecond_timing(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine(ttft_ms=5, itl_ms=10)
    async with running(engine):
        collector = await generate(engine, request(max_tokens=20))
    assert len(collector.chunks) == 20
    assert collector.times[0] == pytest.approx(0.005)
    assert collector.times[-1] == pytest.approx(0.005 + 19 * 0.010)
    gaps = [b - a for a, b in zip(collector.times, collector.times[1:], strict=False)]
    assert gaps == pytest.approx([0.010] * 19)


async def test_max_tokens_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine(default_tokens=100)
    async with running(engine):
        collector = await generate(engine, request(max_tokens=7))
    assert len(collector.chunks) == 7
    assert [c.finish_reason for c in collector.chunks] == [None] * 6 + ["length"]
    assert [c.prompt_tokens for c in collector.chunks] == [None] * 6 + [prompt_token_count(PROMPT)]
    assert collector.text == words(PROMPT, 7)


async def test_default_tokens_finish_with_stop(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine(default_tokens=5)
    async with running(engine):
        collector = await generate(engine, request())
    assert len(collector.chunks) == 5
    assert collector.chunks[-1].finish_reason == "stop"


async def test_mock_tokens_below_max_tokens_finish_with_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine()
    async with running(engine):
        collector = await generate(engine, request(max_tokens=10, mock=MockOptions(tokens=3)))
    assert len(collector.chunks) == 3
    assert collector.chunks[-1].finish_reason == "stop"


async def test_max_tokens_below_mock_tokens_finish_with_length(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine()
    async with running(engine):
        collector = await generate(engine, request(max_tokens=2, mock=MockOptions(tokens=30)))
    assert len(collector.chunks) == 2
    assert collector.chunks[-1].finish_reason == "length"


async def test_zero_tokens_is_one_empty_final_chunk(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine(ttft_ms=40)
    async with running(engine):
        collector = await generate(engine, request(mock=MockOptions(tokens=0)))
    [chunk] = collector.chunks
    assert (chunk.text, chunk.tokens, chunk.finish_reason) == ("", 0, "stop")
    assert chunk.prompt_tokens == prompt_token_count(PROMPT)
    assert collector.times == pytest.approx([0.040])
    role, final = events(collector.chunks)
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert final["choices"][0]["delta"] == {}
    assert final["choices"][0]["finish_reason"] == "stop"


async def test_mock_timing_overrides(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine(ttft_ms=5, itl_ms=10)
    async with running(engine):
        mock = MockOptions(tokens=3, ttft_ms=1000, itl_ms=250)
        collector = await generate(engine, request(mock=mock))
    assert collector.times == pytest.approx([1.0, 1.25, 1.5])


async def test_stop_strings_are_applied(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine()
    full = words(PROMPT, 3)
    third = full.split(" ")[2]
    async with running(engine):
        collector = await generate(engine, request(stop=(third,), mock=MockOptions(tokens=10)))
    assert collector.chunks[-1].finish_reason == "stop"
    assert collector.text == full[: full.index(third)]


async def test_requests_in_flight_share_engine_steps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine(ttft_ms=250, itl_ms=500)
    results: list[Collector] = []

    async def one(delay: float) -> None:
        await trio.sleep(delay)
        results.append(await generate(engine, request(max_tokens=3)))

    async with running(engine):
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 0.0)
            nursery.start_soon(one, 0.6)
    first, second = sorted(results, key=lambda c: c.start)
    assert [t + first.start - start for t in first.times] == pytest.approx([0.25, 0.75, 1.25])
    # Submitted at 0.6 with 0.25 of prefill (0.85), it waits for the batch's step at 1.25.
    assert [t + second.start - start for t in second.times] == pytest.approx([1.25, 1.75, 2.25])


async def test_max_num_seqs_queues_the_rest(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine(ttft_ms=0, itl_ms=100, max_num_seqs=2)
    ends: list[float] = []

    async def one() -> None:
        await generate(engine, request(max_tokens=5))
        ends.append(trio.current_time())

    async with running(engine):
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
            await trio.sleep(0.01)
            assert len(engine.scheduler.running) == 2
            assert len(engine.scheduler.waiting) == 3
            assert engine.active == 5
    # Three waves of two, two and one: 5 tokens 0.1 s apart, the next wave's first token in
    # the step where the previous wave's last one was emitted.
    assert [round(t - start, 6) for t in sorted(ends)] == [0.4, 0.4, 0.8, 0.8, 1.2]
    assert engine.active == 0


async def test_cancelling_the_caller_removes_the_sequence_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine(ttft_ms=5, itl_ms=10)
    send, receive = trio.open_memory_channel[Chunk](10_000)
    async with running(engine):
        with trio.move_on_after(0.5) as scope:
            await engine.generate(request(mock=MockOptions(tokens=1000)), send)
        assert scope.cancelled_caught
        assert engine.active == 0
        count = 0
        while True:
            try:
                receive.receive_nowait()
            except trio.WouldBlock:
                break
            count += 1
        assert count == 50  # 0.005, 0.015, ..., 0.495
        await trio.sleep(10)
        with pytest.raises(trio.WouldBlock):
            receive.receive_nowait()


async def test_cancelling_before_the_first_token(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine(ttft_ms=10_000)
    send, receive = trio.open_memory_channel[Chunk](10)
    async with running(engine):
        with trio.move_on_after(1):
            await engine.generate(request(), send)
        assert engine.active == 0
        assert trio.current_time() < 2
        await trio.sleep(20_000)
        with pytest.raises(trio.WouldBlock):
            receive.receive_nowait()


async def test_cancelling_a_waiting_request(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine(ttft_ms=0, itl_ms=100, max_num_seqs=1)
    async with running(engine):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(generate, engine, request(max_tokens=10))
            await trio.sleep(0.01)
            send, receive = trio.open_memory_channel[Chunk](10)
            with trio.move_on_after(0.1):
                await engine.generate(request(), send)
            assert len(engine.scheduler.waiting) == 0
            assert engine.active == 1
        assert engine.active == 0
        with pytest.raises(trio.WouldBlock):
            receive.receive_nowait()


async def test_cancelling_the_running_request_admits_the_next_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine(ttft_ms=250, itl_ms=1000, max_num_seqs=1)
    second: list[Collector] = []

    async def waiter() -> None:
        second.append(await generate(engine, request(max_tokens=2)))

    async with running(engine):
        start = trio.current_time()
        send, _receive = trio.open_memory_channel[Chunk](100)
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(3.5):
                nursery.start_soon(waiter)
                await engine.generate(request(), send)
            assert engine.active == 1
            assert engine.scheduler.running == []  # the slot is free at once ...
            assert len(engine.scheduler.waiting) == 1
            await trio.testing.wait_all_tasks_blocked()
            assert len(engine.scheduler.running) == 1  # ... and the engine woke to fill it
            assert trio.current_time() - start == pytest.approx(3.5)
    # Freed at 3.5, admitted then (not at the old batch's next step), 0.25 of prefill.
    [collector] = second
    assert [t + collector.start - start for t in collector.times] == pytest.approx([3.75, 4.75])


async def test_error_after_raises_api_error(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine(ttft_ms=5, itl_ms=10)
    collector = Collector()
    async with running(engine):
        with pytest.raises(GatewayError) as caught:
            await engine.generate(request(mock=MockOptions(error_after=3)), collector.send)
        assert engine.active == 0
    assert http_status(caught.value) == 500
    assert error_body(caught.value)["error"]["code"] == "internal_error"
    assert caught.value.kind.value == "internal"
    assert "after 3 tokens" in caught.value.message
    chunks = []
    while True:
        try:
            chunks.append(collector.receive.receive_nowait())
        except trio.WouldBlock:
            break
    assert len(chunks) == 3
    assert all(c.finish_reason is None for c in chunks)


async def test_stall_after_holds_until_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine(ttft_ms=5, itl_ms=10)
    send, receive = trio.open_memory_channel[Chunk](100)
    async with running(engine):
        with trio.move_on_after(3600) as scope:
            await engine.generate(request(mock=MockOptions(stall_after=2)), send)
        assert scope.cancelled_caught
        assert engine.active == 0
    assert [receive.receive_nowait().finish_reason for _ in range(2)] == [None, None]
    with pytest.raises(trio.WouldBlock):
        receive.receive_nowait()


async def test_full_channel_pauses_the_sequence_until_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    capacity = 3
    engine = MockEngine(ttft_ms=0, itl_ms=100)
    send, receive = trio.open_memory_channel[Chunk](capacity)
    finished = trio.Event()

    async def producer() -> None:
        await engine.generate(request(mock=MockOptions(tokens=8)), send)
        finished.set()

    async with running(engine), trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.sleep(5)
        [seq] = engine.scheduler.running
        assert seq.generated == capacity
        await trio.sleep(60)
        assert seq.generated == capacity  # no progress while nobody reads
        assert not finished.is_set()

        first = await receive.receive()
        assert first.text == words(PROMPT, 1)
        await trio.sleep(0.15)  # the next engine step (at most 0.1 s away) retries
        assert seq.generated == capacity + 1
        await trio.sleep(5)
        assert seq.generated == capacity + 1  # one freed slot, one token: no burst

        rest = [await receive.receive() for _ in range(7)]
        await finished.wait()
    chunks = [first, *rest]
    assert "".join(c.text for c in chunks) == words(PROMPT, 8)
    assert [c.finish_reason for c in chunks] == [None] * 7 + ["stop"]
    assert engine.active == 0


async def test_generate_before_run_starts(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine(ttft_ms=250, itl_ms=500)
    collector = Collector()
    generated = trio.Event()

    async def produce() -> None:
        await engine.generate(request(max_tokens=2), collector.send)
        generated.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.read)
        nursery.start_soon(produce)
        await trio.sleep(0.1)
        assert engine.active == 1
        assert collector.chunks == []
        await nursery.start(engine.run)
        await generated.wait()
        nursery.cancel_scope.cancel()
    assert collector.times == pytest.approx([0.25, 0.75])
    assert engine.active == 0


async def test_max_tokens_equal_to_the_answer_finishes_with_length(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # As vLLM reports it: the limit was reached, whether or not the model would have gone on.
    engine = MockEngine()
    async with running(engine):
        collector = await generate(engine, request(max_tokens=4, mock=MockOptions(tokens=4)))
    assert len(collector.chunks) == 4
    assert collector.chunks[-1].finish_reason == "length"


# --- the answer's shapes, as the engine delivers them ---------------------------------------

TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {}}}]


def choice_words(prompt: str, index: int, count: int) -> str:
    return words_from(zlib.crc32(prompt.encode()) + index, count)


def words_from(seed: int, count: int) -> str:
    return "".join(
        ("" if i == 0 else " ") + WORDS[(seed + i * 7) % len(WORDS)] for i in range(count)
    )


async def test_stream_payloads_carry_the_text(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine()
    async with running(engine):
        collector = await generate(engine, request(max_tokens=5))
    decoded = events(collector.chunks)
    assert decoded[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(decoded) == 1 + 5  # the role, then one event a token, the last one finishing
    assert "".join(e["choices"][0]["delta"]["content"] for e in decoded[1:]) == collector.text
    assert decoded[-1]["choices"][0]["finish_reason"] == "length"
    assert [e["object"] for e in decoded] == ["chat.completion.chunk"] * 6


async def test_n_choices_advance_in_lockstep(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine(ttft_ms=250, itl_ms=500)
    async with running(engine):
        collector = await generate(engine, request(max_tokens=4, n=3))
    assert collector.times == pytest.approx([0.25, 0.75, 1.25, 1.75])  # one step, n tokens
    assert [c.tokens for c in collector.chunks] == [3, 3, 3, 3]
    assert collector.text == words(PROMPT, 4)  # `text` is the first choice's
    decoded = events(collector.chunks)
    assert [e["choices"][0]["index"] for e in decoded] == [0, 1, 2] * 5
    for index in range(3):
        deltas = [e["choices"][0]["delta"] for e in decoded if e["choices"][0]["index"] == index]
        assert "".join(d["content"] for d in deltas) == choice_words(PROMPT, index, 4)
    assert len({choice_words(PROMPT, index, 4) for index in range(3)}) == 3
    assert [c.finish_reason for c in collector.chunks] == [None, None, None, "length"]


async def test_a_choice_that_stops_early_stops_producing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A stop string in the second choice's third token that the first choice never says.
    second = choice_words(PROMPT, 1, 3).split(" ")[2]
    assert second not in words(PROMPT, 6)
    engine = MockEngine()
    async with running(engine):
        collector = await generate(engine, request(max_tokens=6, n=2, stop=(second,)))
    assert [c.tokens for c in collector.chunks] == [2, 2, 2, 1, 1, 1]
    assert collector.chunks[-1].finish_reason == "length"  # the first choice's
    finals = [e["choices"][0] for e in events(collector.chunks) if e["choices"][0]["finish_reason"]]
    assert [(c["index"], c["finish_reason"], c["stop_reason"]) for c in finals] == [
        (1, "stop", second),
        (0, "length", None),
    ]


@pytest.mark.parametrize(
    ("req", "param"),
    [
        (request(n=129), "n"),
        (request(mock=MockOptions(tool_calls=1)), "mock.tool_calls"),
        (request(body={"top_logprobs": 2}), "top_logprobs"),
    ],
)
async def test_an_answer_the_mock_cannot_give_is_a_400_before_anything_runs(
    autojump_clock: trio.testing.MockClock, req: GenerationRequest, param: str
) -> None:
    engine = MockEngine()
    collector = Collector()
    async with running(engine):
        with pytest.raises(GatewayError) as caught:
            await engine.generate(req, collector.send)
        assert engine.active == 0
    assert (http_status(caught.value), openai_type(caught.value), caught.value.param) == (
        400,
        "invalid_request_error",
        param,
    )
    with pytest.raises(trio.WouldBlock):
        collector.receive.receive_nowait()


async def test_reasoning_content_and_tool_calls_take_one_step_a_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine(ttft_ms=0, itl_ms=100)
    mock = MockOptions(tokens=2, reasoning_tokens=3, tool_calls=1)
    async with running(engine):
        collector = await generate(engine, request(mock=mock, body={"tools": TOOLS}))
    steps = len(collector.chunks)
    assert steps >= 3 + 2 + 1 + 3  # reasoning, content, the call's header, 3+ fragments
    assert collector.times == pytest.approx([0.1 * i for i in range(steps)])
    assert all(c.tokens == 1 for c in collector.chunks)
    assert [bool(c.text) for c in collector.chunks[:6]] == [False] * 3 + [True] * 2 + [False]
    assert collector.text == words(PROMPT, 2)
    assert collector.chunks[-1].finish_reason == "tool_calls"
    deltas = [e["choices"][0]["delta"] for e in events(collector.chunks)[1:]]
    assert [next(iter(d)) for d in deltas] == (
        ["reasoning_content"] * 3 + ["content"] * 2 + ["tool_calls"] * (steps - 5)
    )
    assert deltas[5]["tool_calls"][0]["function"]["name"] == "search"
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[5:])
    assert set(orjson.loads(arguments)) == {"query"}


async def test_unary_answer_is_the_last_chunk_s_payload(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine()
    async with running(engine):
        collector = await generate(engine, request(max_tokens=3, n=2, stream=False))
    assert [c.payload for c in collector.chunks[:-1]] == [b"", b""]
    body = orjson.loads(collector.chunks[-1].payload)
    assert body["object"] == "chat.completion"
    assert [c["message"]["content"] for c in body["choices"]] == [
        choice_words(PROMPT, 0, 3),
        choice_words(PROMPT, 1, 3),
    ]
    assert body["usage"]["completion_tokens"] == sum(c.tokens for c in collector.chunks) == 6
    assert body["usage"]["prompt_tokens"] == prompt_token_count(PROMPT)


async def test_completions_stream_text_events(autojump_clock: trio.testing.MockClock) -> None:
    engine = MockEngine()
    async with running(engine):
        collector = await generate(engine, request(max_tokens=3, endpoint="completion"))
    decoded = events(collector.chunks)
    assert len(decoded) == 3  # no role event
    assert [e["object"] for e in decoded] == ["text_completion"] * 3
    assert "".join(e["choices"][0]["text"] for e in decoded) == words(PROMPT, 3)


async def test_a_session_continues_the_first_choice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine()
    async with running(engine):
        await engine.open_session("s1", 60)
        collector = await generate(engine, request(max_tokens=3, n=2, session_id="s1"))
    assert engine.sessions["s1"] == PROMPT + collector.text
    assert collector.text == words(PROMPT, 3)


async def test_a_full_channel_pauses_every_choice_and_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine(ttft_ms=0, itl_ms=100)
    send, receive = trio.open_memory_channel[Chunk](1)
    chunks: list[Chunk] = []

    async def slow_reader() -> None:
        async for chunk in receive:
            chunks.append(chunk)
            if chunk.finish_reason is not None:
                return
            await trio.sleep(0.35)  # three steps refused, then one taken

    async with running(engine), trio.open_nursery() as nursery:
        nursery.start_soon(slow_reader)
        await engine.generate(request(n=2, mock=MockOptions(tokens=6)), send)
    assert [c.tokens for c in chunks] == [2] * 6
    decoded = events(chunks)
    assert sum(1 for e in decoded if "role" in e["choices"][0]["delta"]) == 2  # sent once
    for index in range(2):
        text = "".join(
            e["choices"][0]["delta"]["content"]
            for e in decoded[2:]
            if e["choices"][0]["index"] == index
        )
        assert text == choice_words(PROMPT, index, 6)


async def test_error_after_counts_steps_of_every_choice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = MockEngine()
    collector = Collector()
    async with running(engine):
        with pytest.raises(GatewayError, match="after 2 tokens"):
            await engine.generate(request(n=3, mock=MockOptions(error_after=2)), collector.send)
    chunks = [collector.receive.receive_nowait() for _ in range(2)]
    assert [c.tokens for c in chunks] == [3, 3]
    with pytest.raises(trio.WouldBlock):
        collector.receive.receive_nowait()
