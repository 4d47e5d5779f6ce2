"""The in-flight ledger: every request whose engine work is under way, by request id.

Shutdown waits on it, worker loss and admin calls look requests up in it, and its size is the
truth behind the in-flight gauge. Waiting for it to empty is an event, never polling.
"""

from __future__ import annotations

from collections.abc import Iterator

import trio

from trio_gateway.lifecycle.flight import Flight


class InFlightLedger:
    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}
        self._empty = trio.Event()
        self._empty.set()

    def add(self, flight: Flight) -> None:
        if flight.request_id in self._flights:
            raise KeyError(f"request id {flight.request_id!r} is already in flight")
        if not self._flights:
            self._empty = trio.Event()
        self._flights[flight.request_id] = flight

    def remove(self, flight: Flight) -> None:
        if self._flights.get(flight.request_id) is flight:
            del self._flights[flight.request_id]
            if not self._flights:
                self._empty.set()

    def get(self, request_id: str) -> Flight | None:
        return self._flights.get(request_id)

    def __len__(self) -> int:
        return len(self._flights)

    def __iter__(self) -> Iterator[Flight]:
        return iter(list(self._flights.values()))

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def cancel_all(self, reason: str) -> int:
        """Cancel every flight's scope with `reason`; returns how many were cut."""
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel(reason)
        return len(flights)
