"""A request's span times its queue wait and its TTFT on MockClock, through the ASGI app
(the trace context over real sockets and workers: tests/system/test_traces.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
import trio.testing
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.asgi_client import running_gateway
from tests.support.bodies import chat
from trio_gateway.config import GatewayConfig
from trio_gateway.tracing import RequestTracing

CHAT = "/v1/chat/completions"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    yield exported
    exported.clear()


def tracing_to(exporter: InMemorySpanExporter) -> RequestTracing:
    return RequestTracing(SimpleSpanProcessor(exporter), routing_policy="power_of_two")


async def test_queue_wait_and_ttft_on_the_mock_clock(
    autojump_clock: trio.testing.MockClock, exporter: InMemorySpanExporter
) -> None:
    config = GatewayConfig(max_inflight=1, mock_ttft_ms=50, mock_itl_ms=10, mock_tokens=10)
    async with running_gateway(config, tracing=tracing_to(exporter)) as harness:
        first = harness.start("POST", CHAT, chat(max_tokens=10))
        await trio.sleep(0.001)  # the first holds the only slot
        second = harness.start("POST", "/v1/completions", {"model": "mock", "prompt": "hi"})
        await first.finished.wait()
        await second.finished.wait()
    assert (first.status, second.status) == (200, 200)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    held, queued = spans["chat.completions"], spans["completions"]
    assert held.attributes is not None and queued.attributes is not None
    assert held.attributes["trio_gateway.queue_wait_s"] == pytest.approx(0, abs=1e-6)
    assert held.attributes["trio_gateway.ttft_s"] == pytest.approx(0.05, abs=0.011)
    # The second waited for the first's whole answer: prefill and ten steps.
    assert queued.attributes["trio_gateway.queue_wait_s"] == pytest.approx(0.149, abs=0.015)
    assert queued.attributes["gen_ai.operation.name"] == "text_completion"
    assert queued.attributes["gen_ai.usage.output_tokens"] == 10
    assert held.attributes["trio_gateway.backend"] == "mock"
