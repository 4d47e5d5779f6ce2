"""Fixtures and plugins shared by every lane (unit, trio, system)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import start_redis

pytest_plugins = ["tests.support.llamacpp_server"]


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A fresh redis-server for the test (skipped without one, unless CI requires it)."""
    process, port = start_redis()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(5)
