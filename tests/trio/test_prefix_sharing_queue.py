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


class EmptyStream:
    """A Redis whose stream is empty at catch-up and whose reads never answer: records the
    id each read starts after."""

    def __init__(self) -> None:
        self.read_after: list[bytes] = []
        self.reading = trio.Event()

    async def xrevrange(self, key: bytes, count: int) -> list[object]:
        return []

    async def xread(self, streams: dict[bytes, bytes], count: int, block: int) -> None:
        self.read_after.extend(streams.values())
        self.reading.set()
        await trio.sleep_forever()


async def test_a_replica_that_found_the_stream_empty_reads_it_from_the_start(
    autojump_clock: MockClock,
) -> None:
    # "$" would mean "what is added after this read is sent": a record another replica adds
    # between the catch-up and the first read would be lost for good.
    sharing = PrefixSharing("redis://127.0.0.1:1/0", apply=lambda *a: None, knows=bool)
    redis = EmptyStream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sharing._tail_forever, redis)
        with trio.fail_after(1):
            await redis.reading.wait()
        nursery.cancel_scope.cancel()
    assert redis.read_after == [b"0-0"]
