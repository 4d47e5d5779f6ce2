"""Sessions on the gateway (docs/architecture.md §5): open on a worker before the first
generation (fail fast), route later requests to that worker, close after the last one, reap
idle ones.

One reaper task sleeps until the next expiry (its deadline moves when the table changes); it
never polls. The worker is told the timeout plus `WORKER_GRACE_S`, so the gateway closes first.
"""

from __future__ import annotations

import logging

import trio

from trio_gateway.errors import GatewayError, session_lost, unavailable
from trio_gateway.generation import GenerationRequest
from trio_gateway.metrics import GatewayMetrics
from trio_gateway.router.admission import Backend, Router
from trio_gateway.router.breaker import Verdict
from trio_gateway.router.route_key import RouteKey
from trio_gateway.sessions.store import SessionStore
from trio_gateway.sessions.table import Session, SessionTable

log = logging.getLogger("trio_gateway.sessions")

WORKER_GRACE_S = 30.0
CALL_DEADLINE_S = 5.0


class SessionManager:
    def __init__(
        self,
        router: Router,
        metrics: GatewayMetrics,
        *,
        default_timeout: float = 300.0,
        soft_affinity: bool = False,
        store: SessionStore | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.metrics = metrics
        self.default_timeout = default_timeout
        self.soft_affinity = soft_affinity
        self.table = SessionTable()
        self._opening: dict[str, trio.Event] = {}
        self._sleep: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The reaper, and the nursery where closes on workers run."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                with trio.CancelScope(deadline=self.table.next_expiry()) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
                for session in self.table.pop_expired(trio.current_time()):
                    nursery.start_soon(self._expire, session)

    async def _expire(self, session: Session) -> None:
        if self.store is not None and await self.store.fresh(session.session_id):
            # Another replica used it since: it is theirs to close.
            self.metrics.sessions_active.dec()
            return
        await self._close_on_worker(session, "expired")

    def _rearm(self) -> None:
        if self._sleep is not None:
            self._sleep.deadline = self.table.next_expiry()

    async def acquire(self, request: GenerationRequest) -> tuple[Backend, Session]:
        """A slot on the session's worker (opening the session there first if it is new)."""
        session_id = request.session_id
        assert session_id is not None
        while (opening := self._opening.get(session_id)) is not None:
            await opening.wait()  # a concurrent first request is opening it
        session = self.table.get(session_id)
        if session is None and self.store is not None:
            worker = await self.store.lookup(session_id)
            if worker is not None and self.table.get(session_id) is None:
                # Opened through another replica: adopt its affinity, open nothing.
                timeout = request.session_timeout or self.default_timeout
                session = self.table.open(session_id, worker, timeout, trio.current_time())
                self.metrics.sessions_active.inc()
        if session is not None:
            backend = self.router.find(session.worker)
            if backend is not None and backend.engine.available:
                self.table.begin(session)  # first: the reaper must not take it while we wait
                try:
                    # Where the engine puts the session's history before the prompt, the
                    # bare prompt is not what it caches (see `RouteKey.continuing`).
                    if backend.engine.keeps_session_history:
                        key = RouteKey.continuing(request, session_id)
                    else:
                        key = RouteKey.of(request)
                    slot = await self.router.acquire(request.model, only=backend.name, key=key)
                except BaseException:
                    self.release(session)
                    raise
                return slot, session
            self._forget(session, "worker_lost")
            if not self.soft_affinity:
                raise session_lost(session_id, session.worker)
            log.warning("session %s lost its worker %s: re-homing", session_id, session.worker)
        return await self._open(request, session_id)

    async def _open(self, request: GenerationRequest, session_id: str) -> tuple[Backend, Session]:
        timeout = request.session_timeout or self.default_timeout
        self._opening[session_id] = done = trio.Event()
        try:
            # A new session's history is empty: the worker caches this prompt as it is.
            backend = await self.router.acquire(request.model, key=RouteKey.of(request))
            try:
                with trio.fail_after(CALL_DEADLINE_S):
                    await backend.engine.open_session(session_id, timeout + WORKER_GRACE_S)
            except (GatewayError, trio.TooSlowError) as error:
                self.router.release(backend, Verdict.NONE)
                reason = error.message if isinstance(error, GatewayError) else "no answer in time"
                if isinstance(error, GatewayError) and error.kind.is_client_error:
                    raise
                raise unavailable(f"Could not open session {session_id!r}: {reason}") from None
            except BaseException:
                self.router.release(backend, Verdict.NONE)
                raise
            session = self.table.open(session_id, backend.name, timeout, trio.current_time())
            self.table.begin(session)
            if self.store is not None:
                await self.store.record(session_id, backend.name, timeout)
            self.metrics.sessions_opened.inc()
            self.metrics.sessions_active.inc()
            return backend, session
        finally:
            del self._opening[session_id]
            done.set()

    def release(self, session: Session) -> None:
        """A request of the session ended (any way)."""
        self.table.end(session, trio.current_time())
        if self.store is not None and self._nursery is not None and not session.closing:
            self._nursery.start_soon(
                self.store.record, session.session_id, session.worker, session.timeout
            )
        if session.closing and session.inflight == 0 and self._remove(session):
            self._spawn_close(session, "explicit")
        self._rearm()

    def close(self, session_id: str) -> bool | None:
        """`DELETE /v1/sessions/{id}`: True closed now, False once its requests end, None
        unknown."""
        session = self.table.get(session_id)
        if session is None:
            return None
        if session.inflight:
            session.closing = True
            return False
        self._remove(session)
        self._spawn_close(session, "explicit")
        return True

    async def close_all(self, reason: str) -> None:
        """Phase 3 of shutdown: every session closed on its worker, within a deadline. With a
        shared store the sessions outlive this replica (others serve them): only forgotten."""
        sessions = [s for s in self.table.all() if self._remove(s)]
        if self.store is not None:
            for _ in sessions:
                self.metrics.sessions_active.dec()
            return
        with trio.move_on_after(CALL_DEADLINE_S):
            async with trio.open_nursery() as nursery:
                for session in sessions:
                    nursery.start_soon(self._close_on_worker, session, reason)

    def _forget(self, session: Session, reason: str) -> None:
        if self._remove(session):
            self.metrics.sessions_closed.labels(reason).inc()
            self.metrics.sessions_active.dec()

    def _remove(self, session: Session) -> bool:
        return self.table.remove(session.session_id) is session

    def _spawn_close(self, session: Session, reason: str) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._close_on_worker, session, reason)

    async def _close_on_worker(self, session: Session, reason: str) -> None:
        self.metrics.sessions_closed.labels(reason).inc()
        self.metrics.sessions_active.dec()
        if self.store is not None:
            await self.store.forget(session.session_id)
        backend = self.router.find(session.worker)
        if backend is None:
            return
        try:
            with trio.fail_after(CALL_DEADLINE_S):
                await backend.engine.close_session(session.session_id)
        except (GatewayError, trio.TooSlowError) as error:
            # The worker expires its copy itself, WORKER_GRACE_S after ours.
            log.warning(
                "closing session %s on %s failed: %s", session.session_id, session.worker, error
            )
