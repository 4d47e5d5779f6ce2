"""The trio lane's guard: trio runs (its own wakeup socketpair is allowed), but a test's real
socket or process fails the test that tried."""

from __future__ import annotations

import socket
import sys

import pytest
import trio
import trio.testing

from tests.support.lane_guard import LaneGuard, LaneViolation


async def test_trio_runs_but_sockets_and_processes_are_refused(
    lane_guard: LaneGuard, autojump_clock: trio.testing.MockClock
) -> None:
    await trio.sleep(1)  # the run loop, its wakeup socketpair included, works
    client, server = trio.testing.memory_stream_pair()  # in-memory streams are the lane's own
    await client.send_all(b"x")
    assert await server.receive_some() == b"x"
    with pytest.raises(LaneViolation, match="tests/trio/"), trio.socket.socket() as sock:
        await sock.connect(("127.0.0.1", 9))
    with pytest.raises(LaneViolation, match="socketpair"):
        trio.socket.socketpair()
    with pytest.raises(LaneViolation, match=r"socket\.bind"), socket.socket() as stdlib_sock:
        stdlib_sock.bind(("127.0.0.1", 0))
    with pytest.raises(LaneViolation, match="started a process"):
        await trio.run_process([sys.executable, "-c", "pass"])
    assert len(lane_guard.violations) == 4
    lane_guard.violations.clear()  # seen: this test must not fail for them at teardown


async def test_the_lane_is_not_marked_system(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("system") is None
    assert request.node.get_closest_marker("unit") is None
