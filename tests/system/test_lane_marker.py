"""Everything under tests/system carries the `system` marker, so `-m "not system"` leaves it
out; nothing guards this lane: real sockets and processes are what it is for."""

from __future__ import annotations

import socket

import pytest


def test_the_lane_is_marked_system_and_may_open_sockets(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("system") is not None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert sock.getsockname()[1] > 0
