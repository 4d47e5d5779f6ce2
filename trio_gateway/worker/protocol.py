"""The worker request plane's messages, as a pure codec: text frame ⇄ dataclass.

The plane as a whole is docs/architecture.md §3.

One WebSocket per gateway-worker pair carries many requests; every per-request message has
an `id`. The `error` frame carries the error's OpenAI type as `error_type`, since `type`
names the frame. A frame that is not a JSON object breaks the connection (framing is lost); a frame
with an `id` that is otherwise bad fails only that request.

A `generate` carries the client's validated body, which the worker parses as the gateway
did, so whatever the client asked (tools, logprobs, n) reaches the worker's engine. A
`chunk` carries the engine's wire bytes as they are (`payload`), so the plane is as
lossless as the engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson

from trio_gateway.errors import GatewayError
from trio_gateway.generation import Chunk, GenerationRequest
from trio_gateway.openai.schemas import parse_generation_request

PROTOCOL_VERSION = 2  # 2: bodies and wire payloads instead of parsed fields and text
TOKEN_HEADER = "authorization"


class ProtocolError(Exception):
    """A frame we cannot use. With `request_id`, only that request fails."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


# worker → gateway
@dataclass(frozen=True, slots=True)
class Hello:
    worker_id: str
    models: tuple[str, ...]
    max_inflight: int
    protocol: int = PROTOCOL_VERSION
    # What the worker's engine says of itself (see `Engine`): whether a unary request
    # yields chunks as it goes, and each model's context length where known.
    streams_unary: bool = True
    context_lengths: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChunkFrame:
    id: str
    payload: str
    tokens: int = 1
    finish_reason: str | None = None
    prompt_tokens: int | None = None

    def chunk(self) -> Chunk:
        return Chunk("", self.tokens, self.finish_reason, self.prompt_tokens, self.payload.encode())


@dataclass(frozen=True, slots=True)
class Chunks:
    """Several requests' chunks in one frame: what the worker sends when more than one is
    queued (a batch step produces a token for every running sequence at once)."""

    items: tuple[ChunkFrame, ...]


@dataclass(frozen=True, slots=True)
class End:
    id: str


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    id: str
    message: str
    type: str = "internal_error"
    code: str | int | None = None
    status: int = 500
    # Whether the failure says the worker's engine is down (it counts against the worker's
    # breaker) or only that this request failed (an injected or in-band error).
    backend_fault: bool = True


@dataclass(frozen=True, slots=True)
class SessionReply:
    id: str
    status: str  # "ok" | "error"
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Load:
    inflight: int
    queued: int


# gateway → worker
@dataclass(frozen=True, slots=True)
class Generate:
    id: str
    request: GenerationRequest
    window: int
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Credit:
    id: str
    n: int


@dataclass(frozen=True, slots=True)
class Cancel:
    id: str


@dataclass(frozen=True, slots=True)
class OpenSession:
    id: str
    session_id: str
    timeout: float
    capacity_of_str_len: int = 0


@dataclass(frozen=True, slots=True)
class CloseSession:
    id: str
    session_id: str


Message = (
    Hello
    | ChunkFrame
    | Chunks
    | End
    | ErrorFrame
    | SessionReply
    | Load
    | Generate
    | Credit
    | Cancel
    | OpenSession
    | CloseSession
)

_TYPE_OF: dict[type, str] = {
    Hello: "hello",
    ChunkFrame: "chunk",
    Chunks: "chunks",
    End: "end",
    ErrorFrame: "error",
    SessionReply: "session",
    Load: "load",
    Generate: "generate",
    Credit: "credit",
    Cancel: "cancel",
    OpenSession: "open_session",
    CloseSession: "close_session",
}


def _request_fields(request: GenerationRequest) -> dict[str, Any]:
    out: dict[str, Any] = {
        "request_id": request.request_id,
        "endpoint": request.endpoint,
        "body": request.body,
    }
    if request.trace_id:
        out["trace_id"] = request.trace_id
    return out


def _chunk_fields(message: ChunkFrame) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "chunk", "id": message.id, "payload": message.payload}
    if message.tokens != 1:
        frame["tokens"] = message.tokens
    if message.finish_reason is not None:
        frame["finish_reason"] = message.finish_reason
        if message.prompt_tokens is not None:
            frame["prompt_tokens"] = message.prompt_tokens
    return frame


def encode(message: Message) -> str:
    if isinstance(message, ChunkFrame):  # the hot path: keep it short
        return orjson.dumps(_chunk_fields(message)).decode()
    if isinstance(message, Chunks):
        items = [_chunk_fields(item) for item in message.items]
        return orjson.dumps({"type": "chunks", "items": items}).decode()
    if isinstance(message, Generate):
        frame = {
            "type": "generate",
            "id": message.id,
            "request": _request_fields(message.request),
            "window": message.window,
        }
        if message.session_id is not None:
            frame["session_id"] = message.session_id
        return orjson.dumps(frame).decode()
    if isinstance(message, ErrorFrame):  # its `type` would clash with the frame's own
        return orjson.dumps(
            {
                "type": "error",
                "id": message.id,
                "message": message.message,
                "error_type": message.type,
                "code": message.code,
                "status": message.status,
                "backend_fault": message.backend_fault,
            }
        ).decode()
    frame = {"type": _TYPE_OF[type(message)]}
    for name in message.__dataclass_fields__:
        value = getattr(message, name)
        frame[name] = list(value) if isinstance(value, tuple) else value
    return orjson.dumps(frame).decode()


def _get(
    frame: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    rid: str | None,
    where: str | None = None,
) -> Any:
    value = frame.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        where = where or f"{frame.get('type')!r} frame"
        raise ProtocolError(f"{where}: bad or missing {name!r}", rid)
    return value


def _optional(
    frame: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    rid: str | None,
    where: str | None = None,
) -> Any:
    return None if frame.get(name) is None else _get(frame, name, kind, rid, where)


def _decode_request(raw: Any, rid: str) -> GenerationRequest:
    """The request as the gateway parsed it; its session travels as the frame's `session_id`."""
    if not isinstance(raw, dict):
        raise ProtocolError("'generate' frame: 'request' must be an object", rid)
    endpoint = raw.get("endpoint")
    if endpoint not in ("chat", "completion"):
        raise ProtocolError("'generate' frame: bad 'request.endpoint'", rid)
    where = "'generate' frame, 'request'"
    body = _get(raw, "body", dict, rid, where)
    try:
        request = parse_generation_request(body, endpoint, _get(raw, "request_id", str, rid, where))
    except GatewayError as error:
        raise ProtocolError(
            f"{where}: a body the gateway should have refused: {error.message}", rid
        ) from None
    trace_id = _optional(raw, "trace_id", str, rid, where) or ""
    return dataclasses.replace(request, trace_id=trace_id, session_id=None)


def _decode_chunk(frame: dict[str, Any]) -> ChunkFrame:
    rid = frame.get("id") if isinstance(frame.get("id"), str) else None
    where = "'chunk'"
    return ChunkFrame(
        _get(frame, "id", str, rid, where),
        _get(frame, "payload", str, rid, where),
        _get(frame, "tokens", int, rid, where) if "tokens" in frame else 1,
        _optional(frame, "finish_reason", str, rid, where),
        _optional(frame, "prompt_tokens", int, rid, where),
    )


def _status(value: Any) -> int:
    return value if isinstance(value, int) and 400 <= value <= 599 else 500


def decode(text: str | bytes) -> Message:
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("frame is not JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError("frame is not a JSON object")
    kind = frame.get("type")
    if kind == "chunk":
        return _decode_chunk(frame)
    if kind == "chunks":
        items = frame.get("items")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ProtocolError("'chunks' frame: 'items' must be a list of objects")
        try:
            return Chunks(tuple(_decode_chunk(item) for item in items))
        except ProtocolError as error:
            # Failing one request would lose the frame's other items: the connection goes.
            raise ProtocolError(f"'chunks' frame: {error}") from None
    rid = frame.get("id") if isinstance(frame.get("id"), str) else None
    if kind == "end":
        return End(_get(frame, "id", str, rid))
    if kind == "credit":
        return Credit(_get(frame, "id", str, rid), _get(frame, "n", int, rid))
    if kind == "cancel":
        return Cancel(_get(frame, "id", str, rid))
    if kind == "generate":
        rid = _get(frame, "id", str, rid)
        return Generate(
            rid,
            _decode_request(frame.get("request"), rid),
            _get(frame, "window", int, rid),
            _optional(frame, "session_id", str, rid),
        )
    if kind == "error":
        return ErrorFrame(
            _get(frame, "id", str, rid),
            _get(frame, "message", str, rid),
            _optional(frame, "error_type", str, rid) or "internal_error",
            frame.get("code") if isinstance(frame.get("code"), str | int) else None,
            _status(frame.get("status")),
            frame.get("backend_fault") is not False,
        )
    if kind == "hello":
        models = _get(frame, "models", list, None)
        if not all(isinstance(m, str) for m in models):
            raise ProtocolError("'hello' frame: 'models' must be strings")
        lengths = frame.get("context_lengths", {})
        if not isinstance(lengths, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in lengths.values()
        ):
            raise ProtocolError("'hello' frame: 'context_lengths' must map models to integers")
        streams_unary = frame.get("streams_unary", True)
        if not isinstance(streams_unary, bool):
            raise ProtocolError("'hello' frame: bad 'streams_unary'")
        return Hello(
            _get(frame, "worker_id", str, None),
            tuple(models),
            _get(frame, "max_inflight", int, None),
            _get(frame, "protocol", int, None),
            streams_unary,
            lengths,
        )
    if kind == "load":
        return Load(_get(frame, "inflight", int, None), _get(frame, "queued", int, None))
    if kind == "session":
        return SessionReply(
            _get(frame, "id", str, rid),
            _get(frame, "status", str, rid),
            _optional(frame, "message", str, rid),
        )
    if kind == "open_session":
        return OpenSession(
            _get(frame, "id", str, rid),
            _get(frame, "session_id", str, rid),
            float(_get(frame, "timeout", (int, float), rid)),
            _optional(frame, "capacity_of_str_len", int, rid) or 0,
        )
    if kind == "close_session":
        return CloseSession(_get(frame, "id", str, rid), _get(frame, "session_id", str, rid))
    raise ProtocolError(f"unknown frame type {kind!r}", rid)
