"""tests/trio: tests that run under trio on in-memory streams (MockClock where time matters).
No real socket, no process; the guard fails any test that tries (trio's own wakeup
socketpair excepted), so a test filed here by mistake shows itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.lane_guard import LaneGuard


@pytest.fixture(autouse=True)
def lane_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[LaneGuard]:
    guard = LaneGuard("trio", monkeypatch)
    guard.install()
    yield guard
    guard.check()
