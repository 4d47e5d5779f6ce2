"""Three-phase graceful shutdown (docs/architecture.md §6): drain, then cut with a frame, then stop.

`ShutdownPhases` is the pure state machine (running → draining → stopping → stopped), so its
rules are testable without signals or sockets. `GracefulShutdown` is the trio orchestration:
one task in the gateway's nursery that waits for a trigger (SIGTERM, SIGINT, `POST
/admin/drain`), waits on the in-flight ledger (an event, not polling) until it empties or the
drain deadline passes, then cancels what is left with reason `shutdown`, so every open stream
ends with an error frame and `[DONE]` rather than a bare close.

The ledger holds every request the gateway owns, including those still reading their body
when the trigger comes: the drain waits for them too (their body-read deadline bounds it),
they are answered 503 `draining` if their body completes once new requests are refused, and
the cut answers them 503 `shutdown`, so none is left to hypercorn's graceful timeout.

The listener stays open while draining: a load balancer sees `/ready` turn 503 and new
requests answered 503 with `Retry-After`, rather than refused connections, until the gateway
has nothing left in flight; only then does the server stop accepting and exit.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Awaitable, Callable

import trio

from trio_gateway.lifecycle.flight import SHUTDOWN
from trio_gateway.lifecycle.ledger import InFlightLedger

log = logging.getLogger("trio_gateway.shutdown")

# How long phase 3 waits for the cut requests to write their last frame.
CUT_GRACE_S = 5.0


class Phase(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ShutdownPhases:
    """Which phase the gateway is in, and what each trigger moves it to."""

    def __init__(self, drain_timeout: float, drain_delay: float = 0.0) -> None:
        self.drain_timeout = drain_timeout
        self.drain_delay = drain_delay
        self.phase = Phase.RUNNING
        self.refuse_after = math.inf
        self.drain_deadline = math.inf

    @property
    def ready(self) -> bool:
        """What `/ready` says: false from the first trigger on."""
        return self.phase is Phase.RUNNING

    def accepting(self, now: float) -> bool:
        """New requests are taken while running, and during the drain delay (while load
        balancers notice `/ready` and stop sending)."""
        return self.phase is Phase.RUNNING or (
            self.phase is Phase.DRAINING and now < self.refuse_after
        )

    def request_stop(self, now: float) -> Phase:
        """A trigger: the first starts the drain, a second skips straight to the cut."""
        if self.phase is Phase.RUNNING:
            self.phase = Phase.DRAINING
            self.refuse_after = now + self.drain_delay
            self.drain_deadline = self.refuse_after + self.drain_timeout
        elif self.phase is Phase.DRAINING:
            self.phase = Phase.STOPPING
        return self.phase

    def drain_over(self) -> None:
        """The ledger emptied or the deadline passed: whatever is left gets cut."""
        if self.phase in (Phase.RUNNING, Phase.DRAINING):
            self.phase = Phase.STOPPING

    def stopped(self) -> None:
        self.phase = Phase.STOPPED


class GracefulShutdown:
    def __init__(
        self, ledger: InFlightLedger, drain_timeout: float, drain_delay: float = 0.0
    ) -> None:
        self.ledger = ledger
        self.phases = ShutdownPhases(drain_timeout, drain_delay)
        self.cut = 0  # requests cut in phase 3
        self._triggered = trio.Event()
        self._stopped = trio.Event()
        self._drain_scope: trio.CancelScope | None = None
        # Run in phase 3 once requests are cut, before `stopped` (sessions close here).
        self.on_stopping: list[Callable[[], Awaitable[None]]] = []

    @property
    def phase(self) -> Phase:
        return self.phases.phase

    @property
    def accepting(self) -> bool:
        return self.phases.accepting(trio.current_time())

    @property
    def ready(self) -> bool:
        return self.phases.ready

    def request_stop(self, source: str) -> None:
        """Safe to call any number of times, from any task."""
        previous = self.phases.phase
        phase = self.phases.request_stop(trio.current_time())
        if phase is previous:
            return
        if phase is Phase.DRAINING:
            log.info(
                "%s: draining %d in-flight request(s) (%d still reading their body), deadline %g s",
                source,
                self.ledger.owned,
                self.ledger.reading,
                self.phases.drain_timeout,
            )
            self._triggered.set()
        elif phase is Phase.STOPPING:
            log.info("%s again: cutting the drain short", source)
            if self._drain_scope is not None:
                self._drain_scope.cancel()

    async def wait_stopped(self) -> None:
        """Returns once every request has ended; `serve`'s shutdown trigger."""
        await self._stopped.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._triggered.wait()
        # Phase 2: in-flight requests finish, up to the deadline (after the drain delay,
        # during which new requests are still taken).
        with trio.CancelScope(deadline=self.phases.drain_deadline) as self._drain_scope:
            if self.phases.phase is Phase.DRAINING:
                await trio.sleep_until(self.phases.refuse_after)
                await self.ledger.wait_empty()
        self._drain_scope = None
        self.phases.drain_over()
        # Phase 3: cut what is left; each request writes its own last frame.
        if self.ledger.owned:
            self.cut = self.ledger.cancel_all(SHUTDOWN)
            log.warning("drain deadline: cutting %d request(s) with a shutdown frame", self.cut)
            with trio.move_on_after(CUT_GRACE_S):
                await self.ledger.wait_empty()
            if self.ledger.owned:
                log.error("%d request(s) did not end after being cut", self.ledger.owned)
        for cleanup in self.on_stopping:
            await cleanup()
        self.phases.stopped()
        log.info("shutdown: nothing left in flight")
        self._stopped.set()
