"""The `generate` frame's trace context: optional fields, so protocol 3 peers still agree."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import orjson

from trio_gateway.generation import Endpoint, GenerationRequest
from trio_gateway.openai.schemas import parse_generation_request
from trio_gateway.plane.codec import decode, encode
from trio_gateway.plane.frames import Generate

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BODY: dict[str, Any] = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


def traced(traceparent: str | None, tracestate: str | None = None) -> GenerationRequest:
    request = parse_generation_request(BODY, "chat", "req-1")
    return dataclasses.replace(
        request, trace_id="rid", traceparent=traceparent, tracestate=tracestate
    )


def frame_with(**request_fields: Any) -> str:
    request = {"request_id": "req-1", "endpoint": "chat", "body": BODY, **request_fields}
    return orjson.dumps({"type": "generate", "id": "g1", "request": request, "window": 8}).decode()


def test_the_trace_context_travels_in_the_generate_frame() -> None:
    message = Generate("g1", traced(TRACEPARENT, "congo=t61rcWkgMzE"), 8)
    text = encode(message)
    wire = orjson.loads(text)["request"]
    assert wire["traceparent"] == TRACEPARENT
    assert wire["tracestate"] == "congo=t61rcWkgMzE"
    decoded = decode(text)
    assert isinstance(decoded, Generate)
    assert decoded.request.traceparent == TRACEPARENT
    assert decoded.request.tracestate == "congo=t61rcWkgMzE"
    assert decoded == message


def test_without_a_trace_context_the_frame_is_what_it_was() -> None:
    wire = orjson.loads(encode(Generate("g1", traced(None), 8)))["request"]
    assert "traceparent" not in wire and "tracestate" not in wire
    decoded = decode(frame_with())  # a frame from a peer that never sends them
    assert isinstance(decoded, Generate)
    assert decoded.request.traceparent is None
    assert decoded.request.tracestate is None


class _V3Request(msgspec.Struct, frozen=True):
    """The request of a `generate` frame as a worker of protocol 3 before traces reads it."""

    request_id: str
    endpoint: Endpoint
    body: dict[str, Any]
    trace_id: str | None = ""


class _V3Generate(msgspec.Struct, frozen=True, tag_field="type", tag="generate"):
    id: str
    request: _V3Request
    window: int
    session_id: str | None = None


def test_a_worker_without_the_fields_reads_a_traced_frame() -> None:
    text = encode(Generate("g1", traced(TRACEPARENT, "a=1"), 8))
    old = msgspec.json.decode(text, type=_V3Generate)
    assert (old.id, old.request.request_id, old.request.trace_id) == ("g1", "req-1", "rid")
    assert old.request.body == BODY


def test_a_malformed_trace_context_in_a_frame_is_dropped_not_a_failure() -> None:
    decoded = decode(frame_with(traceparent="00-nonsense", tracestate="a=1"))
    assert isinstance(decoded, Generate)
    assert decoded.request.traceparent is None
    assert decoded.request.tracestate is None  # tracestate only beside a valid traceparent
    header_injection = decode(frame_with(traceparent=TRACEPARENT, tracestate="a=1\r\nx: y"))
    assert isinstance(header_injection, Generate)
    assert header_injection.request.traceparent == TRACEPARENT
    assert header_injection.request.tracestate is None
