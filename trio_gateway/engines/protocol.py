"""The one contract every engine kind implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import trio

from trio_gateway.generation import Chunk, GenerationRequest


class Engine(Protocol):
    """An engine serves some models and turns requests into chunks.

    `generate` writes chunks into the channel the caller hands it, ending with one chunk that
    carries a `finish_reason`, and returns. It raises `GatewayError` for a failure the client
    should see, and stops at once when its caller's cancel scope is cancelled. It never
    closes `send`: the caller owns the channel.

    A failure before any chunk was produced that another engine could serve (connection
    refused, worker lost) is raised with `retryable=True`.

    `run` holds the engine's background work (a scheduler loop, connections) and is started
    with `nursery.start` in the gateway's nursery, so it lives and dies with the gateway.
    """

    # Set by the gateway before `run`: the engine calls it each time it becomes available
    # again (a worker's hello, an upstream answering `/models` again), so that queued
    # requests look again and an open breaker goes half-open at once, not after its
    # cooldown. An engine that is always available never calls it.
    on_available: Callable[[], None] | None

    @property
    def name(self) -> str:
        """Unique among the gateway's engines: the worker's id, the upstream's URL."""
        ...

    @property
    def url(self) -> str | None:
        """Where the engine is reached (a worker's `ws://` URL, an upstream's URL without
        credentials), None in process. Unlike `name`, it never changes: a worker's name
        becomes its id at its hello, so metrics labels and the admin API use this."""
        ...

    @property
    def models(self) -> tuple[str, ...]:
        """May change while the engine runs (a worker says hello)."""
        ...

    @property
    def capacity(self) -> int | None:
        """Concurrent requests it takes; None: no limit at the gateway."""
        ...

    @property
    def available(self) -> bool:
        """Connected and willing: the router only picks available engines."""
        ...

    @property
    def streams_unary(self) -> bool:
        """Whether a unary request still yields chunks as the engine goes (the mock), so its
        silence means a stall; False for one that relays a unary answer whole (an upstream
        says nothing until it is done), which the gateway then times as a whole."""
        ...

    @property
    def keeps_session_history(self) -> bool:
        """Whether a session's request runs behind the session's history, which the engine
        keeps (the mock: it caches history + prompt), or as sent (an OpenAI server keeps no
        state: the client resends the conversation). What `cache_aware` records for it
        follows (see `RouteKey.continuing`)."""
        ...

    @property
    def context_lengths(self) -> Mapping[str, int]:
        """Each model's context length (vLLM's `max_model_len`) where the engine knows it:
        `max_tokens` above it is refused before anything starts; a model not listed is left
        to the engine to judge."""
        ...

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None: ...

    async def open_session(self, session_id: str, idle_timeout_s: float) -> None:
        """Make room for a session's state, which then lives `idle_timeout_s` seconds past its last
        use; raise `GatewayError` when it cannot (the request fails fast, nothing half-open)."""
        ...

    async def close_session(self, session_id: str) -> None:
        """Forget a session's state; closing an unknown session is not an error."""
        ...
