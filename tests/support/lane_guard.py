"""Keep each test lane honest: a test filed under tests/unit or tests/trio that opens a real
socket or starts a process fails, so a misfiled test shows itself instead of quietly slowing
down (or flaking in) the fast lanes.

The guard patches the few calls every real socket and child process goes through: a socket's
`bind`/`connect`/`connect_ex` (trio's and httpx's sockets are stdlib sockets underneath),
`socket.socketpair` (except trio's own wakeup pair, made by the run loop itself),
`subprocess.Popen._execute_child` (trio.run_process uses Popen too), `os.fork` and
`os.posix_spawn`. A call raises `LaneViolation`; since code under test may catch and retry
what it sees as a network error, every violation is also recorded and fails the test at
teardown.
"""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import pytest

# Modules whose own socketpairs are part of running trio at all, not of the test.
TRIO_RUNTIME = "trio._core"


class LaneViolation(Exception):
    """A test did what its lane forbids (deliberately not an OSError, so no retry loop
    mistakes it for a refused connection)."""


def refuse_async(function: Callable[..., object]) -> None:
    """tests/unit is for tests without trio: an async test runs under trio, so it is refused."""
    if inspect.iscoroutinefunction(function):
        pytest.fail(
            f"{function.__name__} is async: it runs under trio, so it belongs in tests/trio/",
            pytrace=False,
        )


class LaneGuard:
    """Installs the patches on `monkeypatch` and keeps what was violated."""

    def __init__(self, lane: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lane = lane
        self.violations: list[str] = []
        self._monkeypatch = monkeypatch

    def forbid(self, what: str) -> NoReturn:
        message = (
            f"a test in tests/{self.lane}/ {what}: real sockets and processes belong in "
            "tests/system/ (in-memory streams: trio.testing.memory_stream_pair, "
            "tests/support/asgi_client.py, tests/support/worker_harness.py)"
        )
        self.violations.append(message)
        raise LaneViolation(message)

    def install(self) -> None:
        patch = self._monkeypatch.setattr
        for method in ("bind", "connect", "connect_ex"):
            patch(socket.socket, method, self._socket_method(method))
        real_socketpair = socket.socketpair

        def socketpair(*args: Any, **kwargs: Any) -> tuple[socket.socket, socket.socket]:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller == TRIO_RUNTIME or caller.startswith(TRIO_RUNTIME + "."):
                return real_socketpair(*args, **kwargs)
            self.forbid("made a socketpair")

        patch(socket, "socketpair", socketpair)
        patch(subprocess.Popen, "_execute_child", self.refuse("started a process"))
        patch(os, "fork", self.refuse("forked"))
        patch(os, "posix_spawn", self.refuse("spawned a process"))
        patch(os, "posix_spawnp", self.refuse("spawned a process"))

    def _socket_method(self, method: str) -> Callable[..., NoReturn]:
        def refuse(sock: socket.socket, address: Any, *args: Any) -> NoReturn:
            self.forbid(f"called socket.{method}({address!r})")

        return refuse

    def refuse(self, what: str) -> Callable[..., NoReturn]:
        def refuse(*args: Any, **kwargs: Any) -> NoReturn:
            self.forbid(what)

        return refuse

    def check(self) -> None:
        """Fail the test for what it did, even if the code under test swallowed the error."""
        if self.violations:
            pytest.fail("\n".join(self.violations), pytrace=False)
