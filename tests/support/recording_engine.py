"""An engine wrapper that records how each `generate` ended: the lifecycle tests' witness."""

from __future__ import annotations

from collections.abc import Callable

import trio

from trio_gateway.engines.mock import MockEngine
from trio_gateway.generation import Chunk, GenerationRequest


class RecordingEngine:
    """Wraps an engine and records how each `generate` ended: the lifecycle tests' witness."""

    def __init__(self, inner: MockEngine) -> None:
        self.inner = inner
        self.name = inner.name
        self.url = inner.url
        self.on_available: Callable[[], None] | None = None
        self.models = inner.models
        self.capacity = inner.capacity
        self.available = inner.available
        self.streams_unary = inner.streams_unary
        self.keeps_session_history = inner.keeps_session_history
        self.context_lengths = inner.context_lengths
        self.endings: list[str] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.inner.run(task_status=task_status)

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        try:
            await self.inner.generate(request, send)
        except trio.Cancelled:
            self.endings.append("cancelled")
            raise
        except BaseException as error:
            self.endings.append(type(error).__name__)
            raise
        self.endings.append("finished")
