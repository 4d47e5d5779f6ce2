"""The in-flight ledger: every request the gateway owns, and shutdown's view of them.

Two kinds of entry: flights (a request whose engine work is under way, by request id) and
body reads (a request accepted and still receiving its body, before it has a flight). A
request counts from the moment the gateway owns it, so a drain that begins while a body is
still arriving waits for that request instead of ending under it (issue 16); the body-read
deadline bounds how long. Shutdown waits for both kinds; worker loss and admin calls look
flights up; the flight count is the truth behind the in-flight gauge. Waiting for it to
empty is an event, never polling.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import trio

from trio_gateway.lifecycle.flight import Flight


@dataclass(eq=False, slots=True)
class BodyRead:
    """A request reading its body: the scope its read runs in (its deadline is the body-read
    deadline) and why it was cancelled, if it was (shutdown's cut)."""

    scope: trio.CancelScope
    cancel_reason: str | None = None

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self.scope.cancel()


class InFlightLedger:
    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}
        self._reads: set[BodyRead] = set()
        self._empty = trio.Event()
        self._empty.set()

    def add(self, flight: Flight) -> None:
        if flight.request_id in self._flights:
            raise KeyError(f"request id {flight.request_id!r} is already in flight")
        self._busy()
        self._flights[flight.request_id] = flight

    def remove(self, flight: Flight) -> None:
        if self._flights.get(flight.request_id) is flight:
            del self._flights[flight.request_id]
            self._maybe_empty()

    def start_reading(self, deadline: float) -> BodyRead:
        """A request accepted whose body is still to come; its read must end by `deadline`.
        The handler calls `done_reading` once it has a flight in here or has answered."""
        read = BodyRead(trio.CancelScope(deadline=deadline))
        self._busy()
        self._reads.add(read)
        return read

    def done_reading(self, read: BodyRead) -> None:
        if read in self._reads:
            self._reads.remove(read)
            self._maybe_empty()

    def get(self, request_id: str) -> Flight | None:
        return self._flights.get(request_id)

    def __len__(self) -> int:
        """Flights only (what `__iter__` yields); `owned` adds the bodies being read."""
        return len(self._flights)

    @property
    def reading(self) -> int:
        return len(self._reads)

    @property
    def owned(self) -> int:
        """Every request the gateway owns: in flight, or still reading its body."""
        return len(self._flights) + len(self._reads)

    def __iter__(self) -> Iterator[Flight]:
        return iter(list(self._flights.values()))

    async def wait_empty(self) -> None:
        """Until nothing is owned: no flight and no body being read."""
        await self._empty.wait()
        while self.owned:  # emptied, then busy again before this task ran
            await self._empty.wait()

    def cancel_all(self, reason: str) -> int:
        """Cancel every flight's scope and every body read with `reason`; how many were cut."""
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel(reason)
        reads = list(self._reads)
        for read in reads:
            read.cancel(reason)
        return len(flights) + len(reads)

    def _busy(self) -> None:
        if not self.owned:
            self._empty = trio.Event()

    def _maybe_empty(self) -> None:
        if not self.owned:
            self._empty.set()
