"""The in-process mock engine: a `BatchScheduler` driven by one trio task.

One scheduler loop per engine step, not one sleep per token per request; a request's
`generate` only parks until its sequence ends, and leaving it (cancellation included)
removes the sequence from the batch at once.

Prefill costs `ttft` plus `prefill_ms_per_1k_tokens` per thousand prompt tokens the engine's
prefix cache (`PrefixCache`) does not hold, as a real engine's would: what cache-aware
routing saves is then measurable without a GPU. Those prefills queue, first come first
served, as on a GPU, where prefill is compute bound and vLLM's scheduler gives a step's
token budget to the running prefills before new ones: a cold prompt delays the prefills that
arrive after it on the same engine (decode steps are not slowed; a request cancelled while
it waits keeps its place, a simplification).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Protocol

import trio

from trio_gateway.engines.batch_scheduler import BatchScheduler, Sequence
from trio_gateway.engines.mock_answer import MockAnswer, non_generative
from trio_gateway.engines.prefix_cache import PrefixCache
from trio_gateway.generation import GENERATION_ENDPOINTS, Chunk, GenerationRequest


class MockSettings(Protocol):
    """The `--model` and `--mock-*` settings, as both `GatewayConfig` and `WorkerConfig`
    carry them; a protocol, so the engines do not import the settings (which import the
    router, which imports the engines)."""

    @property
    def model(self) -> str: ...
    @property
    def mock_ttft_ms(self) -> float: ...
    @property
    def mock_itl_ms(self) -> float: ...
    @property
    def mock_max_num_seqs(self) -> int: ...
    @property
    def mock_tokens(self) -> int: ...
    @property
    def max_model_len(self) -> int: ...
    @property
    def mock_prefix_block_tokens(self) -> int: ...
    @property
    def mock_prefix_cache_blocks(self) -> int: ...
    @property
    def mock_prefill_ms_per_1k_tokens(self) -> float: ...


class MockEngine:
    name = "mock"
    url: str | None = None  # in process
    capacity: int | None = None  # it queues past max_num_seqs itself
    available = True
    streams_unary = True
    keeps_session_history = True
    # Never called: the mock is available from the start and stays so.
    on_available: Callable[[], None] | None = None

    def __init__(
        self,
        models: tuple[str, ...] = ("mock",),
        *,
        ttft_ms: float = 5.0,
        itl_ms: float = 10.0,
        max_num_seqs: int = 256,
        default_tokens: int = 100,
        session_capacity: int = 4096,
        max_model_len: int = 32768,
        prefix_block_tokens: int = 16,
        prefix_cache_blocks: int = 8192,
        prefill_ms_per_1k_tokens: float = 0.0,
    ) -> None:
        self.models = models
        self.context_lengths = {model: max_model_len for model in models}
        self.ttft = ttft_ms / 1000
        self.default_tokens = default_tokens
        self.scheduler = BatchScheduler(itl_ms / 1000, max_num_seqs)
        self.prefix_cache = PrefixCache(prefix_block_tokens, prefix_cache_blocks)
        self.prefill_s_per_token = prefill_ms_per_1k_tokens / 1_000_000
        self._prefill_free_at = -math.inf  # when the queued prefills are done
        self._sleep: trio.CancelScope | None = None
        self.started = False
        self.session_capacity = session_capacity
        # Each session's conversation so far (capacity-trimmed): the next answer continues it.
        self.sessions: dict[str, str] = {}

    @classmethod
    def from_settings(cls, config: MockSettings) -> MockEngine:
        """The mock the `--model` and `--mock-*` settings describe (gateway or worker)."""
        return cls(
            (config.model,),
            ttft_ms=config.mock_ttft_ms,
            itl_ms=config.mock_itl_ms,
            max_num_seqs=config.mock_max_num_seqs,
            default_tokens=config.mock_tokens,
            max_model_len=config.max_model_len,
            prefix_block_tokens=config.mock_prefix_block_tokens,
            prefix_cache_blocks=config.mock_prefix_cache_blocks,
            prefill_ms_per_1k_tokens=config.mock_prefill_ms_per_1k_tokens,
        )

    @property
    def active(self) -> int:
        """Sequences running or waiting: what a test checks to see the engine stopped."""
        return self.scheduler.running_count + len(self.scheduler.waiting)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.started = True
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self.scheduler.next_wakeup()) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None
            self.scheduler.step(trio.current_time())

    def _wake_by(self, when: float) -> None:
        if self._sleep is not None and when < self._sleep.deadline:
            self._sleep.deadline = when

    async def open_session(self, session_id: str, idle_timeout_s: float) -> None:
        self.sessions.setdefault(session_id, "")

    async def close_session(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        if request.endpoint not in GENERATION_ENDPOINTS:
            # Embeddings and (de)tokenizing take no batch step: answered at once, whole.
            max_model_len = self.context_lengths.get(request.model)
            await send.send(non_generative.answer(request, max_model_len))
            return
        history = self.sessions.get(request.session_id) if request.session_id else None
        answer: list[str] = []
        if history is not None:
            # Deterministic continuation: the session's text seeds the answer, and the
            # answer joins the session's text.
            request = dataclasses.replace(request, prompt=history + request.prompt)
            send = _Tee(send, answer)  # type: ignore[assignment]
        done = trio.Event()
        seq = self._sequence(request, send, done)
        self.scheduler.submit(seq, trio.current_time())
        self._wake_by(self.scheduler.next_wakeup())
        try:
            await done.wait()
        finally:
            if not seq.finished:
                self.scheduler.discard(seq)
                self._wake_by(self.scheduler.next_wakeup())
        if seq.error is not None:
            raise seq.error
        if history is not None and request.session_id in self.sessions:
            text = request.prompt + "".join(answer)
            self.sessions[request.session_id] = text[-self.session_capacity :]

    def _sequence(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk], done: trio.Event
    ) -> Sequence:
        mock = request.mock
        answer = MockAnswer(request, self.default_tokens)  # 400 here, before anything runs
        # Only a request that runs touches the cache (a 400 above never reaches it).
        answer.cached_tokens = self.prefix_cache.admit(request.prompt)
        ttft = self.ttft if mock is None or mock.ttft_ms is None else mock.ttft_ms / 1000
        prefill = self.prefill_s_per_token * (answer.prompt_tokens - answer.cached_tokens)
        if prefill > 0:
            now = trio.current_time()
            start = max(now, self._prefill_free_at)
            self._prefill_free_at = start + prefill
            ttft += start - now + prefill
        itl = None if mock is None or mock.itl_ms is None else mock.itl_ms / 1000
        if itl is not None and abs(itl - self.scheduler.step_s) < 1e-9:
            itl = None  # the engine's own step: ride the batch rather than a clock of its own

        def emit(chunk: Chunk) -> bool:
            try:
                send.send_nowait(chunk)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            return True

        return Sequence(
            answer=answer,
            emit=emit,
            on_done=done.set,
            ttft=ttft,
            itl=itl,
            error_after=None if mock is None else mock.error_after,
            stall_after=None if mock is None else mock.stall_after,
        )


class _Tee:
    """The one call the engine makes on a channel, recording the text that got through (the
    first choice's content: what the session continues from)."""

    def __init__(self, send: trio.MemorySendChannel[Chunk], texts: list[str]) -> None:
        self._send = send
        self._texts = texts

    def send_nowait(self, chunk: Chunk) -> None:
        self._send.send_nowait(chunk)
        self._texts.append(chunk.text)
