"""A child of `serve --processes N` stops once its supervisor is gone (reparented), on
MockClock."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from trio_gateway.processes import stop_when_orphaned


async def test_a_child_stops_once_its_supervisor_is_gone(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    parents = iter([4242] * 5 + [1])  # reparented to init after five checks
    monkeypatch.setattr(os, "getppid", lambda: next(parents))
    reasons: list[str] = []
    started = trio.current_time()
    await stop_when_orphaned(reasons.append, 4242, interval=1.0)
    assert reasons == ["the supervisor is gone"]
    assert trio.current_time() - started == 5.0
