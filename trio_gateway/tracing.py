"""One OpenTelemetry span per inference request, exported over OTLP/HTTP.

Off by default: without `--otlp-endpoint` nothing imports this module and the request path
makes no OpenTelemetry call. On, a request costs one `start_span` when its flight is built
(the span id must exist then: it is the parent the engine's `traceparent` names) and one
`end` after its last byte, every attribute set in that one call; the SDK's
`BatchSpanProcessor` queues the ended span and a thread of its own encodes and exports
batches. The SDK checks every attribute value it is given, which is most of a span's cost
(benchmarks/tracing_cost.py): so what is the same for every span goes in the resource,
once, and the times the request already keeps (queue wait, TTFT) are attributes rather
than events. The span is timed on the trio clock (MockClock in tests) and placed on the
wall clock once, at its start.

The attributes follow OpenTelemetry's GenAI semantic conventions where one fits
(`gen_ai.operation.name`, `gen_ai.request.model`, `gen_ai.usage.*`,
`gen_ai.response.finish_reasons`) and the general ones for the outcome (`error.type`,
`http.response.status_code`); what is the gateway's own (the backend, the queue wait, the
routing attempts, TTFT) is under `trio_gateway.`. The names are in the README's "Traces".
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import trio
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags, TraceState

from trio_gateway.errors import GatewayError
from trio_gateway.generation import Endpoint
from trio_gateway.openai.errors import http_status
from trio_gateway.trace_context import TraceParent, format_traceparent

log = logging.getLogger("trio_gateway.tracing")

SPAN_NAMES: dict[Endpoint, str] = {
    "chat": "chat.completions",
    "completion": "completions",
    "embeddings": "embeddings",
    "tokenize": "tokenize",
    "detokenize": "detokenize",
}
# gen_ai.operation.name: its well-known values where there is one (the completions,
# embeddings), the route's own name for vLLM's tokenizer routes.
OPERATIONS: dict[Endpoint, str] = {
    "chat": "chat",
    "completion": "text_completion",
    "embeddings": "embeddings",
    "tokenize": "tokenize",
    "detokenize": "detokenize",
}
# How long the exporter may take to send what is queued when the gateway stops.
FLUSH_TIMEOUT_S = 5.0
OTLP_TRACES_PATH = "/v1/traces"


def otlp_traces_url(endpoint: str) -> str:
    """The collector's traces URL: a bare `http://collector:4318` gets OTLP/HTTP's
    `/v1/traces`, as `OTEL_EXPORTER_OTLP_ENDPOINT` does; a URL with a path is taken as is."""
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + OTLP_TRACES_PATH
    return endpoint


class RequestTracing:
    """The gateway's tracer: spans go to `processor` (an OTLP exporter behind a batch
    processor in production, an in-memory exporter in tests)."""

    def __init__(
        self,
        processor: SpanProcessor,
        *,
        service_name: str | None = None,
        routing_policy: str | None = None,
    ) -> None:
        name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "trio-gateway"
        # What is the same for every span is said once, by the resource, not per span.
        resource: dict[str, str] = {SERVICE_NAME: name}
        if routing_policy is not None:
            resource["trio_gateway.routing.policy"] = routing_policy
        # The default sampler, ParentBased(ALWAYS_ON): a client's sampled flag is obeyed, a
        # trace the gateway starts is sampled.
        self._provider = TracerProvider(resource=Resource.create(resource))
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("trio_gateway")

    @classmethod
    def to_otlp(cls, endpoint: str, *, routing_policy: str | None = None) -> RequestTracing:
        """Spans batched and sent to an OTLP/HTTP collector (protobuf over HTTP, port 4318)."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_traces_url(endpoint))
        return cls(BatchSpanProcessor(exporter), routing_policy=routing_policy)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the exporter for the gateway's life; on the way out, send what is queued.

        The flush blocks (HTTP in the exporter's thread), so it runs in a worker thread,
        shielded for at most `FLUSH_TIMEOUT_S`: a collector that does not answer costs the
        shutdown no more, and its spans are lost rather than the exit delayed."""
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.move_on_after(FLUSH_TIMEOUT_S) as waited:
                waited.shield = True
                await trio.to_thread.run_sync(self._provider.shutdown, abandon_on_cancel=True)
            if waited.cancelled_caught:
                log.warning("span export did not finish within %g s", FLUSH_TIMEOUT_S)

    def start(
        self,
        endpoint: Endpoint,
        model: str,
        started_at: float,
        parent: TraceParent | None,
        tracestate: str | None,
        request_id: str,
    ) -> RequestSpan:
        """A request's span from `started_at` (trio clock): a child of the client's span
        when it sent a valid `traceparent`, else the root of a new trace."""
        context = Context()
        if parent is not None:
            remote = SpanContext(
                int(parent.trace_id, 16),
                int(parent.parent_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(parent.flags),
                trace_state=TraceState.from_header([tracestate]) if tracestate else None,
            )
            context = trace.set_span_in_context(NonRecordingSpan(remote), context)
        wall_offset = time.time_ns() - int(trio.current_time() * 1e9)
        span = self._tracer.start_span(
            SPAN_NAMES[endpoint],
            context,
            SpanKind.SERVER,
            {
                "gen_ai.operation.name": OPERATIONS[endpoint],
                "gen_ai.request.model": model,
                "trio_gateway.request_id": request_id,
            },
            start_time=int(started_at * 1e9) + wall_offset,
        )
        return RequestSpan(span, wall_offset)


class RequestSpan:
    """One request's span, open from its flight's start to its last byte."""

    __slots__ = ("_span", "_wall_offset", "traceparent")

    def __init__(self, span: trace.Span, wall_offset: int) -> None:
        self._span = span
        self._wall_offset = wall_offset
        context = span.get_span_context()
        # What the engine is sent: this span as its parent, the trace and flags kept.
        self.traceparent = format_traceparent(
            f"{context.trace_id:032x}", f"{context.span_id:016x}", context.trace_flags
        )

    def _ns(self, at: float) -> int:
        return int(at * 1e9) + self._wall_offset

    def end(
        self,
        ended_at: float,
        *,
        outcome: GatewayError | None,
        status: int | None,
        backend: str | None = None,
        worker: str | None = None,
        attempts: int = 0,
        queue_wait: float | None = None,
        first_at: float | None = None,
        started_at: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int = 0,
        finish_reason: str | None = None,
        cancel_reason: str | None = None,
        stream: bool | None = None,
        max_tokens: int | None = None,
    ) -> None:
        """Everything known of the request, set at once, then the span ends at `ended_at`.

        `backend`: the name it is configured by, the `backend` label of its metrics;
        `worker`: the name it gives itself (`x-worker-id`: a worker's hello id), when
        another. `status`: what the client got (None when it left before an answer: 499). The span's
        status is ERROR for a 5xx outcome, unset otherwise (a 4xx is the client's, as in
        OpenTelemetry's HTTP server conventions)."""
        span = self._span
        if not span.is_recording():
            return
        attributes: dict[str, str | bool | int | float | Sequence[str]] = {
            "gen_ai.usage.output_tokens": output_tokens,
            "trio_gateway.routing.attempts": attempts,
        }
        if stream is not None:
            attributes["trio_gateway.stream"] = stream
        if max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = max_tokens
        if backend is not None:
            attributes["trio_gateway.backend"] = backend
        if worker is not None and worker != backend:
            attributes["trio_gateway.worker_id"] = worker
        if queue_wait is not None:
            attributes["trio_gateway.queue_wait_s"] = queue_wait
        if input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = input_tokens
        if finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = (finish_reason,)
        if cancel_reason is not None:
            attributes["trio_gateway.cancel_reason"] = cancel_reason
        code = status if status is not None else (200 if outcome is None else http_status(outcome))
        attributes["http.response.status_code"] = code
        if first_at is not None and started_at is not None:
            attributes["trio_gateway.ttft_s"] = first_at - started_at
        if outcome is not None:
            attributes["error.type"] = outcome.kind.value
            if http_status(outcome) >= 500:
                span.set_status(Status(StatusCode.ERROR, outcome.message))
        span.set_attributes(attributes)
        span.end(end_time=self._ns(ended_at))
