"""The vocabulary shared by the HTTP side and every engine: a normalised request and its chunks.

The HTTP layer turns an OpenAI body into a `GenerationRequest`; an engine turns that into
`Chunk`s. Neither side knows the other's details, which is what lets one lifecycle drive the
mock engine, remote workers and OpenAI-compatible upstreams alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Endpoint = Literal["chat", "completion"]


@dataclass(frozen=True, slots=True)
class MockOptions:
    """Per-request fault injection, honoured only by the mock engine (DESIGN §3)."""

    tokens: int | None = None
    itl_ms: float | None = None
    ttft_ms: float | None = None
    error_after: int | None = None
    stall_after: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    endpoint: Endpoint
    model: str
    prompt: str
    stream: bool
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    include_usage: bool = False
    mock: MockOptions | None = None
    session_id: str | None = None
    session_timeout: float | None = None  # seconds idle before the session closes
    # The X-Request-Id (the client's, or ours when it sent none): what logs, workers and
    # upstreams see. `request_id` stays our own unique flight id.
    trace_id: str = ""
    # The validated client body, for engines that forward it (OpenAI-compatible upstreams).
    body: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(slots=True)
class Chunk:
    """One step of output. `tokens` counts the tokens in `text` (an engine may batch several).

    The last chunk of a generation carries `finish_reason` and, when the engine knows it,
    `prompt_tokens`.
    """

    text: str
    tokens: int = 1
    finish_reason: str | None = None
    prompt_tokens: int | None = None
