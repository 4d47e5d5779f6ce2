"""The in-flight ledger's bookkeeping by request id (waiting for empty and cancelling
everything: tests/trio/test_ledger_waits.py)."""

from __future__ import annotations

import pytest

from trio_gateway.lifecycle.flight import (
    SHUTDOWN,
    Flight,
)
from trio_gateway.lifecycle.ledger import InFlightLedger


def flight(request_id: str = "req-1") -> Flight:
    return Flight(request_id=request_id, model="mock", endpoint="chat", started_at=0.0)


def test_empty_ledger() -> None:
    ledger = InFlightLedger()
    assert len(ledger) == 0
    assert list(ledger) == []
    assert ledger.get("req-1") is None
    assert ledger.cancel_all(SHUTDOWN) == 0


def test_add_get_len_iter() -> None:
    ledger = InFlightLedger()
    a, b = flight("a"), flight("b")
    ledger.add(a)
    ledger.add(b)
    assert len(ledger) == 2
    assert ledger.get("a") is a
    assert ledger.get("b") is b
    assert ledger.get("c") is None
    assert list(ledger) == [a, b]


def test_remove() -> None:
    ledger = InFlightLedger()
    a, b = flight("a"), flight("b")
    ledger.add(a)
    ledger.add(b)
    ledger.remove(a)
    assert len(ledger) == 1
    assert ledger.get("a") is None
    assert list(ledger) == [b]


def test_remove_twice_or_unknown_is_harmless() -> None:
    ledger = InFlightLedger()
    a = flight("a")
    ledger.add(a)
    ledger.remove(a)
    ledger.remove(a)
    ledger.remove(flight("never-added"))
    assert len(ledger) == 0


def test_remove_of_another_flight_with_the_same_id_is_ignored() -> None:
    ledger = InFlightLedger()
    original = flight("dup")
    ledger.add(original)
    ledger.remove(flight("dup"))
    assert ledger.get("dup") is original
    assert len(ledger) == 1


def test_duplicate_id_is_rejected() -> None:
    ledger = InFlightLedger()
    original = flight("dup")
    ledger.add(original)
    with pytest.raises(KeyError, match="request id 'dup' is already in flight"):
        ledger.add(flight("dup"))
    with pytest.raises(KeyError):
        ledger.add(original)
    assert ledger.get("dup") is original
    assert len(ledger) == 1


def test_id_can_be_reused_after_removal() -> None:
    ledger = InFlightLedger()
    first = flight("x")
    ledger.add(first)
    ledger.remove(first)
    second = flight("x")
    ledger.add(second)
    assert ledger.get("x") is second


def test_iteration_is_a_snapshot() -> None:
    ledger = InFlightLedger()
    flights = [flight(str(i)) for i in range(3)]
    for f in flights:
        ledger.add(f)
    seen = []
    for f in ledger:
        ledger.remove(f)  # would raise "dict changed size" on a live view
        seen.append(f)
    assert seen == flights
    assert len(ledger) == 0


def test_cancel_all_leaves_flights_in_the_ledger() -> None:
    ledger = InFlightLedger()
    a = flight("a")
    ledger.add(a)
    ledger.cancel_all(SHUTDOWN)
    assert ledger.get("a") is a  # removal is the flight's own job, when its work has ended
