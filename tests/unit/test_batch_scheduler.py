"""The continuous-batching scheduler as a pure state machine: explicit `now`, fake readers.

What a step says is the answer's business (tests/test_mock_answer.py); here a `Script` of
one-token steps stands in for it, so these tests are about time, limits and backpressure.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from trio_gateway.engines.batch_scheduler import NEVER, BatchScheduler, Sequence
from trio_gateway.errors import GatewayError
from trio_gateway.generation import Chunk
from trio_gateway.openai.errors import error_body, http_status


def word(index: int) -> str:
    return f"t{index} "


def expected_text(count: int) -> str:
    return "".join(word(i) for i in range(count))


class Script:
    """A fake answer: `target_tokens` one-token steps (one empty step when 0), the last with
    `finish_reason` and `prompt_tokens`. It moves on only when committed, as `MockAnswer`."""

    def __init__(self, target_tokens: int, finish_reason: str, prompt_tokens: int) -> None:
        self.target_tokens = target_tokens
        self.finish_reason = finish_reason
        self.prompt_tokens = prompt_tokens
        self.taken = 0
        self.renders = 0
        self.commits = 0
        self._offered: Chunk | None = None

    def render(self) -> Chunk:
        self.renders += 1
        if self.target_tokens == 0:
            chunk = Chunk("", 0, self.finish_reason, self.prompt_tokens)
        elif self.taken + 1 >= self.target_tokens:
            chunk = Chunk(word(self.taken), 1, self.finish_reason, self.prompt_tokens)
        else:
            chunk = Chunk(word(self.taken), 1)
        self._offered = chunk
        return chunk

    def commit(self, chunk: Chunk) -> None:
        assert chunk is self._offered  # only what was offered last, and only once
        self._offered = None
        self.commits += 1
        self.taken += 1


class Reader:
    """A fake `emit`: records chunks with the time they were emitted; `full` refuses them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.chunks: list[Chunk] = []
        self.times: list[float] = []
        self.full = False
        self.refused = 0
        self.done_calls = 0

    def emit(self, chunk: Chunk) -> bool:
        if self.full:
            self.refused += 1
            return False
        self.chunks.append(chunk)
        self.times.append(self.clock.now)
        return True

    def on_done(self) -> None:
        self.done_calls += 1

    @property
    def text(self) -> str:
        return "".join(chunk.text for chunk in self.chunks)


class Clock:
    """Steps a scheduler the way the engine does, with `now` under the test's control."""

    def __init__(self, scheduler: BatchScheduler) -> None:
        self.scheduler = scheduler
        self.now = 0.0
        self.steps: list[float] = []

    def step(self, now: float) -> None:
        self.now = now
        self.steps.append(now)
        self.scheduler.step(now)

    def run_until(self, until: float) -> None:
        """Wake at every `next_wakeup` up to `until`, as the engine's loop would."""
        while True:
            wakeup = self.scheduler.next_wakeup()
            if wakeup > until:
                break
            self.step(max(wakeup, self.now))


def make(step_s: float = 1.0, max_num_seqs: int = 8) -> tuple[BatchScheduler, Clock]:
    scheduler = BatchScheduler(step_s, max_num_seqs)
    return scheduler, Clock(scheduler)


def sequence(
    clock: Clock,
    *,
    target_tokens: int = 5,
    finish_reason: str = "length",
    prompt_tokens: int = 7,
    **kwargs: Any,
) -> tuple[Sequence, Reader]:
    reader = Reader(clock)
    seq = Sequence(
        answer=Script(target_tokens, finish_reason, prompt_tokens),
        emit=reader.emit,
        on_done=reader.on_done,
        **kwargs,
    )
    return seq, reader


def script(seq: Sequence) -> Script:
    assert isinstance(seq.answer, Script)
    return seq.answer


# --- basics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("step_s", [0.0, -1.0])
def test_step_must_be_positive(step_s: float) -> None:
    with pytest.raises(ValueError, match="step_s must be positive"):
        BatchScheduler(step_s, 4)


def test_idle_scheduler_never_wakes() -> None:
    scheduler, _ = make()
    assert scheduler.next_wakeup() == NEVER == math.inf
    scheduler.step(100.0)
    assert scheduler.running == []
    assert not scheduler.waiting


def test_first_token_at_now_plus_ttft() -> None:
    scheduler, clock = make(step_s=1.0)
    seq, reader = sequence(clock, ttft=2.5)
    scheduler.submit(seq, 10.0)
    assert scheduler.running == [seq]
    assert seq.next_due == 12.5
    assert scheduler.next_wakeup() == 12.5
    clock.step(12.4)
    assert reader.chunks == []
    assert script(seq).renders == 0  # nothing is rendered before it is due
    clock.step(12.5)
    assert reader.times == [12.5]
    assert reader.chunks == [Chunk(word(0), 1, None, None)]
    assert seq.generated == 1
    assert seq.next_due == 13.5


def test_one_token_per_step() -> None:
    scheduler, clock = make(step_s=0.5)
    seq, reader = sequence(clock, target_tokens=4, ttft=0.25)
    scheduler.submit(seq, 0.0)
    clock.run_until(100.0)
    assert reader.times == [0.25, 0.75, 1.25, 1.75]
    assert clock.steps == [0.25, 0.75, 1.25, 1.75]
    assert [c.tokens for c in reader.chunks] == [1, 1, 1, 1]
    assert seq.generated == 4
    assert scheduler.running == []
    assert scheduler.next_wakeup() == NEVER


def test_zero_ttft_first_token_at_submit_time() -> None:
    scheduler, clock = make()
    seq, reader = sequence(clock, target_tokens=2)
    scheduler.submit(seq, 3.0)
    assert scheduler.next_wakeup() == 3.0
    clock.step(3.0)
    assert reader.times == [3.0]


# --- finishing ------------------------------------------------------------------------------


@pytest.mark.parametrize("finish_reason", ["length", "stop"])
def test_last_chunk_carries_finish_reason_and_prompt_tokens(finish_reason: str) -> None:
    scheduler, clock = make()
    seq, reader = sequence(clock, target_tokens=3, finish_reason=finish_reason, prompt_tokens=11)
    scheduler.submit(seq, 0.0)
    clock.run_until(100.0)
    assert [c.finish_reason for c in reader.chunks] == [None, None, finish_reason]
    assert [c.prompt_tokens for c in reader.chunks] == [None, None, 11]
    assert seq.finished is True
    assert seq.error is None
    assert reader.done_calls == 1
    assert seq not in scheduler.running


def test_finished_sequence_is_removed_in_the_step_it_ends() -> None:
    scheduler, clock = make()
    seq, reader = sequence(clock, target_tokens=1)
    scheduler.submit(seq, 0.0)
    clock.step(0.0)
    assert reader.chunks == [Chunk(word(0), 1, "length", 7)]
    assert scheduler.running == []
    clock.step(50.0)
    assert len(reader.chunks) == 1
    assert reader.done_calls == 1
    assert script(seq).renders == 1


def test_an_empty_final_step_ends_the_sequence() -> None:
    scheduler, clock = make()
    seq, reader = sequence(clock, target_tokens=0, finish_reason="stop", prompt_tokens=3, ttft=1)
    scheduler.submit(seq, 0.0)
    clock.run_until(100.0)
    assert reader.chunks == [Chunk("", 0, "stop", 3)]
    assert reader.times == [1.0]
    assert seq.generated == 1  # steps, not tokens
    assert seq.finished is True
    assert reader.done_calls == 1
    assert scheduler.running == []


# --- batching on one grid -------------------------------------------------------------------


def test_late_sequence_joins_the_batch_grid() -> None:
    scheduler, clock = make(step_s=1.0)
    a, reader_a = sequence(clock, target_tokens=4, ttft=0.5)
    scheduler.submit(a, 0.0)
    clock.step(0.5)
    # b arrives off-grid: 0.7 + 0.25 = 0.95 is rounded up to the batch's next step, 1.5.
    b, reader_b = sequence(clock, target_tokens=3, ttft=0.25)
    scheduler.submit(b, 0.7)
    assert b.next_due == 1.5
    assert scheduler.next_wakeup() == 1.5 == a.next_due
    clock.run_until(100.0)
    assert reader_a.times == [0.5, 1.5, 2.5, 3.5]
    assert reader_b.times == [1.5, 2.5, 3.5]
    # One wake-up served both sequences at every shared step.
    assert clock.steps == [0.5, 1.5, 2.5, 3.5]


@pytest.mark.parametrize(
    ("submit_at", "ttft", "first"),
    [(0.7, 0.0, 1.5), (1.0, 0.5, 1.5), (1.5, 0.0, 1.5), (0.7, 2.0, 3.5), (2.6, 0.0, 3.5)],
)
def test_admission_rounds_up_to_the_grid(submit_at: float, ttft: float, first: float) -> None:
    scheduler, clock = make(step_s=1.0)
    a, _ = sequence(clock, target_tokens=100, ttft=0.5)
    scheduler.submit(a, 0.0)
    b, _ = sequence(clock, ttft=ttft)
    scheduler.submit(b, submit_at)
    assert b.next_due == first


def test_new_batch_after_idle_starts_its_own_grid() -> None:
    scheduler, clock = make(step_s=1.0)
    a, _ = sequence(clock, target_tokens=1, ttft=0.5)
    scheduler.submit(a, 0.0)
    clock.run_until(10.0)
    assert scheduler.running == []
    b, reader_b = sequence(clock, target_tokens=2, ttft=0.25)
    scheduler.submit(b, 10.0)
    assert b.next_due == 10.25  # not bent onto the old grid (10.5)
    c, reader_c = sequence(clock, target_tokens=2, ttft=0.0)
    scheduler.submit(c, 10.5)
    assert c.next_due == 11.25  # but the next one joins b's grid
    clock.run_until(100.0)
    assert reader_b.times == [10.25, 11.25]
    assert reader_c.times == [11.25, 12.25]


def test_per_sequence_itl_keeps_its_own_clock() -> None:
    scheduler, clock = make(step_s=1.0)
    own, reader_own = sequence(clock, target_tokens=4, ttft=0.25, itl=0.75)
    scheduler.submit(own, 0.0)
    assert own.next_due == 0.25
    # With only an own-clock sequence running, a grid sequence anchors a fresh grid.
    grid, reader_grid = sequence(clock, target_tokens=3, ttft=0.0)
    scheduler.submit(grid, 0.5)
    assert grid.next_due == 0.5
    clock.run_until(100.0)
    assert reader_own.times == [0.25, 1.0, 1.75, 2.5]
    assert reader_grid.times == [0.5, 1.5, 2.5]


def test_own_itl_sequence_is_not_bent_onto_the_grid() -> None:
    scheduler, clock = make(step_s=1.0)
    grid, _ = sequence(clock, target_tokens=100, ttft=0.5)
    scheduler.submit(grid, 0.0)
    own, reader_own = sequence(clock, target_tokens=3, ttft=0.125, itl=0.25)
    scheduler.submit(own, 0.0)
    assert own.next_due == 0.125
    clock.run_until(0.7)
    assert reader_own.times == [0.125, 0.375, 0.625]


def test_zero_itl_emits_everything_in_one_step() -> None:
    scheduler, clock = make(step_s=1.0)
    seq, reader = sequence(clock, target_tokens=6, ttft=2.0, itl=0.0)
    scheduler.submit(seq, 0.0)
    clock.run_until(100.0)
    assert reader.times == [2.0] * 6
    assert clock.steps == [2.0]
    assert reader.chunks[-1].finish_reason == "length"


# --- max_num_seqs and the waiting queue -----------------------------------------------------


def test_max_num_seqs_caps_running_and_the_rest_wait_in_order() -> None:
    scheduler, clock = make(step_s=1.0, max_num_seqs=2)
    seqs = [sequence(clock, target_tokens=2) for _ in range(5)]
    for seq, _ in seqs:
        scheduler.submit(seq, 0.0)
    assert scheduler.running == [seqs[0][0], seqs[1][0]]
    assert list(scheduler.waiting) == [s for s, _ in seqs[2:]]
    assert all(s.next_due == NEVER for s, _ in seqs[2:])
    assert scheduler.next_wakeup() == 0.0  # full: the running batch decides


def test_waiting_sequence_is_admitted_when_a_slot_frees() -> None:
    scheduler, clock = make(step_s=1.0, max_num_seqs=2)
    a, reader_a = sequence(clock, target_tokens=1)
    b, reader_b = sequence(clock, target_tokens=3)
    c, reader_c = sequence(clock, target_tokens=2)
    d, reader_d = sequence(clock, target_tokens=2)
    for seq in (a, b, c, d):
        scheduler.submit(seq, 0.0)
    clock.step(0.0)
    # a finished at 0.0; c (first in line) took its slot at once, on b's grid.
    assert reader_a.chunks[-1].finish_reason == "length"
    assert scheduler.running == [b, c]
    assert list(scheduler.waiting) == [d]
    assert c.next_due == 0.0
    clock.run_until(100.0)
    assert reader_b.times == [0.0, 1.0, 2.0]
    assert reader_c.times == [0.0, 1.0]
    # c finished at 1.0, so d started at 1.0; b kept its slot.
    assert reader_d.times == [1.0, 2.0]
    assert scheduler.running == []
    assert not scheduler.waiting


def test_waiting_sequence_ttft_counts_from_admission() -> None:
    scheduler, clock = make(step_s=1.0, max_num_seqs=1)
    a, _ = sequence(clock, target_tokens=3)
    b, reader_b = sequence(clock, target_tokens=1, ttft=0.5)
    scheduler.submit(a, 0.0)
    scheduler.submit(b, 0.0)
    clock.run_until(100.0)
    # a emits at 0, 1, 2 and ends at 2.0; b is admitted then and prefills for 0.5.
    assert reader_b.times == [2.5]


def test_next_wakeup_is_immediate_when_a_waiting_sequence_can_start() -> None:
    scheduler, clock = make(step_s=1.0, max_num_seqs=1)
    a, _ = sequence(clock, target_tokens=100, ttft=5.0)
    b, reader_b = sequence(clock, target_tokens=1)
    scheduler.submit(a, 0.0)
    scheduler.submit(b, 0.0)
    assert scheduler.next_wakeup() == 5.0
    scheduler.discard(a)
    assert scheduler.next_wakeup() == -math.inf
    clock.step(1.0)
    assert scheduler.running == [b]
    assert b.next_due == 1.0
    clock.run_until(100.0)
    assert reader_b.times == [1.0]


# --- catch-up -------------------------------------------------------------------------------


def test_late_step_emits_every_due_token_as_separate_chunks() -> None:
    scheduler, clock = make(step_s=1.0)
    seq, reader = sequence(clock, target_tokens=10, ttft=0.5)
    scheduler.submit(seq, 0.0)
    clock.step(4.75)  # tokens were due at 0.5, 1.5, 2.5, 3.5, 4.5
    assert len(reader.chunks) == 5
    assert all(c.tokens == 1 for c in reader.chunks)
    assert reader.text == expected_text(5)
    assert seq.generated == 5
    assert seq.next_due == 5.5  # the engine's clock, not the caller's
    clock.step(5.4)
    assert len(reader.chunks) == 5


def test_catch_up_stops_at_the_target() -> None:
    scheduler, clock = make(step_s=1.0)
    seq, reader = sequence(clock, target_tokens=3)
    scheduler.submit(seq, 0.0)
    clock.step(1000.0)
    assert [c.finish_reason for c in reader.chunks] == [None, None, "length"]
    assert reader.done_calls == 1
    assert scheduler.running == []


def test_catch_up_with_own_itl() -> None:
    scheduler, clock = make(step_s=1.0)
    seq, reader = sequence(clock, target_tokens=10, itl=0.25)
    scheduler.submit(seq, 0.0)
    clock.step(1.0)  # due at 0, 0.25, 0.5, 0.75, 1.0
    assert len(reader.chunks) == 5
    assert seq.next_due == 1.25


def test_catch_up_emits_every_due_token_with_decimal_step() -> None:
    scheduler, clock = make(step_s=0.01)
    seq, reader = sequence(clock, target_tokens=10, ttft=0.005)
    scheduler.submit(seq, 0.0)
    assert seq.next_due + 0.01 <= 0.015  # by the scheduler's own arithmetic, 2 are due
    clock.step(0.015)
    assert len(reader.chunks) == 2
    assert scheduler.next_wakeup() > 0.015


# --- errors and stalls ----------------------------------------------------------------------


def test_error_after_sets_error_and_calls_on_done() -> None:
    scheduler, clock = make(step_s=1.0)
    seq, reader = sequence(clock, target_tokens=10, error_after=2)
    scheduler.submit(seq, 0.0)
    clock.run_until(100.0)
    assert len(reader.chunks) == 2
    assert all(c.finish_reason is None for c in reader.chunks)
    assert isinstance(seq.error, GatewayError)
    assert http_status(seq.error) == 500
    assert error_body(seq.error)["error"]["code"] == "internal_error"
    assert "after 2 tokens" in seq.error.message
    assert seq.finished is True
    assert reader.done_calls == 1
    assert scheduler.running == []
    assert clock.steps == [0.0, 1.0, 2.0]


def test_error_after_zero_fails_before_any_token() -> None:
    scheduler, clock = make()
    seq, reader = sequence(clock, error_after=0, ttft=3.0)
    scheduler.submit(seq, 0.0)
    clock.run_until(100.0)
    assert reader.chunks == []
    assert seq.error is not None
    assert clock.steps == [3.0]


def test_error_after_beyond_target_never_fires() -> None:
    scheduler, clock = make()
    seq, reader = sequence(clock, target_tokens=3, error_after=3)
    scheduler.submit(seq, 0.0)
    clock.run_until(100.0)
    assert seq.error is None
    assert reader.chunks[-1].finish_reason == "length"


def test_error_during_catch_up() -> None:
    scheduler, clock = make()
    seq, reader = sequence(clock, target_tokens=10, error_after=4)
    scheduler.submit(seq, 0.0)
    clock.step(50.0)
    assert len(reader.chunks) == 4
    assert seq.error is not None
    assert reader.done_calls == 1


def test_stall_after_stops_emitting_forever_without_finishing() -> None:
    scheduler, clock = make(step_s=1.0, max_num_seqs=1)
    seq, reader = sequence(clock, target_tokens=10, stall_after=2)
    scheduler.submit(seq, 0.0)
    clock.run_until(1000.0)
    assert len(reader.chunks) == 2
    assert seq.next_due == NEVER
    assert scheduler.next_wakeup() == NEVER
    assert seq.finished is False
    assert seq.error is None
    assert reader.done_calls == 0
    assert scheduler.running == [seq]  # a hung backend holds its slot
    clock.step(10_000.0)
    assert len(reader.chunks) == 2
    waiting, _ = sequence(clock)
    scheduler.submit(waiting, 10_000.0)
    assert list(scheduler.waiting) == [waiting]


def test_stall_after_zero_says_nothing() -> None:
    scheduler, clock = make()
    seq, reader = sequence(clock, stall_after=0, ttft=1.0)
    scheduler.submit(seq, 0.0)
    clock.step(500.0)
    assert reader.chunks == []
    assert seq.next_due == NEVER
    assert not seq.finished


def test_discarding_a_stalled_sequence_frees_its_slot() -> None:
    scheduler, clock = make(max_num_seqs=1)
    stalled, _ = sequence(clock, stall_after=1)
    other, reader_other = sequence(clock, target_tokens=1)
    scheduler.submit(stalled, 0.0)
    scheduler.submit(other, 0.0)
    clock.run_until(10.0)
    assert scheduler.next_wakeup() == NEVER
    scheduler.discard(stalled)
    assert scheduler.next_wakeup() == -math.inf
    clock.step(10.0)
    clock.run_until(20.0)
    assert reader_other.times == [10.0]


# --- backpressure ---------------------------------------------------------------------------


def test_full_reader_pauses_its_sequence_without_banking_steps() -> None:
    scheduler, clock = make(step_s=1.0)
    seq, reader = sequence(clock, target_tokens=10)
    scheduler.submit(seq, 0.0)
    clock.step(0.0)
    reader.full = True
    clock.run_until(4.0)  # refused at 1, 2, 3, 4
    assert reader.refused == 4
    assert seq.generated == 1
    assert seq.next_due == 5.0
    assert not seq.finished
    reader.full = False
    clock.step(5.0)
    # One token, the one that was refused: no burst of the four missed steps.
    assert [c.text for c in reader.chunks] == [word(0), word(1)]
    assert script(seq).renders == 6  # the refused step was offered five times ...
    assert script(seq).commits == 2  # ... and committed once
    assert seq.generated == 2
    assert seq.next_due == 6.0
    clock.run_until(100.0)
    assert reader.text == expected_text(10)
    assert reader.times == [0.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0]


def test_backpressure_in_a_late_step_pauses_at_least_one_step_on_the_grid() -> None:
    scheduler, clock = make(step_s=1.0)
    seq, reader = sequence(clock, target_tokens=10, ttft=0.5)
    scheduler.submit(seq, 0.0)
    reader.full = True
    clock.step(3.75)
    assert reader.refused == 1  # gave up at the first refusal: no catch-up into a full reader
    # The pause is a whole step from `now`, then up to the grid: 3.75 + 1 -> 5.5 (not 4.5).
    assert seq.next_due == 5.5
    reader.full = False
    clock.step(5.25)
    assert reader.chunks == []
    clock.step(5.5)
    assert len(reader.chunks) == 1


def test_backpressure_with_own_itl_pauses_for_one_itl() -> None:
    scheduler, clock = make(step_s=1.0)
    seq, reader = sequence(clock, target_tokens=5, itl=0.25)
    scheduler.submit(seq, 0.0)
    reader.full = True
    clock.step(0.125)
    assert seq.next_due == 0.375
    reader.full = False
    clock.step(0.375)
    assert len(reader.chunks) == 1


def test_a_full_reader_does_not_slow_the_rest_of_the_batch() -> None:
    scheduler, clock = make(step_s=1.0)
    slow, slow_reader = sequence(clock, target_tokens=5)
    fast, fast_reader = sequence(clock, target_tokens=5)
    scheduler.submit(slow, 0.0)
    scheduler.submit(fast, 0.0)
    slow_reader.full = True
    clock.run_until(10.0)
    assert fast_reader.times == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert slow_reader.chunks == []
    assert slow.generated == 0
    assert scheduler.running == [slow]


def test_refused_final_chunk_is_retried_and_done_called_once() -> None:
    scheduler, clock = make(step_s=1.0)
    seq, reader = sequence(clock, target_tokens=0, finish_reason="stop")
    scheduler.submit(seq, 0.0)
    reader.full = True
    clock.step(0.0)
    assert not seq.finished
    assert reader.done_calls == 0
    reader.full = False
    clock.run_until(10.0)
    assert reader.chunks == [Chunk("", 0, "stop", 7)]
    assert reader.done_calls == 1


# --- discard --------------------------------------------------------------------------------


def test_discard_running_sequence() -> None:
    scheduler, clock = make()
    a, reader_a = sequence(clock, target_tokens=10)
    b, reader_b = sequence(clock, target_tokens=3)
    scheduler.submit(a, 0.0)
    scheduler.submit(b, 0.0)
    clock.step(0.0)
    scheduler.discard(a)
    assert scheduler.running == [b]
    assert a.finished is True
    assert reader_a.done_calls == 0  # discard is the caller's own doing
    clock.run_until(100.0)
    assert len(reader_a.chunks) == 1
    assert len(reader_b.chunks) == 3


def test_discard_waiting_sequence() -> None:
    scheduler, clock = make(max_num_seqs=1)
    a, _ = sequence(clock, target_tokens=2)
    b, reader_b = sequence(clock)
    c, reader_c = sequence(clock, target_tokens=1)
    for seq in (a, b, c):
        scheduler.submit(seq, 0.0)
    scheduler.discard(b)
    assert list(scheduler.waiting) == [c]
    assert scheduler.running == [a]
    assert b.finished is True
    clock.run_until(100.0)
    assert reader_b.chunks == []
    assert reader_c.times == [1.0]


def test_discard_unknown_or_twice_is_harmless() -> None:
    scheduler, clock = make()
    a, _ = sequence(clock)
    b, _ = sequence(clock)
    scheduler.submit(a, 0.0)
    scheduler.discard(b)
    scheduler.discard(a)
    scheduler.discard(a)
    assert scheduler.running == []
    assert scheduler.next_wakeup() == NEVER
