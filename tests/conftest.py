"""Fixtures, plugins and lane markers shared by every lane.

The tests live in three lanes, one folder each: tests/unit (pure: no trio, no socket, no
process), tests/trio (under trio, in-memory streams, MockClock), tests/system (real sockets on
127.0.0.1 and real processes). Everything under tests/system carries the `system` marker, so
`pytest -m "not system"` is the fast lane; tests/unit carries `unit`. Helpers shared between
test modules live in tests/support (test modules never import each other).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import start_redis

pytest_plugins = ["tests.support.llamacpp_server"]

TESTS = Path(__file__).parent
LANES = ("unit", "trio", "system")
MARKED_LANES = {"unit": pytest.mark.unit, "system": pytest.mark.system}


def lane_of(path: Path) -> str | None:
    """The lane folder `path` is filed in, if any."""
    try:
        lane = path.relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return lane if lane in LANES else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The lane markers, set here once rather than by a `pytestmark` in every file."""
    for item in items:
        marker = MARKED_LANES.get(lane_of(item.path) or "")
        if marker is not None:
            item.add_marker(marker)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A fresh redis-server for the test (skipped without one, unless CI requires it)."""
    process, port = start_redis()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(5)
