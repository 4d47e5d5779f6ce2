"""Traces: a client's W3C trace context reaches the engine, and each request is one span.

Spans go to the OpenTelemetry SDK's in-memory exporter. The upstream is
tests/support/upstream_server.py on a loopback socket, which records every request's
headers; the worker is a real `WorkerServer` hosting that upstream (`worker --upstream`)
behind an in-memory WebSocket, so the generate frame and the worker's own upstream request
are both seen. Every wait is bounded (queue wait and TTFT on MockClock:
tests/trio/test_trace_timings.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, Tracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.support.asgi_client import Harness, running_gateway
from tests.support.bodies import chat
from tests.support.upstream_server import MockUpstream, running_upstream
from tests.support.worker_harness import InMemoryWorker
from trio_gateway.config import GatewayConfig, WorkerConfig
from trio_gateway.engines.upstream.engine import OpenAIUpstream
from trio_gateway.generation import GenerationRequest
from trio_gateway.tracing import RequestTracing
from trio_gateway.worker.server import WorkerServer

CHAT = "/v1/chat/completions"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    yield exported
    exported.clear()


def tracing_to(exporter: InMemorySpanExporter) -> RequestTracing:
    return RequestTracing(SimpleSpanProcessor(exporter), routing_policy="power_of_two")


def ask(model: str = "up-a", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, spans
    return spans[0]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


@asynccontextmanager
async def gateway_over_upstream(
    tracing: RequestTracing | None,
) -> AsyncIterator[tuple[Harness, MockUpstream, str]]:
    async with running_upstream(models=["up-a", "fail-503"], graceful_timeout=0.5) as upstream:
        engine = OpenAIUpstream(upstream.url)
        async with running_gateway(engines=[engine], tracing=tracing) as harness:
            with trio.fail_after(5):
                await engine.wait_probes(1)
            yield harness, upstream, engine.name


async def test_a_client_trace_gets_a_child_span_and_reaches_the_upstream(
    exporter: InMemorySpanExporter,
) -> None:
    async with gateway_over_upstream(tracing_to(exporter)) as (harness, upstream, name):
        with trio.fail_after(10):
            exchange = await harness.request(
                "POST",
                CHAT,
                ask(stream=True, max_tokens=4),
                headers={"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"},
            )
    assert exchange.status == 200
    span = only_span(exporter)
    trace_id, span_id = hex_ids(span)
    assert trace_id == TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CLIENT_SPAN
    assert span.parent.is_remote
    assert span.name == "chat.completions"
    assert span.kind is SpanKind.SERVER
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "up-a"
    assert attributes["gen_ai.request.max_tokens"] == 4
    assert attributes["gen_ai.usage.output_tokens"] == 4
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert attributes["http.response.status_code"] == 200
    assert attributes["trio_gateway.backend"] == name
    assert attributes["trio_gateway.routing.attempts"] == 1
    assert span.resource.attributes["trio_gateway.routing.policy"] == "power_of_two"
    assert span.resource.attributes["service.name"] == "trio-gateway"
    assert 0 <= attributes["trio_gateway.queue_wait_s"] < 1  # one request, never queued
    assert attributes["trio_gateway.ttft_s"] > 0
    assert attributes["trio_gateway.stream"] is True
    assert "error.type" not in attributes
    assert span.status.status_code is StatusCode.UNSET
    assert span.start_time is not None and span.end_time is not None
    # On the wall clock, as long as the request took: the ttft fits inside it.
    assert abs(span.start_time - time.time_ns()) < 60e9
    assert span.end_time - span.start_time > attributes["trio_gateway.ttft_s"] * 1e9
    # The upstream is told the same trace, with the gateway's span as its parent.
    sent = upstream.generations[0].headers
    assert sent["traceparent"] == f"00-{TRACE}-{span_id}-01"
    assert sent["tracestate"] == "congo=t61rcWkgMzE"


async def test_without_a_client_trace_the_gateway_starts_one(
    exporter: InMemorySpanExporter,
) -> None:
    async with gateway_over_upstream(tracing_to(exporter)) as (harness, upstream, _):
        with trio.fail_after(10):
            exchange = await harness.request("POST", CHAT, ask(max_tokens=2))
    assert exchange.status == 200
    span = only_span(exporter)
    assert span.parent is None
    trace_id, span_id = hex_ids(span)
    # Its flags are the SDK's: sampled, and (Trace Context level 2) a random trace id.
    flags = span.get_span_context().trace_flags  # type: ignore[union-attr]
    assert flags == 0x03
    assert upstream.generations[0].headers["traceparent"] == f"00-{trace_id}-{span_id}-03"
    assert "tracestate" not in upstream.generations[0].headers


@pytest.mark.parametrize(
    "bad",
    [
        f"00-{TRACE.upper()}-{CLIENT_SPAN}-01",
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",
        f"ff-{TRACE}-{CLIENT_SPAN}-01",
        "not a traceparent",
    ],
)
async def test_an_invalid_traceparent_is_ignored(exporter: InMemorySpanExporter, bad: str) -> None:
    async with gateway_over_upstream(tracing_to(exporter)) as (harness, upstream, _):
        with trio.fail_after(10):
            exchange = await harness.request(
                "POST", CHAT, ask(max_tokens=2), headers={"traceparent": bad, "tracestate": "a=1"}
            )
    assert exchange.status == 200  # served, not a 400
    span = only_span(exporter)
    assert span.parent is None  # a new trace, not the client's
    trace_id, span_id = hex_ids(span)
    assert trace_id != TRACE.lower()
    assert upstream.generations[0].headers["traceparent"] == f"00-{trace_id}-{span_id}-03"
    assert "tracestate" not in upstream.generations[0].headers


async def test_an_unsampled_client_trace_is_passed_on_and_not_exported(
    exporter: InMemorySpanExporter,
) -> None:
    async with gateway_over_upstream(tracing_to(exporter)) as (harness, upstream, _):
        with trio.fail_after(10):
            exchange = await harness.request(
                "POST",
                CHAT,
                ask(max_tokens=2),
                headers={"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-00"},
            )
    assert exchange.status == 200
    assert exporter.get_finished_spans() == ()
    sent = upstream.generations[0].headers["traceparent"]
    assert sent.startswith(f"00-{TRACE}-") and sent.endswith("-00")
    assert CLIENT_SPAN not in sent  # still a child: the gateway's span id, not recorded


async def test_a_failure_is_the_spans_outcome(exporter: InMemorySpanExporter) -> None:
    async with gateway_over_upstream(tracing_to(exporter)) as (harness, _, _name):
        with trio.fail_after(10):
            down = await harness.request(
                "POST", CHAT, ask("fail-503"), headers={"traceparent": TRACEPARENT}
            )
            missing = await harness.request(
                "POST", CHAT, ask("no-such-model"), headers={"traceparent": TRACEPARENT}
            )
    assert (down.status, missing.status) == (503, 404)
    failed, refused = exporter.get_finished_spans()
    assert failed.attributes is not None and refused.attributes is not None
    assert failed.attributes["error.type"] == "unavailable"
    assert failed.attributes["http.response.status_code"] == 503
    assert failed.status.status_code is StatusCode.ERROR
    # Refused before any flight: still a span of the client's trace, with its outcome.
    assert hex_ids(refused)[0] == TRACE
    assert refused.attributes["error.type"] == "not_found"
    assert refused.attributes["http.response.status_code"] == 404
    assert refused.attributes["gen_ai.request.model"] == "unknown"  # never a client's string
    assert refused.status.status_code is StatusCode.UNSET  # a 4xx is the client's


async def test_tracing_off_passes_the_context_on_and_makes_no_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[str] = []
    original = Tracer.start_span

    def counting(self: Tracer, name: str, *args: Any, **kwargs: Any) -> Any:
        started.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(Tracer, "start_span", counting)
    async with gateway_over_upstream(None) as (harness, upstream, _):
        assert harness.gateway.tracing is None
        with trio.fail_after(10):
            traced = await harness.request(
                "POST",
                CHAT,
                ask(max_tokens=2),
                headers={"traceparent": TRACEPARENT, "tracestate": "a=1"},
            )
            plain = await harness.request("POST", CHAT, ask(max_tokens=2))
    assert (traced.status, plain.status) == (200, 200)
    assert started == []
    # Not a hop of the trace: the client's context goes on as it came.
    assert upstream.generations[0].headers["traceparent"] == TRACEPARENT
    assert upstream.generations[0].headers["tracestate"] == "a=1"
    assert "traceparent" not in upstream.generations[1].headers


async def test_the_counting_hook_sees_spans_when_tracing_is_on(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    """The witness of the test above can fail: with tracing on, it counts the span."""
    started: list[str] = []
    original = Tracer.start_span

    def counting(self: Tracer, name: str, *args: Any, **kwargs: Any) -> Any:
        started.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(Tracer, "start_span", counting)
    async with gateway_over_upstream(tracing_to(exporter)) as (harness, _, _name):
        with trio.fail_after(10):
            await harness.request("POST", CHAT, ask(max_tokens=2))
    assert started == ["chat.completions"]


async def test_the_trace_reaches_a_worker_and_its_upstream(
    exporter: InMemorySpanExporter,
) -> None:
    """The worker's engine gets the request as the generate frame carried it, and hands
    the context on to the upstream it hosts."""
    received: list[GenerationRequest] = []
    async with running_upstream(graceful_timeout=0.2) as upstream:
        server = WorkerServer(WorkerConfig(worker_id="w1", upstream=upstream.url))
        engine = server.engine
        assert isinstance(engine, OpenAIUpstream)
        generate = engine.generate

        async def recording(request: GenerationRequest, send: Any) -> None:
            received.append(request)
            await generate(request, send)

        engine.generate = recording  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await nursery.start(server.shutdown.run)
            with trio.fail_after(10):
                await engine.wait_probes(1)
            worker = InMemoryWorker("ws://w1", handler=server._handle, window=4)
            async with running_gateway(engines=[worker], tracing=tracing_to(exporter)) as harness:
                with trio.fail_after(10):
                    await worker.wait_connected()
                    exchange = await harness.request(
                        "POST",
                        CHAT,
                        ask(stream=True, max_tokens=3),
                        headers={"traceparent": TRACEPARENT, "tracestate": "a=1"},
                    )
            nursery.cancel_scope.cancel()
    assert exchange.status == 200
    span = only_span(exporter)
    trace_id, span_id = hex_ids(span)
    assert trace_id == TRACE
    assert span.attributes is not None
    assert span.attributes["trio_gateway.backend"] == "ws://w1"  # as configured, as /metrics
    assert span.attributes["trio_gateway.worker_id"] == "w1"  # as its hello says
    expected = f"00-{TRACE}-{span_id}-01"
    (request,) = received
    assert request.traceparent == expected
    assert request.tracestate == "a=1"
    assert upstream.generations[0].headers["traceparent"] == expected
    assert upstream.generations[0].headers["tracestate"] == "a=1"


@asynccontextmanager
async def running_collector() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP collector on a loopback port: records every body POSTed to /v1/traces."""
    bodies: list[bytes] = []

    async def collector(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/v1/traces":
            bodies.append(body)
        headers = [(b"content-type", b"application/x-protobuf"), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.5
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(serve, collector, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        )
        try:
            yield binds[0], bodies
        finally:
            stop.set()


async def test_otlp_endpoint_exports_the_clients_trace_to_a_collector() -> None:
    """`--otlp-endpoint`, end to end: the gateway builds its exporter at start, and what it
    sent by the time it stopped holds the span, in the client's trace."""
    async with running_collector() as (url, bodies):
        config = GatewayConfig(otlp_endpoint=url)  # no path: /v1/traces is added
        with trio.fail_after(20):
            async with running_gateway(config) as harness:
                assert harness.gateway.tracing is not None
                exchange = await harness.request(
                    "POST", CHAT, chat(max_tokens=3), headers={"traceparent": TRACEPARENT}
                )
                assert exchange.status == 200
            # The gateway has stopped: its last batch went out on the way.
    exported = [
        span
        for body in bodies
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans
        for scope_spans in resource.scope_spans
        for span in scope_spans.spans
    ]
    (span,) = exported
    assert span.trace_id.hex() == TRACE
    assert span.parent_span_id.hex() == CLIENT_SPAN
    assert span.name == "chat.completions"
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["gen_ai.usage.output_tokens"].int_value == 3
    assert attributes["trio_gateway.backend"].string_value == "mock"


def test_without_tracing_opentelemetry_is_not_even_imported() -> None:
    """The app as hypercorn loads it, and a gateway serving a traced request with tracing
    off, import no OpenTelemetry (a fresh interpreter: this one has imported it)."""
    script = f"""
import sys, trio
import trio_gateway.app
from tests.support.asgi_client import running_gateway
from tests.support.bodies import chat

async def main():
    async with running_gateway() as harness:
        done = await harness.request(
            "POST", "{CHAT}", chat(max_tokens=2), headers={{"traceparent": "{TRACEPARENT}"}}
        )
        assert done.status == 200

trio.run(main)
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
