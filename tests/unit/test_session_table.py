"""The session table alone: expiry order, a request in flight postponing expiry, stale
entries (the reaper on MockClock and the workers: tests/trio/test_sessions.py)."""

from __future__ import annotations

import math

from trio_gateway.sessions.table import SessionTable


def test_table_expiry_order_and_in_flight_postponement() -> None:
    table = SessionTable()
    a = table.open("a", "w1", 10, now=0)
    b = table.open("b", "w2", 5, now=0)
    assert table.next_expiry() == 5
    table.begin(b)  # busy: cannot expire
    assert table.next_expiry() == 10
    assert table.pop_expired(now=9) == []
    table.end(b, now=8)  # idle again: 5 s from now
    assert table.next_expiry() == 10
    assert [s.session_id for s in table.pop_expired(now=13)] == ["a", "b"]
    assert len(table) == 0 and table.next_expiry() == math.inf
    assert a.worker == "w1"


def test_table_stale_entries_and_removal() -> None:
    table = SessionTable()
    session = table.open("s", "w", 10, now=0)
    table.begin(session)
    table.end(session, now=4)  # the first entry (10) is stale now; the live one is 14
    assert table.pop_expired(now=10) == []
    assert table.next_expiry() == 14
    assert table.remove("s") is session
    assert table.pop_expired(now=100) == [] and table.next_expiry() == math.inf


def test_table_many_timeouts() -> None:
    table = SessionTable()
    for i, timeout in enumerate([30, 10, 20, 5, 25]):
        table.open(f"s{i}", "w", timeout, now=0)
    order = [s.session_id for s in table.pop_expired(now=100)]
    assert order == ["s3", "s1", "s2", "s4", "s0"]
