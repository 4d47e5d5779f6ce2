"""`/v1/embeddings`, `/tokenize` and `/detokenize` through the whole gateway on MockClock:
the same auth, routing, admission, metrics, end line and error classification as the
completions, answered whole by the backend that serves the model (the mock, a worker)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.asgi_client import Harness, running_gateway
from tests.support.worker_harness import InMemoryWorker, gateway_on_worker
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.mock_answer import non_generative as mock_answer
from trio_gateway.generation import Chunk, Endpoint, GenerationRequest
from trio_gateway.openai.non_generative import parse_request
from trio_gateway.plane.codec import encode
from trio_gateway.plane.frames import PROTOCOL_VERSION, Hello
from trio_gateway.tracing import RequestTracing

EMBEDDINGS = {"model": "mock", "input": ["hello world", "trio"], "dimensions": 16}
TOKENIZE = {"model": "mock", "prompt": "Hello, gateway!"}
DETOKENIZE = {"model": "mock", "tokens": mock_answer.tokenize("Hello, gateway!")[0]}
ROUTES: dict[str, tuple[Endpoint, dict[str, Any]]] = {
    "/v1/embeddings": ("embeddings", EMBEDDINGS),
    "/tokenize": ("tokenize", TOKENIZE),
    "/detokenize": ("detokenize", DETOKENIZE),
}


def the_mocks_own(endpoint: Endpoint, body: dict[str, Any]) -> Any:
    """What the mock answers to `body`, asked directly, not through the gateway."""
    chunk = mock_answer.answer(parse_request(body, endpoint, "direct"), 32768)
    return orjson.loads(chunk.payload)


def counted(harness: Harness, endpoint: str, status: str = "success", **labels: str) -> float:
    return harness.metric(
        "trio_gateway_requests_total",
        model=labels.get("model", "mock"),
        endpoint=endpoint,
        request_type="unary",
        status=status,
        error_type=labels.get("error_type", "none"),
    )


async def test_each_route_answers_as_the_mock_does_and_is_counted_under_its_endpoint(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_gateway.requests")
    async with running_gateway() as harness:
        for path, (endpoint, body) in ROUTES.items():
            answer = await harness.request("POST", path, body, headers={"x-request-id": path})
            assert answer.status == 200, (path, answer.body)
            assert answer.headers[b"content-type"] == b"application/json"
            assert answer.headers[b"x-request-id"] == path.encode()
            assert answer.json() == the_mocks_own(endpoint, body), path
            assert counted(harness, endpoint) == 1, path
        ok = {"backend": "mock", "model": "mock", "status": "success", "error_type": "none"}
        assert harness.metric("trio_gateway_backend_requests_total", **ok) == 3
        # No first token: their latency is the duration's, the TTFT series stay the chat's.
        assert harness.metric("trio_gateway_time_to_first_token_seconds_count", model="mock") == 0
        assert harness.metric("trio_gateway_request_duration_seconds_count", model="mock") == 3
        assert harness.metric("trio_gateway_inflight_requests", model="mock") == 0
        assert harness.metric("trio_gateway_queued_requests", model="mock") == 0
    ends = [r for r in caplog.records if r.name == "trio_gateway.requests"]
    assert [(r.endpoint, r.status, r.error_type) for r in ends] == [  # type: ignore[attr-defined]
        ("embeddings", 200, "none"),
        ("tokenize", 200, "none"),
        ("detokenize", 200, "none"),
    ]
    assert ends[0].prompt_tokens == 4  # type: ignore[attr-defined]  # "hello world" 3 + "trio" 1
    assert {r.ttft_s for r in ends} == {None}  # type: ignore[attr-defined]


async def test_each_route_is_one_span_named_for_it(autojump_clock: trio.testing.MockClock) -> None:
    exporter = InMemorySpanExporter()
    tracing = RequestTracing(SimpleSpanProcessor(exporter))
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    async with running_gateway(tracing=tracing) as harness:
        for path, (_endpoint, body) in ROUTES.items():
            assert (await harness.request("POST", path, body, headers=parent)).status == 200
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["embeddings", "tokenize", "detokenize"]
    for span in spans:
        assert span.attributes is not None and span.context is not None
        assert f"{span.context.trace_id:032x}" == trace
        assert span.attributes["gen_ai.operation.name"] == span.name
        assert span.attributes["http.response.status_code"] == 200
        assert "trio_gateway.ttft_s" not in span.attributes


async def test_bad_bodies_unknown_models_and_streams_are_classified_as_for_completions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway() as harness:
        bad = await harness.request("POST", "/v1/embeddings", {"model": "mock", "input": 3})
        assert bad.status == 400
        assert bad.json()["error"]["type"] == "invalid_request_error"
        assert bad.json()["error"]["param"] == "input"
        assert counted(harness, "embeddings", "error", error_type="validation") == 1
        unknown = await harness.request("POST", "/tokenize", {"model": "nope", "prompt": "x"})
        assert unknown.status == 404 and unknown.json()["error"]["code"] == "model_not_found"
        assert counted(harness, "tokenize", "error", model="unknown", error_type="not_found") == 1
        # The engine's own refusal (dimensions over the mock's) is a 400 from the backend.
        over = await harness.request(
            "POST", "/v1/embeddings", {"model": "mock", "input": "x", "dimensions": 1000}
        )
        assert over.status == 400 and over.json()["error"]["param"] == "dimensions"
        assert counted(harness, "embeddings", "error", error_type="validation") == 2
        oov = await harness.request("POST", "/detokenize", {"model": "mock", "tokens": [-1]})
        assert oov.status == 400
        # Nothing to stream: a `stream` in the body does not make an SSE answer.
        streamed = await harness.request(
            "POST", "/v1/embeddings", {"model": "mock", "input": "x", "stream": True}
        )
        assert streamed.status == 200
        assert streamed.headers[b"content-type"] == b"application/json"
        assert streamed.json()["object"] == "list"
        assert counted(harness, "embeddings") == 1
        wrong_method = await harness.request("GET", "/tokenize")
        assert wrong_method.status == 405


async def test_the_api_key_guards_the_tokenizer_routes_at_the_root_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(GatewayConfig(api_keys=("k1",))) as harness:
        for path, (_endpoint, body) in ROUTES.items():
            refused = await harness.request("POST", path, body)
            assert refused.status == 401, path
            assert refused.json()["error"]["code"] == "invalid_api_key"
            wrong = await harness.request("POST", path, body, headers={"authorization": "Bearer x"})
            assert wrong.status == 401, path
            ok = await harness.request("POST", path, body, headers={"authorization": "Bearer k1"})
            assert ok.status == 200, path


async def test_the_model_list_carries_each_models_max_model_len(
    autojump_clock: trio.testing.MockClock,
) -> None:
    small, big = (
        MockEngine(("small",), max_model_len=2048),
        MockEngine(("big",), max_model_len=8192),
    )
    small.name, big.name = "small", "big"
    async with running_gateway(engines=[small, big]) as harness:
        listed = (await harness.request("GET", "/v1/models")).json()
        lengths = {model["id"]: model["max_model_len"] for model in listed["data"]}
        assert lengths == {"small": 2048, "big": 8192}
        one = (await harness.request("GET", "/v1/models/big")).json()
        assert one["id"] == "big" and one["max_model_len"] == 8192
        tokenized = await harness.request("POST", "/tokenize", {"model": "small", "prompt": "a"})
        assert tokenized.json()["max_model_len"] == 2048
        # Longer than the model takes: /tokenize says so rather than refusing (as vLLM).
        long = {"model": "small", "prompt": "word" * 3000}
        counted_long = (await harness.request("POST", "/tokenize", long)).json()
        assert counted_long["count"] == 3000 and counted_long["max_model_len"] == 2048
        too_long = {"model": "small", "messages": [{"role": "user", "content": "word" * 3000}]}
        assert (await harness.request("POST", "/v1/chat/completions", too_long)).status == 400


@dataclass(eq=False)
class Held:
    """A backend with room for one request, which it holds until `release` is set."""

    url: str = "http://held:8000/v1"
    name: str = "held"
    models: tuple[str, ...] = ("mock",)
    capacity: int | None = 1
    available: bool = True
    streams_unary: bool = False
    keeps_session_history: bool = False
    context_lengths: Mapping[str, int] = field(default_factory=dict)
    on_available: Callable[[], None] | None = None
    release: trio.Event = field(default_factory=trio.Event)
    started: trio.Event = field(default_factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        self.started.set()
        await self.release.wait()
        await send.send(mock_answer.answer(request, None))

    async def open_session(self, session_id: str, idle_timeout_s: float) -> None:
        return None

    async def close_session(self, session_id: str) -> None:
        return None


async def test_a_full_backend_queues_them_and_a_full_queue_answers_429(
    autojump_clock: trio.testing.MockClock,
) -> None:
    held = Held()
    config = GatewayConfig(queue_size=1, queue_timeout_s=5)
    async with running_gateway(config, [held]) as harness:  # type: ignore[list-item]
        first = harness.start("POST", "/v1/embeddings", EMBEDDINGS)
        await held.started.wait()
        queued = harness.start("POST", "/tokenize", TOKENIZE)
        await trio.sleep(0.1)
        # Both wait for their answer (the gauge counts until the first chunk), one in the queue.
        assert harness.metric("trio_gateway_queued_requests", model="mock") == 2
        assert harness.metric("trio_gateway_inflight_requests", model="mock") == 2
        refused = await harness.request("POST", "/detokenize", DETOKENIZE)
        assert refused.status == 429 and refused.headers[b"retry-after"] == b"5"
        assert counted(harness, "detokenize", "error", error_type="overload") == 1
        held.release.set()
        await first.finished.wait()
        await queued.finished.wait()
        assert first.status == queued.status == 200
        assert queued.json() == the_mocks_own("tokenize", TOKENIZE) | {"max_model_len": None}
        # Past the queue's timeout, as for the completions.
        held.release = trio.Event()
        held.started = trio.Event()
        blocker = harness.start("POST", "/v1/embeddings", EMBEDDINGS)
        await held.started.wait()
        late = await harness.request("POST", "/v1/embeddings", EMBEDDINGS)
        assert late.status == 429
        held.release.set()
        await blocker.finished.wait()


async def test_through_a_worker_the_answer_is_the_workers_engines_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway_on_worker() as (harness, _server, _worker):
        for path, (endpoint, body) in ROUTES.items():
            answer = await harness.request("POST", path, body)
            assert answer.status == 200, (path, answer.body)
            assert answer.headers[b"x-worker-id"] == b"w1"
            assert answer.json() == the_mocks_own(endpoint, body), path


async def test_a_worker_from_before_is_passed_over_without_blame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A v3 worker whose hello names no endpoints would refuse an embeddings `generate` as a
    bad frame: the gateway does not send it one, and tries the next backend instead."""
    frames: list[dict[str, Any]] = []

    async def old_worker(request: Any) -> None:
        ws = await request.accept()
        hello = orjson.loads(encode(Hello("old", ("mock",), 10, PROTOCOL_VERSION)))
        del hello["endpoints"]  # what a worker from before says
        await ws.send_message(orjson.dumps(hello).decode())
        while True:
            frames.append(orjson.loads(await ws.get_message()))

    old = InMemoryWorker("ws://old", handler=old_worker)
    async with running_gateway(engines=[old]) as harness:
        await old.wait_connected()
        assert old.endpoints == ("chat", "completion")
        alone = await harness.request("POST", "/v1/embeddings", EMBEDDINGS)
        assert alone.status == 503 and "does not serve" in alone.json()["error"]["message"]
    old = InMemoryWorker("ws://old", handler=old_worker)
    config = GatewayConfig(routing_policy="round_robin", breaker_threshold=1)
    async with running_gateway(config, engines=[old, MockEngine()]) as harness:
        await old.wait_connected()
        for _ in range(4):
            answer = await harness.request("POST", "/v1/embeddings", EMBEDDINGS)
            assert answer.status == 200
        assert [f for f in frames if f["type"] == "generate"] == []
        assert old.available
        backend = next(b for b in harness.gateway.router.backends if b.engine is old)
        assert backend.breaker.state.value == "closed"  # not held against it
