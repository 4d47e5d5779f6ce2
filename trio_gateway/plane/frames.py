"""The request plane's frames: one msgspec struct per frame type.

Each struct is its own schema: `type` is the tag msgspec writes and dispatches on, the
fields and their types are what a frame must hold, a default is what an absent key means.
So the codec (`plane.codec`) is a single typed decode, not a checker per field.

Every per-request frame has an `id`. Two frames differ in memory from the wire, and the
codec converts them: a `generate` carries the client's validated body, which the worker
parses again into the `GenerationRequest` held here; an `error` carries the error's type as
`error_type` (since `type` names the frame) and is read leniently (see `plane.codec`).
"""

from __future__ import annotations

import msgspec

from trio_gateway.generation import Chunk, GenerationRequest

# 2: bodies and wire payloads instead of parsed fields and text.
# 3: the `load` frame (sent every second, never read) and `open_session`'s
# `capacity_of_str_len` (always 0) are gone; a v2 worker's first `load` would break a v3
# gateway's connection, so the handshake refuses the mix instead. Every other frame is the
# same JSON, byte for byte, as v2's hand-written codec wrote it.
PROTOCOL_VERSION = 3


# worker → gateway
class Hello(msgspec.Struct, frozen=True, tag_field="type", tag="hello"):
    """The worker's first frame: who it is and what its engine says of itself (whether a
    unary request yields chunks as it goes, each model's context length where known)."""

    worker_id: str
    models: tuple[str, ...]
    max_inflight: int
    protocol: int  # no default: a hello must say which protocol it speaks
    streams_unary: bool = True
    context_lengths: dict[str, int] = msgspec.field(default_factory=dict)
    # The engine prepends a session's history itself (the mock), so a session's turn is not
    # the prefix it caches; absent: False.
    keeps_session_history: bool = False
    # The endpoints the worker's engine answers. Absent: a worker from before embeddings and
    # (de)tokenizing, which would refuse their `generate` as a bad frame (a 500 held against
    # it), so the gateway sends them elsewhere instead. Hence no protocol bump: old and new
    # peers still mix, each sends only what the other reads.
    endpoints: tuple[str, ...] = ("chat", "completion")


class ChunkFrame(
    msgspec.Struct, frozen=True, gc=False, omit_defaults=True, tag_field="type", tag="chunk"
):
    """The engine's wire bytes for one step, as they are (`payload`), so the plane is as
    lossless as the engine. The hot path: keys at their default stay off the wire, so a
    token is `id` and `payload`; engines set `finish_reason` and `prompt_tokens` on the last
    chunk only."""

    id: str
    payload: str
    tokens: int = 1
    finish_reason: str | None = None
    prompt_tokens: int | None = None

    def chunk(self) -> Chunk:
        return Chunk("", self.tokens, self.finish_reason, self.prompt_tokens, self.payload.encode())


class Chunks(msgspec.Struct, frozen=True, tag_field="type", tag="chunks"):
    """Several requests' chunks in one frame: what the worker sends when more than one is
    queued (a batch step produces a token for every running sequence at once)."""

    items: tuple[ChunkFrame, ...]


class End(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="end"):
    id: str


class ErrorFrame(msgspec.Struct, frozen=True, tag_field="type", tag="error"):
    id: str
    message: str
    type: str = msgspec.field(default="internal_error", name="error_type")
    code: str | int | None = None
    status: int = 500
    # Whether the failure says the worker's engine is down (it counts against the worker's
    # breaker) or only that this request failed (an injected or in-band error).
    backend_fault: bool = True


class SessionReply(msgspec.Struct, frozen=True, tag_field="type", tag="session"):
    id: str
    status: str  # "ok" | "error"
    message: str | None = None


# gateway → worker
class Generate(msgspec.Struct, frozen=True):
    """A `generate` frame as the worker uses it; on the wire its request is the body (see
    `plane.codec`). The session travels as `session_id`, not inside the request."""

    id: str
    request: GenerationRequest
    window: int
    session_id: str | None = None


class Credit(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="credit"):
    id: str
    n: int


class Cancel(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="cancel"):
    id: str


class OpenSession(msgspec.Struct, frozen=True, tag_field="type", tag="open_session"):
    id: str
    session_id: str
    timeout: float


class CloseSession(msgspec.Struct, frozen=True, tag_field="type", tag="close_session"):
    id: str
    session_id: str


Message = (
    Hello
    | ChunkFrame
    | Chunks
    | End
    | ErrorFrame
    | SessionReply
    | Generate
    | Credit
    | Cancel
    | OpenSession
    | CloseSession
)
