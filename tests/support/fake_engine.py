"""A do-nothing engine for router and admission tests: it states models and capacity, answers
one token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from trio_gateway.generation import Chunk, GenerationRequest


@dataclass(eq=False)
class FakeEngine:
    name: str
    models: tuple[str, ...] = ("m",)
    capacity: int | None = 1
    available: bool = True
    streams_unary: bool = True
    keeps_session_history: bool = False
    context_lengths: dict[str, int] = field(default_factory=dict)
    url: str | None = None
    on_available: Callable[[], None] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        await send.send(Chunk("x", finish_reason="stop"))
