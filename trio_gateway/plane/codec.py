"""The request plane's codec: a frame ⇄ its JSON text frame, and what is wrong with a bad one.

One WebSocket per gateway-worker pair carries many requests, so a bad frame is classified:
one that is not a JSON object, or whose own `id` is unusable, breaks the connection
(framing is lost); one with an `id` that is otherwise bad fails only that request
(`ProtocolError.request_id`). A `chunks` frame is connection-level whatever its items say:
failing one request would lose the frame's other items.

Decoding is one msgspec decode against the union of the frame structs: the tag picks the
struct, the struct's types check every field in C. Only a frame that fails is looked at
again, to find its `type` and `id` and say which field was wrong.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, TypeAlias

import msgspec

from trio_gateway.errors import GatewayError
from trio_gateway.generation import Endpoint
from trio_gateway.openai.non_generative import parse_request
from trio_gateway.plane.frames import (
    Cancel,
    ChunkFrame,
    Chunks,
    CloseSession,
    Credit,
    End,
    ErrorFrame,
    Generate,
    Hello,
    Message,
    OpenSession,
    SessionReply,
)
from trio_gateway.trace_context import clean_tracestate, parse_traceparent


class ProtocolError(Exception):
    """A frame we cannot use. With `request_id`, only that request fails."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class _RequestFields(msgspec.Struct, frozen=True, omit_defaults=True):
    """A `generate`'s request on the wire: the body as the gateway validated it."""

    request_id: str
    endpoint: Endpoint
    body: dict[str, Any]
    trace_id: str | None = ""
    # W3C Trace Context for the worker's engine; absent when the request has none. Optional
    # both ways, so no protocol version: a v3 peer without these fields ignores them (msgspec
    # skips unknown keys) and one that has them reads an older frame as carrying none.
    traceparent: str | None = None
    tracestate: str | None = None


class _GenerateFrame(
    msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag="generate"
):
    id: str
    request: _RequestFields
    window: int
    session_id: str | None = None


class _ErrorFrameAsSent(msgspec.Struct, frozen=True, tag_field="type", tag="error"):
    """An `error` frame read leniently: it is the last a request hears, so a status outside
    4xx/5xx, an odd code or a missing flag must not turn the error into a protocol failure."""

    id: str
    message: str
    error_type: str | None = None
    code: Any = None
    status: Any = 500
    backend_fault: Any = True

    def frame(self) -> ErrorFrame:
        status = self.status if type(self.status) is int and 400 <= self.status <= 599 else 500
        code = self.code if type(self.code) in (str, int) else None
        return ErrorFrame(
            self.id,
            self.message,
            self.error_type or "internal_error",
            code,
            status,
            self.backend_fault is not False,
        )


_WireFrame: TypeAlias = (
    Hello
    | ChunkFrame
    | Chunks
    | End
    | _ErrorFrameAsSent
    | SessionReply
    | _GenerateFrame
    | Credit
    | Cancel
    | OpenSession
    | CloseSession
)
_decoder: msgspec.json.Decoder[_WireFrame] = msgspec.json.Decoder(_WireFrame)
_encoder = msgspec.json.Encoder()

# Frames with no request of their own: whatever `id` they hold, a bad one ends the connection.
_CONNECTION_FRAMES = frozenset({"hello", "chunks"})
_FRAME_TYPES = frozenset(
    {"hello", "chunk", "chunks", "end", "error", "session", "generate"}
    | {"credit", "cancel", "open_session", "close_session"}
)


def encode(message: Message) -> str:
    """The frame as JSON text (WebSocket text frames carry `str`)."""
    if isinstance(message, Generate):
        request = message.request
        fields = _RequestFields(
            request.request_id,
            request.endpoint,
            request.body,
            request.trace_id,
            request.traceparent,
            request.tracestate,
        )
        wire = _GenerateFrame(message.id, fields, message.window, message.session_id)
        return _encoder.encode(wire).decode()
    return _encoder.encode(message).decode()


def decode(text: str | bytes) -> Message:
    try:
        message = _decoder.decode(text)
    except msgspec.ValidationError as error:
        raise _classified(text, error) from None
    except msgspec.DecodeError as error:
        raise ProtocolError(f"frame is not JSON: {error}") from None
    if isinstance(message, _GenerateFrame):
        return _generate(message)
    if isinstance(message, _ErrorFrameAsSent):
        return message.frame()
    return message


class _Envelope(msgspec.Struct):
    type: Any = None
    id: Any = None


_AT = re.compile(r"(?P<what>.*?)(?: - at `\$(?P<path>.*)`)?", re.DOTALL)
_MISSING = re.compile(r"Object missing required field `(?P<name>.*)`")


def _classified(text: str | bytes, error: msgspec.ValidationError) -> ProtocolError:
    """Which request a frame that failed validation belongs to, and what in it is wrong."""
    try:
        envelope = msgspec.json.decode(text, type=_Envelope)
    except msgspec.ValidationError:
        try:  # not an object; but a typed decode stops at the first byte: is it JSON at all?
            msgspec.json.decode(text)
        except msgspec.DecodeError as not_json:
            return ProtocolError(f"frame is not JSON: {not_json}")
        return ProtocolError("frame is not a JSON object")
    kind = envelope.type
    rid = envelope.id if isinstance(envelope.id, str) and kind not in _CONNECTION_FRAMES else None
    if kind not in _FRAME_TYPES:
        return ProtocolError(f"unknown frame type {kind!r}", rid)
    found = _AT.fullmatch(str(error))
    assert found is not None  # the pattern matches any text
    what, path = found["what"], (found["path"] or "").lstrip(".")
    missing = _MISSING.fullmatch(what)
    if missing is not None:
        name = f"{path}.{missing['name']}" if path else missing["name"]
        return ProtocolError(f"{kind!r} frame: missing {name!r}", rid)
    return ProtocolError(f"{kind!r} frame: bad {path!r}: {what}", rid)


def _generate(frame: _GenerateFrame) -> Generate:
    """The request as the gateway parsed it: the worker parses the body as the gateway did,
    so whatever the client asked (tools, logprobs, n) reaches the worker's engine."""
    fields = frame.request
    try:
        request = parse_request(fields.body, fields.endpoint, fields.request_id)
    except GatewayError as error:
        raise ProtocolError(
            f"'generate' frame, 'request': a body the gateway should have refused: {error.message}",
            frame.id,
        ) from None
    # A malformed trace context is dropped, as the gateway drops a client's: never a failure.
    parent = parse_traceparent(fields.traceparent)
    request = dataclasses.replace(
        request,
        trace_id=fields.trace_id or "",
        session_id=None,
        traceparent=None if parent is None else parent.header(),
        tracestate=None
        if parent is None or fields.tracestate is None
        else clean_tracestate([fields.tracestate]),
    )
    return Generate(frame.id, request, frame.window, frame.session_id)
