"""The unit lane's guard: a socket, a process or a trio run fails the test that tried, and the
lane's marker is set."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

import pytest
import trio

from tests.support.lane_guard import LaneGuard, LaneViolation, refuse_async


async def nothing() -> None:
    pass


def test_sockets_processes_and_trio_are_refused_and_recorded(lane_guard: LaneGuard) -> None:
    with socket.socket() as sock, pytest.raises(LaneViolation, match="tests/unit/"):
        sock.bind(("127.0.0.1", 0))
    with pytest.raises(LaneViolation, match=r"socket\.connect"), socket.socket() as sock:
        sock.connect(("127.0.0.1", 9))
    with pytest.raises(LaneViolation, match="socketpair"):
        socket.socketpair()
    with pytest.raises(LaneViolation, match="started a process"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(LaneViolation, match="forked"):
        os.fork()
    with pytest.raises(LaneViolation, match=r"trio\.run"):
        trio.run(nothing)
    assert len(lane_guard.violations) == 6
    lane_guard.violations.clear()  # seen: this test must not fail for them at teardown


def test_a_swallowed_violation_still_fails_the_test(lane_guard: LaneGuard) -> None:
    # As a retry loop under test might, the error is swallowed.
    with socket.socket() as sock, contextlib.suppress(Exception):
        sock.connect_ex(("127.0.0.1", 9))
    with pytest.raises(pytest.fail.Exception, match="tests/system/"):
        lane_guard.check()
    lane_guard.violations.clear()


def test_an_async_test_is_refused() -> None:
    refuse_async(test_an_async_test_is_refused)  # a plain function passes
    with pytest.raises(pytest.fail.Exception, match="belongs in tests/trio/"):
        refuse_async(nothing)


def test_the_lane_is_marked_unit_not_system(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("system") is None
