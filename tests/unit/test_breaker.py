"""The circuit breaker as a pure state machine: time is an argument."""

from __future__ import annotations

import pytest

from trio_gateway.router.breaker import BreakerState, CircuitBreaker


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """Read through a call, so mypy does not narrow the state across transitions."""
    return breaker.state


def opened(threshold: int = 3, cooldown: float = 10.0, at: float = 100.0) -> CircuitBreaker:
    breaker = CircuitBreaker(threshold, cooldown)
    for _ in range(threshold):
        breaker.on_failure(at)
    assert state_of(breaker) is BreakerState.OPEN
    return breaker


def half_open(threshold: int = 3, cooldown: float = 10.0, at: float = 100.0) -> CircuitBreaker:
    breaker = opened(threshold, cooldown, at)
    breaker.on_dispatch(at + cooldown)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    return breaker


def test_defaults() -> None:
    breaker = CircuitBreaker()
    assert breaker.threshold == 5
    assert breaker.cooldown == 10.0
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.failures == 0
    assert breaker.allows(0.0)


def test_state_values() -> None:
    assert BreakerState.CLOSED.value == "closed"
    assert BreakerState.OPEN.value == "open"
    assert BreakerState.HALF_OPEN.value == "half_open"


@pytest.mark.parametrize("threshold", [0, -1, -100])
def test_threshold_below_one_rejected(threshold: int) -> None:
    with pytest.raises(ValueError, match="threshold must be at least 1"):
        CircuitBreaker(threshold)


def test_threshold_one_accepted() -> None:
    breaker = CircuitBreaker(1, 5.0)
    breaker.on_failure(0.0)
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.open_until == 5.0


def test_closed_allows_and_dispatch_does_not_change_it() -> None:
    breaker = CircuitBreaker(2, 1.0)
    for now in (0.0, 1.0, 1e9):
        breaker.on_dispatch(now)
        assert breaker.allows(now)
        assert state_of(breaker) is BreakerState.CLOSED


def test_threshold_consecutive_failures_open() -> None:
    breaker = CircuitBreaker(3, 10.0)
    breaker.on_failure(1.0)
    assert breaker.failures == 1
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.on_failure(2.0)
    assert breaker.failures == 2
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allows(2.0)
    breaker.on_failure(3.0)
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.open_until == 13.0
    assert breaker.failures == 0
    assert not breaker.allows(3.0)


def test_success_resets_the_count() -> None:
    breaker = CircuitBreaker(3, 10.0)
    breaker.on_failure(1.0)
    breaker.on_failure(2.0)
    breaker.on_success()
    assert breaker.failures == 0
    breaker.on_failure(3.0)
    breaker.on_failure(4.0)
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allows(4.0)
    breaker.on_failure(5.0)
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.open_until == 15.0


def test_abandoned_does_not_reset_or_count() -> None:
    breaker = CircuitBreaker(2, 10.0)
    breaker.on_failure(1.0)
    breaker.on_abandoned()
    assert breaker.failures == 1
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.on_failure(2.0)
    assert state_of(breaker) is BreakerState.OPEN


def test_open_refuses_until_cooldown_then_allows() -> None:
    breaker = opened(cooldown=10.0, at=100.0)
    assert breaker.open_until == 110.0
    for now in (100.0, 105.0, 109.999):
        assert not breaker.allows(now)
    assert breaker.allows(110.0)
    assert breaker.allows(500.0)
    # allows() reserves nothing and changes no state.
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.allows(110.0)


def test_dispatch_before_cooldown_stays_open() -> None:
    breaker = opened(cooldown=10.0, at=100.0)
    breaker.on_dispatch(105.0)
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allows(105.0)
    assert breaker.allows(110.0)


def test_dispatch_after_cooldown_is_the_half_open_probe() -> None:
    breaker = opened(cooldown=10.0, at=100.0)
    assert breaker.allows(110.0)
    breaker.on_dispatch(110.0)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    # One probe in flight: no second request, however much later.
    assert not breaker.allows(110.0)
    assert not breaker.allows(1000.0)


def test_probe_success_closes() -> None:
    breaker = half_open()
    breaker.on_success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.failures == 0
    assert breaker.allows(110.0)
    breaker.on_dispatch(110.0)
    assert breaker.allows(110.0)  # closed: dispatches do not reserve
    # A fresh count: it takes the full threshold to open again.
    breaker.on_failure(111.0)
    breaker.on_failure(112.0)
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.on_failure(113.0)
    assert state_of(breaker) is BreakerState.OPEN


def test_probe_failure_reopens_for_a_new_cooldown_from_then() -> None:
    breaker = half_open(threshold=3, cooldown=10.0, at=100.0)
    breaker.on_failure(117.0)  # one failure is enough in half-open
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.open_until == 127.0
    assert not breaker.allows(117.0)
    assert not breaker.allows(126.9)
    assert breaker.allows(127.0)
    breaker.on_dispatch(127.0)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allows(127.0)
    breaker.on_success()
    assert state_of(breaker) is BreakerState.CLOSED


def test_abandoned_probe_frees_the_slot() -> None:
    breaker = half_open(at=100.0)
    assert not breaker.allows(111.0)
    breaker.on_abandoned()
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.allows(111.0)
    breaker.on_dispatch(111.0)
    assert not breaker.allows(111.0)
    breaker.on_failure(112.0)
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.open_until == 122.0


def test_repeated_cycles() -> None:
    breaker = CircuitBreaker(1, 2.0)
    now = 0.0
    for _ in range(5):
        breaker.on_failure(now)
        assert state_of(breaker) is BreakerState.OPEN
        assert not breaker.allows(now + 1.9)
        now += 2.0
        assert breaker.allows(now)
        breaker.on_dispatch(now)
        assert not breaker.allows(now)
    breaker.on_success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allows(now)


def test_zero_cooldown_allows_at_once() -> None:
    breaker = opened(threshold=2, cooldown=0.0, at=50.0)
    assert breaker.allows(50.0)
    breaker.on_dispatch(50.0)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allows(50.0)


def test_reconnect_makes_open_half_open_at_once() -> None:
    breaker = opened(cooldown=10.0, at=100.0)
    breaker.on_reconnect()
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.allows(101.0)  # long before the cooldown's end
    breaker.on_dispatch(101.0)
    assert not breaker.allows(101.0)  # still one probe at a time
    breaker.on_failure(102.0)
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.open_until == 112.0


def test_reconnect_leaves_closed_and_a_running_probe_alone() -> None:
    closed = CircuitBreaker(3, 10.0)
    closed.on_failure(1.0)
    closed.on_reconnect()
    assert state_of(closed) is BreakerState.CLOSED
    assert closed.failures == 1
    probing = half_open(at=100.0)
    probing.on_reconnect()
    assert state_of(probing) is BreakerState.HALF_OPEN
    assert not probing.allows(111.0)
