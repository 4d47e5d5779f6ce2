"""What a replica has not yet told the others is bounded when Redis never takes it."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from trio_gateway.router.prefix_sharing import (
    PrefixSharing,
)


def test_publishing_is_bounded_without_a_flush() -> None:
    async def main() -> None:
        sharing = PrefixSharing("redis://127.0.0.1:1/0", apply=lambda *a: None, knows=bool)
        for i in range(10_000):
            sharing.publish("w1", [i])
        assert len(sharing._pending) == 4096
        assert sharing._pending[-1] == ("w1", [9999])

    trio.run(main, clock=MockClock(autojump_threshold=0))
