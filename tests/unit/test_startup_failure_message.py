"""The one line a failed start-up prints is found inside trio's exception groups."""

from __future__ import annotations

from trio_gateway.cli import startup_failure
from trio_gateway.processes import StartupError


def test_startup_failure_finds_our_message_in_a_group() -> None:
    group = ExceptionGroup("x", [ExceptionGroup("y", [StartupError("cannot listen on a:1")])])
    assert startup_failure(group) == "cannot listen on a:1"
    assert startup_failure(ExceptionGroup("x", [OSError(98, "in use")])) == (
        "cannot start: [Errno 98] in use"
    )
