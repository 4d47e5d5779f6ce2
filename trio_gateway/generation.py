"""The vocabulary shared by the HTTP side and every engine: a normalised request and its chunks.

The HTTP layer turns an OpenAI body into a `GenerationRequest`; an engine turns that into
`Chunk`s. Neither side knows the other's details, which is what lets one lifecycle drive the
mock engine, remote workers and OpenAI-compatible upstreams alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Endpoint = Literal["chat", "completion", "embeddings", "tokenize", "detokenize"]
# The endpoints that generate tokens (and may stream); the others are answered whole, in one
# chunk whose payload is the JSON answer (`openai/non_generative.py`).
GENERATION_ENDPOINTS: frozenset[Endpoint] = frozenset({"chat", "completion"})
ENDPOINTS: tuple[Endpoint, ...] = get_args(Endpoint)


@dataclass(frozen=True, slots=True)
class MockOptions:
    """Per-request knobs honoured only by the mock engine: timing, faults, and the shape of
    the answer (reasoning before the content, tool calls after it)."""

    tokens: int | None = None
    itl_ms: float | None = None
    ttft_ms: float | None = None
    error_after: int | None = None
    stall_after: int | None = None
    reasoning_tokens: int | None = None
    tool_calls: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    endpoint: Endpoint
    model: str
    prompt: str
    stream: bool
    max_tokens: int | None = None
    n: int = 1  # choices per request
    stop: tuple[str, ...] = ()
    include_usage: bool = False
    mock: MockOptions | None = None
    session_id: str | None = None
    session_timeout: float | None = None  # seconds idle before the session closes
    # The X-Request-Id (the client's, or ours when it sent none): what logs, workers and
    # upstreams see. `request_id` stays our own unique flight id.
    trace_id: str = ""
    # W3C Trace Context to send on (`trace_context.py`): the client's trace with the
    # gateway's span as the parent when tracing is on; as the client sent it when off.
    traceparent: str | None = None
    tracestate: str | None = None
    # The validated client body, for engines that forward it (OpenAI-compatible upstreams).
    body: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(slots=True)
class Chunk:
    """One step of output, already in the client's wire format.

    Every engine speaks OpenAI (the mock encodes its own events, an upstream's are relayed
    as they came), so the gateway never decodes and re-encodes tokens. `payload` is what the
    client gets for this chunk: SSE events (`data: {...}` each, blank line after) for a
    stream; for a unary request, the whole JSON answer on the last chunk and b"" before it.
    The gateway adds only what frames the stream: `data: [DONE]` and an error event.

    The other fields are what the gateway reads for itself: `tokens` (output tokens in this
    chunk, reasoning and tool-call deltas included: they are activity and count for TTFT),
    and on the last chunk `finish_reason` (the first choice's) and `prompt_tokens` when the
    engine knows it. `text` is the content text when the engine has it at hand (the mock);
    `--log-prompts` reads it, or decodes `payload` when it is empty.
    """

    text: str = ""
    tokens: int = 1
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    payload: bytes = b""
