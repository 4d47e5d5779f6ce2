"""The session table as a pure data structure: affinity, in-flight counts, expiry order.

A session expires `timeout` seconds after its last request ended; while a request of the
session is in flight it does not expire. Expiry order is a heap with lazy deletion: an entry
is stale when the session is gone, busy, or has a later expiry than the entry says.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass


@dataclass(eq=False)
class Session:
    session_id: str
    worker: str
    timeout: float
    expires_at: float
    inflight: int = 0
    closing: bool = False  # an explicit close waits for the in-flight requests


class SessionTable:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._expiries: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def open(self, session_id: str, worker: str, timeout: float, now: float) -> Session:
        if session_id in self._sessions:
            raise KeyError(f"session {session_id!r} is already open")
        session = Session(session_id, worker, timeout, now + timeout)
        self._sessions[session_id] = session
        heapq.heappush(self._expiries, (session.expires_at, session_id))
        return session

    def begin(self, session: Session) -> None:
        """A request of the session starts: it cannot expire until the request ends."""
        session.inflight += 1

    def end(self, session: Session, now: float) -> None:
        """A request ended: the idle clock restarts."""
        session.inflight -= 1
        if session.inflight == 0 and self._sessions.get(session.session_id) is session:
            session.expires_at = now + session.timeout
            heapq.heappush(self._expiries, (session.expires_at, session.session_id))

    def remove(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)

    def on_worker(self, worker: str) -> list[Session]:
        return [s for s in self._sessions.values() if s.worker == worker]

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    def next_expiry(self) -> float:
        """When the earliest idle session expires; inf when none can."""
        while self._expiries:
            expires_at, session_id = self._expiries[0]
            if self._is_due_entry(expires_at, session_id):
                return expires_at
            heapq.heappop(self._expiries)
        return math.inf

    def pop_expired(self, now: float) -> list[Session]:
        """Remove and return the sessions whose idle timeout has passed, earliest first."""
        expired = []
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, session_id = heapq.heappop(self._expiries)
            if self._is_due_entry(expires_at, session_id):
                expired.append(self._sessions.pop(session_id))
        return expired

    def _is_due_entry(self, expires_at: float, session_id: str) -> bool:
        session = self._sessions.get(session_id)
        return session is not None and session.inflight == 0 and session.expires_at == expires_at
