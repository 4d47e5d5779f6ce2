"""The sessions open on a worker: opened and closed at the gateway's word, each kept while a
request of it runs, and expired by the worker itself (timeout + grace past last use) should
the gateway never close it, so a lost gateway does not leak its engine's sessions."""

from __future__ import annotations

import logging

import trio

from trio_gateway.engines.protocol import Engine
from trio_gateway.errors import GatewayError
from trio_gateway.plane.frames import OpenSession, SessionReply
from trio_gateway.sessions.table import Session, SessionTable
from trio_gateway.worker.metrics import WorkerMetrics

log = logging.getLogger("trio_gateway.worker")


class WorkerSessions:
    def __init__(self, engine: Engine, metrics: WorkerMetrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self.table = SessionTable()
        self._reaper_sleep: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self.table)

    def get(self, session_id: str) -> Session | None:
        return self.table.get(session_id)

    async def open(self, message: OpenSession) -> SessionReply:
        if self.table.get(message.session_id) is None:
            try:
                await self.engine.open_session(message.session_id, message.timeout)
            except GatewayError as error:
                return SessionReply(message.id, "error", error.message)
            self.table.open(message.session_id, "", message.timeout, trio.current_time())
            self.metrics.sessions_active.set(len(self.table))
            self._rearm_reaper()
        return SessionReply(message.id, "ok")

    async def close(self, session_id: str) -> None:
        if self.table.remove(session_id) is not None:
            await self.engine.close_session(session_id)
            self.metrics.sessions_active.set(len(self.table))

    def begin(self, session: Session) -> None:
        self.table.begin(session)

    def end(self, session: Session) -> None:
        self.table.end(session, trio.current_time())
        self._rearm_reaper()

    async def reap(self) -> None:
        """Runs until cancelled: closes each session once it expires."""
        while True:
            with trio.CancelScope(deadline=self.table.next_expiry()) as self._reaper_sleep:
                await trio.sleep_forever()
            self._reaper_sleep = None
            for session in self.table.pop_expired(trio.current_time()):
                log.info("session %s expired on the worker", session.session_id)
                await self.engine.close_session(session.session_id)
            self.metrics.sessions_active.set(len(self.table))

    def _rearm_reaper(self) -> None:
        if self._reaper_sleep is not None:
            self._reaper_sleep.deadline = self.table.next_expiry()
