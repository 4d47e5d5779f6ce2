"""The in-flight ledger under trio: waiting until it is empty, and cancelling every flight
(its bookkeeping: tests/unit/test_ledger.py)."""

from __future__ import annotations

import trio
import trio.testing

from trio_gateway.lifecycle.flight import (
    CLIENT_DISCONNECTED,
    RESPONSE_TIMEOUT,
    SHUTDOWN,
    Flight,
)
from trio_gateway.lifecycle.ledger import InFlightLedger


def flight(request_id: str = "req-1") -> Flight:
    return Flight(request_id=request_id, model="mock", endpoint="chat", started_at=0.0)


async def test_wait_empty_returns_at_once_when_empty(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger = InFlightLedger()
    start = trio.current_time()
    with trio.fail_after(1):
        await ledger.wait_empty()
    assert trio.current_time() == start


async def test_wait_empty_returns_at_once_after_everything_was_removed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger = InFlightLedger()
    a = flight("a")
    ledger.add(a)
    ledger.remove(a)
    start = trio.current_time()
    with trio.fail_after(1):
        await ledger.wait_empty()
    assert trio.current_time() == start


async def test_wait_empty_blocks_until_the_last_flight_is_removed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger = InFlightLedger()
    a, b = flight("a"), flight("b")
    ledger.add(a)
    ledger.add(b)
    emptied_at: list[float] = []

    async def waiter() -> None:
        await ledger.wait_empty()
        emptied_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)
        await trio.sleep(5)
        ledger.remove(a)
        await trio.sleep(5)
        assert emptied_at == []  # b is still in flight
        ledger.remove(b)
    assert emptied_at == [start + 10, start + 10]


async def test_wait_empty_waits_again_after_a_new_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger = InFlightLedger()
    a = flight("a")
    ledger.add(a)
    ledger.remove(a)
    b = flight("b")
    ledger.add(b)
    with trio.move_on_after(3) as scope:
        await ledger.wait_empty()
    assert scope.cancelled_caught  # the ledger is busy again: the old event does not count
    ledger.remove(b)
    with trio.fail_after(1):
        await ledger.wait_empty()


async def test_wait_empty_does_not_return_for_removing_an_impostor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger = InFlightLedger()
    ledger.add(flight("a"))
    ledger.remove(flight("a"))
    with trio.move_on_after(3) as scope:
        await ledger.wait_empty()
    assert scope.cancelled_caught


async def test_cancel_all_cancels_every_scope_with_the_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger = InFlightLedger()
    flights = [flight(str(i)) for i in range(3)]
    for f in flights:
        ledger.add(f)
    ended_at: list[float] = []

    async def work(f: Flight) -> None:
        with f.scope:
            await trio.sleep_forever()
        ended_at.append(trio.current_time())
        ledger.remove(f)

    async with trio.open_nursery() as nursery:
        for f in flights:
            nursery.start_soon(work, f)
        await trio.sleep(2)
        assert ended_at == []
        assert ledger.cancel_all(SHUTDOWN) == 3
        with trio.fail_after(1):
            await ledger.wait_empty()
    assert all(f.scope.cancel_called for f in flights)
    assert all(f.scope.cancelled_caught for f in flights)
    assert [f.cancel_reason for f in flights] == [SHUTDOWN] * 3
    assert len(ended_at) == 3
    assert len(ledger) == 0


async def test_first_cancel_reason_wins() -> None:
    ledger = InFlightLedger()
    early, late = flight("early"), flight("late")
    ledger.add(early)
    ledger.add(late)
    early.cancel(CLIENT_DISCONNECTED)
    assert ledger.cancel_all(SHUTDOWN) == 2
    assert early.cancel_reason == CLIENT_DISCONNECTED
    assert late.cancel_reason == SHUTDOWN
    assert ledger.cancel_all(RESPONSE_TIMEOUT) == 2
    assert early.cancel_reason == CLIENT_DISCONNECTED
    assert late.cancel_reason == SHUTDOWN
    assert early.scope.cancel_called and late.scope.cancel_called


async def test_cancel_after_done_is_ignored() -> None:
    ledger = InFlightLedger()
    finished = flight("finished")
    finished.done.set()
    ledger.add(finished)
    assert ledger.cancel_all(SHUTDOWN) == 1  # counted: it was still in the ledger
    assert finished.cancel_reason is None
    assert not finished.scope.cancel_called
