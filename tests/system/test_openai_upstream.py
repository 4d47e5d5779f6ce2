"""`OpenAIUpstream` against a mock OpenAI-compatible server on a real loopback socket.

Every wait is bounded with `trio.fail_after`; the only time that passes is the mock
upstream's own pacing (the "slow" model) and the engine's probe backoff, set to milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from tests.support.ports import refused_port
from tests.support.upstream_server import expected_text, running_upstream
from trio_gateway.engines.upstream.engine import OpenAIUpstream
from trio_gateway.errors import GatewayError
from trio_gateway.generation import Chunk, Endpoint, GenerationRequest
from trio_gateway.openai.errors import error_body, http_status
from trio_gateway.openai.schemas import parse_generation_request
from trio_gateway.openai.sse import completion_text

PROMPT = "hello there world"  # 3 words: the mock upstream's prompt_tokens


def make_request(
    endpoint: Endpoint = "chat", request_id: str = "req-1", **body: Any
) -> GenerationRequest:
    body.setdefault("model", "up-a")
    body.setdefault("stream", True)
    if endpoint == "chat":
        body.setdefault("messages", [{"role": "user", "content": PROMPT}])
    else:
        body.setdefault("prompt", PROMPT)
    return parse_generation_request(body, endpoint, request_id)


@asynccontextmanager
async def running_engine(url: str, **settings: Any) -> AsyncIterator[OpenAIUpstream]:
    engine = OpenAIUpstream(url, **settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        yield engine
        nursery.cancel_scope.cancel()


async def generate(engine: OpenAIUpstream, request: GenerationRequest) -> list[Chunk]:
    send, receive = trio.open_memory_channel[Chunk](math.inf)
    async with receive:
        with send:
            await engine.generate(request, send)
        return [chunk async for chunk in receive]


async def generate_error(
    engine: OpenAIUpstream, request: GenerationRequest
) -> tuple[GatewayError, list[Chunk]]:
    send, receive = trio.open_memory_channel[Chunk](math.inf)
    with pytest.raises(GatewayError) as caught:
        await engine.generate(request, send)
    send.close()
    return caught.value, [chunk async for chunk in receive]


async def until(engine: OpenAIUpstream, condition: Callable[[], bool]) -> None:
    """Wait, one finished /models probe at a time, until `condition()` holds."""
    while not condition():
        await engine.wait_probes(engine.probes + 1)


def text_of(chunks: list[Chunk]) -> str:
    return "".join(completion_text(chunk.payload) for chunk in chunks)


async def first_text(receive: trio.MemoryReceiveChannel[Chunk]) -> str:
    """The text of the first chunk that has some (the role event comes before it)."""
    while not (text := completion_text((await receive.receive()).payload)):
        pass
    return text


def check_final(chunks: list[Chunk], finish_reason: str, prompt_tokens: int | None) -> None:
    assert chunks, "no chunks"
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == finish_reason
    assert chunks[-1].prompt_tokens == prompt_tokens


# -- streams ------------------------------------------------------------------------------


async def test_chat_stream() -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            chunks = await generate(engine, make_request("chat"))
    assert text_of(chunks) == expected_text(4)
    assert sum(c.tokens for c in chunks) == 4
    check_final(chunks, "stop", 3)
    assert upstream.generations[0].path == "/v1/chat/completions"
    assert upstream.generations[0].finished


async def test_completion_stream() -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            chunks = await generate(engine, make_request("completion", max_tokens=3))
    assert text_of(chunks) == expected_text(3)
    assert sum(c.tokens for c in chunks) == 3
    check_final(chunks, "length", 3)
    assert upstream.generations[0].path == "/v1/completions"


async def test_forwards_key_and_request_id_and_the_body_as_it_came() -> None:
    request = make_request(
        "chat",
        request_id="req-42",
        stream=False,
        tools=[{"type": "function", "function": {"name": "f"}}],
        n=2,
        temperature=0.5,
        max_tokens=2,
        mock={"tokens": 7},
        session_id="sess-1",
    )
    with trio.fail_after(10):
        async with (
            running_upstream(api_key="sk-upstream") as upstream,
            running_engine(upstream.url, api_key="sk-upstream") as engine,
        ):
            await until(engine, lambda: engine.available)
            chunks = await generate(engine, request)
    check_final(chunks, "length", 3)
    sent = upstream.generations[0]
    assert sent.headers["authorization"] == "Bearer sk-upstream"
    assert sent.headers["x-request-id"] == "req-42"
    assert sent.body == {
        "model": "up-a",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": False,  # a unary request is relayed unary: the upstream's answer, whole
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "n": 2,
        "temperature": 0.5,
        "max_tokens": 2,
        "mock": {"tokens": 7},  # for a trio-gateway upstream; others ignore it
    }
    assert sent.headers["accept"] == "application/json"
    assert upstream.model_probes[0].headers["authorization"] == "Bearer sk-upstream"
    assert request.body["mock"] == {"tokens": 7}, "the client's body must not be mutated"


async def test_no_key_no_authorization_and_stream_options_kept() -> None:
    request = make_request(
        "completion",
        stream=True,
        stream_options={"include_usage": False, "continuous_usage_stats": True},
    )
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            await generate(engine, request)
    sent = upstream.generations[0]
    assert "authorization" not in sent.headers
    assert sent.body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


@pytest.mark.parametrize(
    ("model", "tokens"),
    [
        ("up-a", 4),  # usage in a chunk of its own after the finish chunk (OpenAI, vLLM)
        ("usage-with-finish", 4),
        ("continuous-usage", 4),
        ("finish-with-text", 4),
        ("no-done", 4),
        ("multi-token", 8),
        ("odd-newlines", 4),
    ],
)
@pytest.mark.parametrize("endpoint", ["chat", "completion"])
async def test_stream_shapes(model: str, tokens: int, endpoint: Endpoint) -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            chunks = await generate(engine, make_request(endpoint, model=model))
    assert text_of(chunks) == expected_text(4, model)
    assert sum(c.tokens for c in chunks) == tokens
    check_final(chunks, "stop", 3)


async def test_no_usage_from_the_upstream() -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            chunks = await generate(engine, make_request(model="no-usage"))
    assert text_of(chunks) == expected_text(4)
    check_final(chunks, "stop", None)


async def test_stream_without_finish_reason_is_internal() -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            error, chunks = await generate_error(engine, make_request(model="no-finish"))
    assert (http_status(error), error.kind.value) == (500, "internal")
    assert error.message == (
        f"The upstream {engine.name} sent a stream that ended without a finish_reason."
    )
    assert text_of(chunks) == expected_text(4)


@pytest.mark.parametrize("endpoint", ["chat", "completion"])
async def test_unary_request_gets_the_upstreams_answer_whole(endpoint: Endpoint) -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            chunks = await generate(engine, make_request(endpoint, stream=False))
    [chunk] = chunks
    assert chunk.payload == upstream.generations[0].answer
    assert (completion_text(chunk.payload), chunk.tokens) == (expected_text(4), 4)
    check_final(chunks, "stop", 3)


async def test_a_unary_answer_to_a_stream_request_is_malformed() -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            error, chunks = await generate_error(engine, make_request(model="unary"))
    assert (error.kind.value, chunks) == ("internal", [])
    assert "a unary answer to a streaming request" in error.message


async def test_finished_streams_leave_the_connection_reusable() -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            await engine.wait_probes(1)  # one connection at a time from here on
            for model in ("up-a", "no-usage", "usage-with-finish", "fail-400", "up-a"):
                with contextlib.suppress(GatewayError):
                    await generate(engine, make_request(model=model))
            await generate(engine, make_request(stream=False))
    ports = [r.client_port for r in upstream.requests]
    assert len(ports) == 7
    assert len(set(ports)) == 1, f"a request opened a connection of its own: {ports}"
    assert not any(r.disconnected for r in upstream.generations)


async def test_concurrent_streams_share_the_client() -> None:
    results: dict[str, str] = {}

    async def one(engine: OpenAIUpstream, i: int) -> None:
        chunks = await generate(engine, make_request(request_id=f"r{i}", max_tokens=i + 1))
        results[f"r{i}"] = text_of(chunks)

    with trio.fail_after(10):
        async with (
            running_upstream() as upstream,
            running_engine(upstream.url) as engine,
            trio.open_nursery() as nursery,
        ):
            for i in range(20):
                nursery.start_soon(one, engine, i)
    assert results == {f"r{i}": expected_text(i + 1) for i in range(20)}
    assert sorted(r.headers["x-request-id"] for r in upstream.generations) == sorted(results)


# -- errors -------------------------------------------------------------------------------


def described(error: GatewayError) -> tuple[object, ...]:
    """What the client sees of an error, its kind, and whether it may be retried or counts
    against the backend."""
    body = error_body(error)["error"]
    return (
        http_status(error),
        body["message"],
        body["type"],
        body["param"],
        body["code"],
        error.kind.value,
        error.retryable,
        error.counts_against_backend,
    )


@pytest.mark.parametrize(
    ("model", "status", "message", "type_", "param", "code", "error_type"),
    [
        ("fail-400", 400, "upstream says 400", "BadRequestError", "temperature", 400, "validation"),
        ("fail-404", 404, "upstream says 404", "BadRequestError", None, 404, "not_found"),
        ("fail-422", 422, "upstream says 422", "BadRequestError", None, 422, "validation"),
        (
            "fail-400-text",
            400,
            "plain text problem from upstream",
            "invalid_request_error",
            None,
            None,
            "validation",
        ),
        ("fail-400-vllm-old", 400, "old vLLM says no", "BadRequestError", None, 400, "validation"),
    ],
)
async def test_upstream_client_errors_stay_client_errors(
    model: str,
    status: int,
    message: str,
    type_: str,
    param: str | None,
    code: int | None,
    error_type: str,
) -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            error, chunks = await generate_error(engine, make_request(model=model))
    assert chunks == []
    assert described(error) == (status, message, type_, param, code, error_type, False, False)


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_upstream_unavailable_statuses_are_retryable(status: int) -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            error, _ = await generate_error(engine, make_request(model=f"fail-{status}"))
    assert (http_status(error), error.kind.value, error.retryable) == (503, "unavailable", True)
    assert f"upstream says {status}" in error.message


async def test_upstream_500_is_internal() -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            error, _ = await generate_error(engine, make_request(model="fail-500"))
    assert (http_status(error), error.kind.value, error.retryable) == (500, "internal", False)
    assert error.message == "upstream says 500"


async def test_upstream_429_is_overload_and_retryable() -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            error, _ = await generate_error(engine, make_request(model="fail-429"))
    assert (http_status(error), error.kind.value, error.retryable) == (429, "overload", True)
    assert error.message == "upstream says 429"


async def test_rejected_gateway_key_is_internal_and_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-wrong-secret-123"
    with trio.fail_after(10):
        async with (
            running_upstream(api_key="sk-right") as upstream,
            running_engine(upstream.url, api_key=secret, retry_initial=0.01) as engine,
        ):
            await engine.wait_probes(2)
            assert engine.available is False
            error, _ = await generate_error(engine, make_request())
    assert (http_status(error), error.kind.value, error.retryable) == (500, "internal", True)
    assert "credentials" in error.message
    assert secret not in error.message
    assert secret not in repr(engine)
    assert "HTTP 401" in caplog.text
    assert secret not in caplog.text


async def test_connection_refused_is_unavailable_and_retryable() -> None:
    with trio.fail_after(10), refused_port() as port:
        url = f"http://127.0.0.1:{port}/v1"
        async with running_engine(url, retry_initial=0.01) as engine:
            await engine.wait_probes(3)  # the probe loop keeps retrying, and survives
            assert engine.available is False
            assert not engine.models
            error, chunks = await generate_error(engine, make_request())
    assert chunks == []
    assert (http_status(error), error.kind.value, error.retryable) == (503, "unavailable", True)


async def test_upstream_going_away_turns_the_engine_unavailable() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with running_upstream(graceful_timeout=0.05) as upstream:
                engine = OpenAIUpstream(upstream.url)  # probes every 30 s: requests tell
                await nursery.start(engine.run)
                await until(engine, lambda: engine.available)
                assert text_of(await generate(engine, make_request())) == expected_text(4)
            # The upstream is gone; the engine runs on.
            probes = engine.probes
            error, _ = await generate_error(engine, make_request())
            assert (error.kind.value, error.retryable) == ("unavailable", True)
            assert engine.available is False
            with trio.fail_after(2):  # it probes at once, not at its next refresh in 30 s
                await engine.wait_probes(probes + 1)
            assert engine.available is False
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("model", "status", "message", "type_", "param", "code", "error_type", "before"),
    [
        ("inband-error", 500, "out of KV cache", "InternalServerError", None, 500, "internal", 2),
        (
            "inband-error-400",
            400,
            "bad logit bias",
            "BadRequestError",
            "logit_bias",
            400,
            "validation",
            2,
        ),
        (
            "llamacpp-error",
            400,
            "the request exceeds the available context size",
            "exceed_context_size_error",
            None,
            400,
            "validation",
            1,
        ),
    ],
)
async def test_inband_error_frame(
    model: str,
    status: int,
    message: str,
    type_: str,
    param: str | None,
    code: int,
    error_type: str,
    before: int,
) -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            error, chunks = await generate_error(engine, make_request(model=model))
    assert text_of(chunks) == expected_text(before)
    assert described(error) == (status, message, type_, param, code, error_type, False, False)


async def test_connection_lost_mid_stream() -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            error, chunks = await generate_error(engine, make_request(model="drop"))
            early, nothing = await generate_error(engine, make_request(model="drop-early"))
    assert text_of(chunks) == "t0 t1 "
    assert (http_status(error), error.kind.value, error.retryable) == (503, "unavailable", False)
    assert nothing == []
    assert (http_status(early), early.kind.value, early.retryable) == (503, "unavailable", True)


async def test_generate_needs_run() -> None:
    with trio.fail_after(10):
        async with running_upstream() as upstream:
            engine = OpenAIUpstream(upstream.url)
            error, _ = await generate_error(engine, make_request())
            assert (error.kind.value, error.retryable) == ("unavailable", True)
            async with trio.open_nursery() as nursery:
                await nursery.start(engine.run)
                assert engine.running
                assert text_of(await generate(engine, make_request())) == expected_text(4)
                nursery.cancel_scope.cancel()
            assert not engine.running
            assert engine.available is False
            error, _ = await generate_error(engine, make_request())
            assert (error.kind.value, error.retryable) == ("unavailable", True)
    assert len(upstream.generations) == 1


async def test_stopping_the_engine_ends_its_streams_as_unavailable() -> None:
    """What the gateway's `remove_engine` relies on: cancelling `run` closes the client, and
    a stream in flight on it fails at once as `unavailable`, not retryable (it had begun)."""
    errors: list[GatewayError] = []

    async def one(engine: OpenAIUpstream, send: trio.MemorySendChannel[Chunk]) -> None:
        try:
            await engine.generate(make_request(model="slow"), send)
        except GatewayError as error:
            errors.append(error)

    with trio.fail_after(10):
        async with running_upstream() as upstream, trio.open_nursery() as outer:
            engine = OpenAIUpstream(upstream.url)
            send, receive = trio.open_memory_channel[Chunk](math.inf)
            async with trio.open_nursery() as engine_scope:
                await engine_scope.start(engine.run)
                outer.start_soon(one, engine, send)
                assert await first_text(receive) == "t0 "
                engine_scope.cancel_scope.cancel()
            with trio.fail_after(0.5):
                await upstream.wait_until(lambda: upstream.generations[0].disconnected)
    assert [(e.kind.value, e.retryable) for e in errors] == [("unavailable", False)]


# -- cancellation and backpressure --------------------------------------------------------


@pytest.mark.parametrize("parked_in", ["read", "send"])
async def test_cancelling_the_caller_closes_the_upstream_stream(parked_in: str) -> None:
    """Cancelled while waiting for the upstream, or while blocked on a full channel (a slow
    client): either way the upstream sees the connection close at once."""
    outcome: list[str] = []

    async def caller(
        engine: OpenAIUpstream, send: trio.MemorySendChannel[Chunk], scope: trio.CancelScope
    ) -> None:
        with scope:
            try:
                await engine.generate(make_request(model="slow"), send)
            except trio.Cancelled:
                outcome.append("cancelled")
                raise
            outcome.append("returned")

    with trio.fail_after(10):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            send, receive = trio.open_memory_channel[Chunk](1)
            scope = trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller, engine, send, scope)
                if parked_in == "read":
                    assert await first_text(receive) == "t0 "
                else:
                    await upstream.wait_until(
                        lambda: (
                            bool(upstream.generations) and upstream.generations[0].events_sent >= 3
                        )  # role, t0, t1
                    )
                    await trio.testing.wait_all_tasks_blocked(cushion=0.01)
                    assert send.statistics().tasks_waiting_send == 1  # t0 queued, t1 waits
                scope.cancel()
            record = upstream.generations[0]
            # At once: well within the engine's 1 s cleanup deadline, and before the slow
            # stream (50 ms a token) got far.
            with trio.fail_after(0.5):
                await upstream.wait_until(lambda: record.disconnected)
            assert not record.finished
            assert record.events_sent < 6  # of 202
    assert outcome == ["cancelled"]
    assert scope.cancelled_caught


async def test_a_slow_reader_holds_back_the_upstream() -> None:
    tokens = 1000  # 64 KiB each: far more than the loopback socket buffers hold
    with trio.fail_after(30):
        async with running_upstream() as upstream, running_engine(upstream.url) as engine:
            send, receive = trio.open_memory_channel[Chunk](1)
            request = make_request("completion", model="flood", max_tokens=tokens)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(engine.generate, request, send)
                await upstream.wait_until(lambda: bool(upstream.generations))
                # Nobody reads: the engine fills the channel and parks in `send`; the
                # upstream fills the socket buffers and parks in its write.
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                stats = send.statistics()
                assert (stats.current_buffer_used, stats.tasks_waiting_send) == (1, 1)
                record = upstream.generations[0]
                assert not record.finished
                assert record.events_sent < tokens // 2
                # Read everything: the rest flows, intact.
                texts, last = 0, None
                while last is None or last.finish_reason is None:
                    last = await receive.receive()
                    texts += len(completion_text(last.payload))
            assert record.finished
            assert texts == tokens * 64 * 1024
            assert last.finish_reason == "length"


# -- models and availability --------------------------------------------------------------


async def test_models_and_availability_from_the_upstream() -> None:
    with trio.fail_after(10):
        async with running_upstream(models=["m-1", "m-2"]) as upstream:
            async with running_engine(upstream.url) as engine:
                assert engine.available is False  # started without waiting for the upstream
                await engine.wait_probes(1)
                assert engine.available is True
                assert engine.models == ("m-1", "m-2")
            assert engine.available is False  # not running any more
            async with running_engine(upstream.url, models=("mine",)) as engine:
                await engine.wait_probes(1)
                assert engine.available is True
                assert engine.models == ("mine",)


async def test_availability_follows_the_models_probe() -> None:
    with trio.fail_after(10):
        async with (
            running_upstream(models=["m-1"], models_status=503) as upstream,
            running_engine(upstream.url, retry_initial=0.01, refresh_interval=0.02) as engine,
        ):
            await engine.wait_probes(3)  # retried, with backoff
            assert engine.available is False
            assert not engine.models
            assert len(upstream.model_probes) >= 3
            upstream.models_status = 200
            await until(engine, lambda: engine.available)
            assert engine.models == ("m-1",)
            upstream.models = ["m-1", "m-3"]  # refreshed periodically
            await until(engine, lambda: engine.models == ("m-1", "m-3"))
            upstream.models_status = 500
            await until(engine, lambda: not engine.available)


# -- a kept-alive connection closed by the server as it is reused --------------------------


class ClosingUpstream:
    """A raw HTTP/1.1 upstream that closes every reused connection without answering, as a
    server whose keep-alive timer fires just as the client sends on that connection."""

    def __init__(self) -> None:
        self.dropped = 0
        self.answered = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        buffer = b""
        served = 0
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some()
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(buffer) < length:
                    buffer += await stream.receive_some()
                buffer = buffer[length:]
                if served and head.startswith(b"POST"):
                    self.dropped += 1
                    return  # closed without a response
                served += 1
                if head.startswith(b"GET /v1/models"):
                    body = b'{"object":"list","data":[{"id":"up-a","object":"model"}]}'
                    kind = b"application/json"
                else:
                    self.answered += 1
                    chunk = (
                        b'{"id":"x","object":"chat.completion.chunk","created":0,"model":"up-a",'
                        b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}'
                    )
                    body = b"data: " + chunk + b"\n\ndata: [DONE]\n\n"
                    kind = b"text/event-stream"
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: "
                    + kind
                    + b"\r\ncontent-length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )


async def test_a_reused_connection_closed_without_an_answer_is_sent_again() -> None:
    upstream = ClosingUpstream()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(
                partial(trio.serve_tcp, upstream.serve, 0, host="127.0.0.1")
            )
            port = listener.socket.getsockname()[1]
            async with running_engine(f"http://127.0.0.1:{port}/v1") as engine:
                await until(engine, lambda: engine.available)
                # The probe's connection is idle in the pool: the first request reuses it.
                chunks = await generate(engine, make_request())
                assert text_of(chunks) == "hi"
                chunks = await generate(engine, make_request(request_id="req-2"))
                assert text_of(chunks) == "hi"
            nursery.cancel_scope.cancel()
    assert upstream.dropped >= 1
    assert upstream.answered == 2
