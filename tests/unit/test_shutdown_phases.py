"""The shutdown phase machine alone: the first trigger drains, the second cuts, the drain
delay keeps accepting while not ready (the drain through the app:
tests/trio/test_shutdown.py)."""

from __future__ import annotations

import math

from trio_gateway.lifecycle.shutdown import Phase, ShutdownPhases


def test_phases_first_trigger_drains_second_cuts() -> None:
    phases = ShutdownPhases(drain_timeout=30)
    assert phases.accepting(now=0) and phases.ready and phases.phase is Phase.RUNNING
    assert phases.drain_deadline == math.inf
    assert phases.request_stop(now=100) is Phase.DRAINING
    assert phases.drain_deadline == 130
    assert not phases.accepting(now=100) and not phases.ready
    assert phases.request_stop(now=101) is Phase.STOPPING
    assert phases.drain_deadline == 130  # unchanged: the second trigger skips, not re-arms
    assert phases.request_stop(now=102) is Phase.STOPPING
    phases.stopped()
    assert phases.request_stop(now=103) is Phase.STOPPED


def test_phases_drain_delay_keeps_accepting_while_not_ready() -> None:
    phases = ShutdownPhases(drain_timeout=30, drain_delay=5)
    phases.request_stop(now=100)
    assert not phases.ready
    assert phases.accepting(now=104.9)
    assert not phases.accepting(now=105)
    assert phases.drain_deadline == 135  # the drain starts after the delay


def test_phases_drain_over_moves_to_stopping_once() -> None:
    phases = ShutdownPhases(drain_timeout=5)
    phases.request_stop(now=0)
    phases.drain_over()
    assert phases.phase is Phase.STOPPING
    phases.stopped()
    phases.drain_over()
    assert phases.phase is Phase.STOPPED
