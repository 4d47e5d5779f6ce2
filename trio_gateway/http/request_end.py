"""How a request's end is recorded, besides the metrics: its one `request end` log line and,
with tracing on, its span; also for a request refused before its flight started
(docs/architecture.md §1.8)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from trio_gateway.errors import GatewayError
from trio_gateway.gateway import Gateway
from trio_gateway.generation import Endpoint, GenerationRequest
from trio_gateway.lifecycle.flight import Flight
from trio_gateway.lifecycle.reader import ChunkReader
from trio_gateway.metrics import backend_label
from trio_gateway.openai.errors import http_status
from trio_gateway.trace_context import TraceParent

if TYPE_CHECKING:
    from trio_gateway.tracing import RequestSpan

requests_log = logging.getLogger("trio_gateway.requests")


def trace_refused(
    gateway: Gateway,
    endpoint: Endpoint,
    model: str,
    started_at: float,
    parent: TraceParent | None,
    tracestate: str | None,
    request_id: str,
    error: GatewayError,
    status: int | None,
) -> None:
    """The span of a request answered before its flight: started and ended at once."""
    assert gateway.tracing is not None
    span = gateway.tracing.start(endpoint, model, started_at, parent, tracestate, request_id)
    span.end(trio.current_time(), outcome=error, status=status)


def end_span(
    span: RequestSpan,
    request: GenerationRequest,
    flight: Flight,
    reader: ChunkReader,
    outcome: GatewayError | None,
    status: int | None,
) -> None:
    span.end(
        trio.current_time(),
        outcome=outcome,
        status=status,
        backend=None if flight.backend is None else backend_label(flight.backend.engine),
        worker=flight.worker,
        attempts=flight.attempts,
        queue_wait=flight.queue_wait,
        first_at=reader.first_token_at,
        started_at=flight.started_at,
        input_tokens=reader.prompt_tokens,
        output_tokens=reader.tokens,
        finish_reason=reader.finish_reason,
        cancel_reason=flight.cancel_reason,
        stream=request.stream,
        max_tokens=request.max_tokens,
    )


def log_refused(model: str, endpoint: Endpoint, error: GatewayError, started_at: float) -> None:
    """The end line of a request answered before its flight started (a 4xx, a 503 draining)."""
    if not requests_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, object] = {
        "model": model,
        "endpoint": endpoint,
        "worker": None,
        "status": http_status(error),
        "error_type": error.kind.value,
        "ttft_s": None,
        "duration_s": round(trio.current_time() - started_at, 6),
        "prompt_tokens": None,
        "completion_tokens": 0,
    }
    requests_log.info("request end", extra=fields)


def log_end(
    gateway: Gateway,
    request: GenerationRequest,
    flight: Flight,
    reader: ChunkReader,
    outcome: GatewayError | None,
    started_at: float,
    status: int | None,
) -> None:
    """One line per request, with what an operator greps for; text only if asked.

    `status` is what the client got: 200 for a stream that failed after its headers went
    out (its `error_type` says how it ended), the error's status when the error was the
    answer, and with no response at all (the client left first) the outcome's, 499.
    """
    if not requests_log.isEnabledFor(logging.INFO):
        return
    if status is None:
        status = 200 if outcome is None else http_status(outcome)
    fields: dict[str, object] = {
        "model": request.model,
        "endpoint": request.endpoint,
        "worker": flight.worker,
        "status": status,
        "error_type": "none" if outcome is None else outcome.kind.value,
        "ttft_s": None if (at := reader.first_token_at) is None else round(at - started_at, 6),
        "duration_s": round(trio.current_time() - started_at, 6),
        "prompt_tokens": reader.prompt_tokens,
        "completion_tokens": reader.tokens,
    }
    if gateway.config.log_prompts:
        fields["prompt"] = request.prompt
        fields["completion"] = "".join(reader.texts)
    requests_log.info("request end", extra=fields)
