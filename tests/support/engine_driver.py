"""Drive an engine's `generate` directly (no gateway), collecting its chunks and when each came."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio

from trio_gateway.engines.mock import MockEngine
from trio_gateway.generation import Chunk, Endpoint, GenerationRequest, MockOptions

PROMPT = "hello there"


def request(
    prompt: str = PROMPT,
    *,
    max_tokens: int | None = None,
    stop: tuple[str, ...] = (),
    mock: MockOptions | None = None,
    n: int = 1,
    stream: bool = True,
    endpoint: Endpoint = "chat",
    body: dict[str, Any] | None = None,
    session_id: str | None = None,
) -> GenerationRequest:
    return GenerationRequest(
        request_id="req-1",
        endpoint=endpoint,
        model="mock",
        prompt=prompt,
        stream=stream,
        max_tokens=max_tokens,
        n=n,
        stop=stop,
        mock=mock,
        session_id=session_id,
        body=body or {},
    )


def events(chunks: list[Chunk]) -> list[dict[str, Any]]:
    """The SSE events of a stream's payloads, decoded."""
    payload = b"".join(chunk.payload for chunk in chunks)
    assert payload.endswith(b"\n\n")
    blocks = payload[:-2].split(b"\n\n")
    assert all(block.startswith(b"data: ") for block in blocks)
    return [orjson.loads(block[6:]) for block in blocks]


@asynccontextmanager
async def running(engine: MockEngine) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        yield nursery
        nursery.cancel_scope.cancel()


class Collector:
    """Reads a channel until the final chunk, noting when each chunk arrived."""

    def __init__(self, capacity: int = 1000) -> None:
        self.send, self.receive = trio.open_memory_channel[Chunk](capacity)
        self.chunks: list[Chunk] = []
        self.times: list[float] = []
        self.start = trio.current_time()

    async def read(self) -> None:
        async for chunk in self.receive:
            self.chunks.append(chunk)
            self.times.append(trio.current_time() - self.start)
            if chunk.finish_reason is not None:
                return

    @property
    def text(self) -> str:
        return "".join(chunk.text for chunk in self.chunks)


async def generate(engine: MockEngine, req: GenerationRequest) -> Collector:
    collector = Collector()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.read)
        await engine.generate(req, collector.send)
    return collector
