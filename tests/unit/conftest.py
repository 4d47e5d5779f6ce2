"""tests/unit: pure tests. No trio run, no socket, no process; the guard fails any test that
tries, so a test filed here by mistake shows itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from tests.support.lane_guard import LaneGuard, refuse_async


@pytest.fixture(autouse=True)
def lane_guard(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LaneGuard]:
    refuse_async(request.function)
    guard = LaneGuard("unit", monkeypatch)
    guard.install()
    monkeypatch.setattr(trio, "run", guard.refuse("ran trio (trio.run)"))
    yield guard
    guard.check()
