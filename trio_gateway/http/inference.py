"""The inference routes as a lean ASGI handler: `/v1/chat/completions` and `/v1/completions`,
and the ones answered whole on the same path (`/v1/embeddings`, vLLM's `/tokenize` and
`/detokenize`).

The completions carry nearly every byte, so they skip the web framework, whose per-request
and per-stream cost is measured in the README (docs/architecture.md §1.1). The handler
validates, opens a flight in the gateway's nursery and writes what the engine produces;
it never runs engine code itself.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import TYPE_CHECKING, Any

import trio

from trio_gateway.errors import (
    ErrorKind,
    GatewayError,
    client_cancelled,
    draining,
    shutting_down,
)
from trio_gateway.gateway import Gateway
from trio_gateway.generation import GENERATION_ENDPOINTS, Chunk, Endpoint
from trio_gateway.http.asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    body_read_timed_out,
    body_too_large,
    declared_length,
    header,
    header_values,
    read_body,
    send_error,
)
from trio_gateway.http.disconnect import AsgiClientGone
from trio_gateway.http.request_end import end_span, log_end, log_refused, trace_refused
from trio_gateway.http.writers import response_headers, write_stream, write_unary
from trio_gateway.lifecycle.flight import CLIENT_DISCONNECTED, HANDLER_EXIT, Flight, run_flight
from trio_gateway.lifecycle.ledger import BodyRead
from trio_gateway.lifecycle.reader import ChunkReader
from trio_gateway.logs import request_id_var
from trio_gateway.metrics import backend_label
from trio_gateway.openai.errors import http_status, openai_type
from trio_gateway.openai.non_generative import parse_request
from trio_gateway.openai.schemas import parse_json_body
from trio_gateway.trace_context import clean_tracestate, parse_traceparent

if TYPE_CHECKING:
    from trio_gateway.tracing import RequestSpan

log = logging.getLogger("trio_gateway.inference")

INFERENCE_ROUTES: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    # Answered whole (unary only), on the same path: auth, routing, admission, metrics.
    "/v1/embeddings": "embeddings",
    "/tokenize": "tokenize",  # vLLM's, at the server root
    "/detokenize": "detokenize",
}


def _unsupported_media_type(content_type: bytes) -> GatewayError:
    return GatewayError(
        ErrorKind.VALIDATION,
        f"Unsupported Content-Type {content_type.decode('latin-1')!r}: send application/json.",
        code="unsupported_media_type",
        status_override=415,
    )


async def handle_inference(
    gateway: Gateway,
    endpoint: Endpoint,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    refused: GatewayError | None,
) -> None:
    """`refused`: the auth decision (`http/auth.py`), made before the routes split; a
    refusal is answered here like any other before the flight, counted and logged."""
    started_at = trio.current_time()
    flight_id = uuid.uuid4().hex
    client_id = header(scope, b"x-request-id")
    # At most 128 characters, and never ending in whitespace (h11 refuses such a header
    # value, in our answer and in the upstream's request).
    trace_id = client_id.decode("latin-1")[:128].rstrip(" \t") if client_id else ""
    trace_id = trace_id or flight_id
    request_id_var.set(trace_id)  # every log line of this request, in every task it starts
    id_header = (b"x-request-id", trace_id.encode("latin-1"))
    # W3C Trace Context: a malformed traceparent is ignored (no 400), tracestate with it.
    parent = parse_traceparent(header(scope, b"traceparent"))
    tracestate = None if parent is None else clean_tracestate(header_values(scope, b"tracestate"))
    model_label = "unknown"
    stream = False
    body: dict[str, Any] | None = None  # once parsed: the model a refusal is counted under
    reading: BodyRead | None = None  # its ledger entry from acceptance until its flight
    try:
        if refused is not None:
            raise refused
        if not gateway.accepting:
            raise draining() if gateway.running else shutting_down()
        content_type = header(scope, b"content-type")
        if content_type is not None and not content_type.lower().startswith(b"application/json"):
            raise _unsupported_media_type(content_type)
        declared = declared_length(scope)
        if declared is not None and declared > gateway.config.max_body_bytes:
            raise body_too_large(gateway.config.max_body_bytes)  # before reading a byte
        # Accepted: the gateway owns the request from here, so a drain that begins while its
        # body is still arriving waits for it (issue 16), up to the body-read deadline.
        timeout = gateway.config.body_read_timeout(declared)
        reading = gateway.ledger.start_reading(trio.current_time() + timeout)
        raw = await _read_body(gateway, reading, receive, timeout)
        if not gateway.accepting:  # the body completed once the drain refused new requests
            raise draining() if gateway.running else shutting_down()
        body = parse_json_body(raw)
        stream = body.get("stream") is True and endpoint in GENERATION_ENDPOINTS
        session = header(scope, b"x-session-id")
        request = dataclasses.replace(
            parse_request(
                body,
                endpoint,
                flight_id,
                session_header=session.decode("latin-1") if session else None,
            ),
            trace_id=trace_id,
            # As the client sent it; with tracing on, the request's span replaces the parent.
            traceparent=None if parent is None else parent.header(),
            tracestate=tracestate,
        )
        gateway.check_model(request.model)
        gateway.check_context_length(request)
        model_label = request.model
    except ClientGone:
        gateway.metrics.request_ended(model_label, endpoint, stream, client_cancelled())
        if gateway.tracing is not None:
            trace_refused(
                gateway,
                endpoint,
                model_label,
                started_at,
                parent,
                tracestate,
                trace_id,
                client_cancelled(),
                None,
            )
        return
    except GatewayError as error:
        headers = response_headers(error, id_header, None)
        if http_status(error) in (408, 413):  # the rest of the body stays unread: hypercorn closes
            headers.append((b"connection", b"close"))
        await send_error(send, error, headers)
        label = _model_label(gateway, body)
        gateway.metrics.request_ended(label, endpoint, stream, error)
        log_refused(label, endpoint, error, started_at)
        if gateway.tracing is not None:
            trace_refused(
                gateway,
                endpoint,
                label,
                started_at,
                parent,
                tracestate,
                trace_id,
                error,
                http_status(error),
            )
        return
    finally:
        if reading is not None:
            # Owned until its answer went out above, or until its flight enters the ledger
            # below: no checkpoint in between, so the drain never finds it in neither.
            gateway.ledger.done_reading(reading)

    span: RequestSpan | None = None
    if gateway.tracing is not None:  # the engine is sent this request's span as its parent
        span = gateway.tracing.start(
            endpoint, request.model, started_at, parent, tracestate, trace_id
        )
        request = dataclasses.replace(request, traceparent=span.traceparent)
    flight = Flight(flight_id, request.model, endpoint, started_at)
    chunks_in, chunks_out = trio.open_memory_channel[Chunk](gateway.config.stream_buffer)
    reader = ChunkReader(chunks_out, flight, gateway.metrics, keep_text=gateway.config.log_prompts)
    metrics = gateway.metrics
    metrics.inflight.labels(request.model).inc()
    metrics.queued.labels(request.model).inc()
    gateway.ledger.add(flight)
    outcome: GatewayError | None = client_cancelled()
    status: int | None = None  # the status the client got, once a response started
    try:
        gateway.nursery.start_soon(
            run_flight,
            flight,
            gateway.router,
            request,
            chunks_in,
            AsgiClientGone(receive),
            gateway.config.inactivity_timeout,
            gateway.config.unary_timeout,
            gateway.sessions,
        )
        with chunks_out:
            if request.stream:
                outcome, status = await write_stream(send, request, flight, reader, id_header)
            else:
                outcome, status = await write_unary(send, request, flight, reader, id_header)
    finally:
        flight.cancel(HANDLER_EXIT)
        gateway.ledger.remove(flight)
        metrics.inflight.labels(request.model).dec()
        if reader.first_at is None:
            metrics.queued.labels(request.model).dec()
        metrics.request_ended(request.model, endpoint, request.stream, outcome)
        if flight.backend is not None:  # where it ended; never routed: no backend series
            label = backend_label(flight.backend.engine, flight.backend.label)
            metrics.backend_series(label, request.model).request_ended(outcome)
        metrics.duration.labels(request.model).observe(trio.current_time() - started_at)
        if flight.cancel_reason is not None:
            metrics.cancellations.labels(flight.cancel_reason).inc()
        if flight.cancel_reason == CLIENT_DISCONNECTED:
            metrics.disconnects.labels(request.model).inc()
        if outcome is not None and outcome.kind in (ErrorKind.INTERNAL, ErrorKind.UNAVAILABLE):
            log.warning("ended with %s: %s", openai_type(outcome), outcome.message)
        log_end(gateway, request, flight, reader, outcome, started_at, status)
        if span is not None:
            end_span(span, request, flight, reader, outcome, status)


async def _read_body(
    gateway: Gateway, reading: BodyRead, receive: Receive, allowed_s: float
) -> bytes:
    """The body, read under `reading`'s scope: 408 when its deadline passes first, 503
    `shutdown` when the drain's deadline cuts it. Counted in the reading gauge meanwhile."""
    metrics = gateway.metrics
    metrics.reading.inc()
    try:
        with reading.scope:
            return await read_body(receive, gateway.config.max_body_bytes)
    finally:
        metrics.reading.dec()
    if reading.cancel_reason is not None:
        metrics.cancellations.labels(reading.cancel_reason).inc()
        raise shutting_down()
    raise body_read_timed_out(allowed_s)


def _model_label(gateway: Gateway, body: dict[str, Any] | None) -> str:
    """The `model` label and log field of a request refused before its flight: the body's
    model when it parsed and a backend serves that model, else "unknown".

    A name only a client chose is never a label value: every distinct value is a series per
    metric kept for the life of the process (and a file per process under multiprocess
    mode), so a client sending random names would grow /metrics without bound. The served
    models are the operator's set. Logs use the same value, so no client-chosen text lands
    in a text log line.
    """
    model = None if body is None else body.get("model")
    if isinstance(model, str) and gateway.router.knows(model):
        return model
    return "unknown"
