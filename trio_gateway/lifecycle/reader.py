"""The response side of a flight: chunks read in batches, under the inactivity timeout.

The engine's silence is timed by the flight's watcher (`flight.waiting_since`). Whatever
is already queued is taken with the first chunk (`receive_nowait` until
`WouldBlock`), so under load one response write carries several tokens (docs/architecture.md
§1.7).
"""

from __future__ import annotations

import math

import trio

from trio_gateway.generation import GENERATION_ENDPOINTS, Chunk
from trio_gateway.lifecycle.flight import Flight
from trio_gateway.metrics import BackendSeries, GatewayMetrics, backend_label
from trio_gateway.openai.sse import completion_text


class ChunkReader:
    def __init__(
        self,
        chunks: trio.MemoryReceiveChannel[Chunk],
        flight: Flight,
        metrics: GatewayMetrics,
        *,
        keep_text: bool = False,
    ) -> None:
        self._chunks = chunks
        self._flight = flight
        self._metrics = metrics
        self._ttft = metrics.ttft.labels(flight.model)
        self._itl = metrics.itl.labels(flight.model)
        # Counted as each batch goes to the response writer, not when the request ends: a
        # rate over any window is then the rate of the streams, even while all still run.
        self._output_tokens = metrics.output_tokens.labels(flight.model)
        # The backend's children, bound at the first token: routing (and any retry) is over.
        self._backend: BackendSeries | None = None
        self.ended = False
        self.tokens = 0
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.first_at: float | None = None
        self._keep_text = keep_text
        self.texts: list[str] = []  # only with keep_text (--log-prompts)
        self._last_at = 0.0

    @property
    def first_token_at(self) -> float | None:
        """When the first token came: `first_at`, except for an answer that has no tokens
        (embeddings, a token list), whose first chunk is the whole answer."""
        return self.first_at if self._flight.endpoint in GENERATION_ENDPOINTS else None

    async def batch(self) -> list[Chunk]:
        """The next chunks, at least one unless the engine is done (then `ended` is set).

        While this waits, the flight's watcher times the engine's silence.
        """
        flight = self._flight
        flight.waiting_since = trio.current_time()
        try:
            first = await self._chunks.receive()
        except trio.EndOfChannel:
            self.ended = True
            return []
        finally:
            flight.waiting_since = math.inf
        batch = [first]
        while True:
            try:
                batch.append(self._chunks.receive_nowait())
            except trio.WouldBlock:
                break
            except trio.EndOfChannel:
                self.ended = True
                break
        self._account(batch)
        return batch

    def _account(self, batch: list[Chunk]) -> None:
        tokens = 0
        finished = False
        if self._keep_text:
            self.texts.extend(chunk.text or completion_text(chunk.payload) for chunk in batch)
        for chunk in batch:
            tokens += chunk.tokens
            if chunk.finish_reason is not None:
                finished = True
                self.finish_reason = chunk.finish_reason
                self.prompt_tokens = chunk.prompt_tokens
        if not tokens and not finished:
            return  # a role event or the like: not yet a token
        now = trio.current_time()
        flight = self._flight
        if self.first_at is None:
            self.first_at = now
            # An embedding or a token list has no first token: its latency is the duration's.
            timed = flight.endpoint in GENERATION_ENDPOINTS
            if timed:
                self._ttft.observe(now - flight.started_at)
            self._metrics.queued.labels(flight.model).dec()
            if flight.backend is not None:
                label = backend_label(flight.backend.engine, flight.backend.label)
                self._backend = self._metrics.backend_series(label, flight.model)
                if timed:
                    self._backend.ttft.observe(now - flight.dispatched_at)
        elif tokens:
            gap = (now - self._last_at) / tokens
            self._itl.observe(gap)
            if self._backend is not None:
                self._backend.itl.observe(gap)
        self._last_at = now
        self.tokens += tokens
        if tokens:
            self._output_tokens.inc(tokens)
