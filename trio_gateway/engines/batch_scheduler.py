"""A continuous-batching scheduler for the mock engine, as a pure state machine.

Like vLLM's and Dynamo's mocker: at most `max_num_seqs` sequences run, the rest wait; every
engine step (one `step_s`) each running sequence emits its next step (one token of each of
its choices). Sequences that use the engine's own step time sit on one grid, so one wake-up
serves the whole batch. A sequence with its own `itl` (fault injection) keeps its own clock.

The engine runs on its own clock: when the caller is late, `step` performs every step that
was due (catch-up), as a GPU would have while the event loop was busy. That is what lets the
gateway coalesce several tokens into one write under load (docs/architecture.md §7).

What a step says is the sequence's `answer`'s business (`MockAnswer`): the scheduler asks it
to `render` the next step, offers that to `emit`, and `commit`s it only once taken.
Backpressure: `emit` returns False when the reader's buffer is full; that sequence pauses
until a later step, which offers the same step again, so a slow reader slows its own
sequence and nothing else.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from trio_gateway.errors import GatewayError, internal_error
from trio_gateway.generation import Chunk

NEVER = math.inf


class Answer(Protocol):
    """A sequence's output, one step at a time (`MockAnswer`)."""

    def render(self) -> Chunk:
        """The next step; calling it again before `commit` gives the same step."""
        ...

    def commit(self, chunk: Chunk) -> None:
        """The reader took the step `render` gave: move on."""
        ...


@dataclass(eq=False, slots=True)
class Sequence:
    """One generation inside the scheduler: its timing and faults; `answer` says the rest."""

    answer: Answer
    emit: Callable[[Chunk], bool]  # False: the reader is full, offer the step again later
    on_done: Callable[[], None]
    ttft: float = 0.0
    itl: float | None = None  # None: the engine's step
    error_after: int | None = None  # steps
    stall_after: int | None = None  # steps
    generated: int = 0  # steps the reader took
    next_due: float = NEVER
    error: GatewayError | None = None
    finished: bool = False


class BatchScheduler:
    def __init__(self, step_s: float, max_num_seqs: int) -> None:
        if not (0 < step_s < NEVER):
            raise ValueError("step_s must be positive and finite")
        self.step_s = step_s
        self.max_num_seqs = max_num_seqs
        # A dict for O(1) removal: a shutdown cancels a thousand sequences at once.
        self._running: dict[Sequence, None] = {}
        self._on_grid_count = 0  # running sequences that use the engine's step
        self.waiting: deque[Sequence] = deque()
        self._anchor = 0.0  # a time on the batch grid

    @property
    def running(self) -> list[Sequence]:
        return list(self._running)

    @property
    def running_count(self) -> int:
        return len(self._running)

    def submit(self, seq: Sequence, now: float) -> None:
        if len(self._running) < self.max_num_seqs:
            self._admit(seq, now)
        else:
            self.waiting.append(seq)

    def discard(self, seq: Sequence) -> None:
        """Forget a sequence at once (its request was cancelled)."""
        seq.finished = True
        if seq in self.waiting:
            self.waiting.remove(seq)
        else:
            self._remove_running(seq)

    def next_wakeup(self) -> float:
        """When `step` next has work; NEVER when idle."""
        if self.waiting and len(self._running) < self.max_num_seqs:
            return -NEVER
        return min((seq.next_due for seq in self._running), default=NEVER)

    def step(self, now: float) -> None:
        """Emit every token due by `now`, then finish, fail and admit sequences."""
        ended = False
        for seq in self._running:
            if seq.next_due <= now:
                self._advance(seq, now)
                ended = ended or seq.finished
        if ended:
            for seq in [seq for seq in self._running if seq.finished]:
                self._remove_running(seq)
        while self.waiting and len(self._running) < self.max_num_seqs:
            self._admit(self.waiting.popleft(), now)

    def _admit(self, seq: Sequence, now: float) -> None:
        first = now + seq.ttft
        if seq.itl is None:
            if self._on_grid_count:
                first = self._on_grid(first)
            else:
                self._anchor = first
            self._on_grid_count += 1
        seq.next_due = first
        self._running[seq] = None

    def _on_grid(self, t: float) -> float:
        """The first grid time at or after `t` (the batch's next step boundary)."""
        steps = math.ceil((t - self._anchor) / self.step_s - 1e-9)
        return self._anchor + steps * self.step_s

    def _remove_running(self, seq: Sequence) -> None:
        if seq in self._running:
            del self._running[seq]
            if seq.itl is None:
                self._on_grid_count -= 1

    def _advance(self, seq: Sequence, now: float) -> None:
        period = self.step_s if seq.itl is None else seq.itl
        due_steps = 1 + int((now - seq.next_due) / period + 1e-9) if period > 0 else NEVER
        produced = 0
        while produced < due_steps and not seq.finished:
            if seq.stall_after is not None and seq.generated >= seq.stall_after:
                seq.next_due = NEVER  # a hung backend: holds its slot, says nothing
                return
            if seq.error_after is not None and seq.generated >= seq.error_after:
                self._fail(
                    seq,
                    internal_error(
                        f"mock engine: injected failure after {seq.generated} tokens",
                        request_only=True,  # the request asked for it: the engine is fine
                    ),
                )
                return
            if not self._emit_next(seq):
                # The reader is full: pause until the next step, without banking the time.
                pause = period if period > 0 else self.step_s
                seq.next_due = self._on_grid(now + pause) if seq.itl is None else now + pause
                return
            produced += 1
        if not seq.finished:
            seq.next_due += produced * period

    def _emit_next(self, seq: Sequence) -> bool:
        answer = seq.answer
        chunk = answer.render()
        if not seq.emit(chunk):
            return False
        answer.commit(chunk)
        seq.generated += 1
        if chunk.finish_reason is not None:
            seq.finished = True
            seq.on_done()
        return True

    def _fail(self, seq: Sequence, error: GatewayError) -> None:
        seq.error = error
        seq.finished = True
        seq.on_done()
