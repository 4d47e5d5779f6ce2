"""A per-backend circuit breaker, as a pure state machine fed with the current time.

closed: requests flow; `threshold` consecutive failures open it. open: no requests until
`cooldown` has passed; then half-open: exactly one probe request goes through; its success
closes the breaker, its failure opens it again for another cooldown. A backend that comes
back (a worker's fresh hello) is half-open at once (`on_reconnect`).

What counts as a failure is decided by the caller (`GatewayError.counts_against_backend`,
the flight's `Verdict`); what an open breaker means when every backend of a model is open
is the router's (panic routing, `Router`): this only keeps the state.
"""

from __future__ import annotations

import enum


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Verdict(enum.Enum):
    """What the end of a request says about the backend that served it."""

    SUCCESS = "success"  # it answered: the breaker closes, its failures reset
    BACKEND_FAULT = "backend_fault"  # evidence it is down or broken: counts
    # Says nothing either way (the client left, shutdown, the request's own failure):
    # neither counts nor resets, and a probe may be retried.
    NONE = "none"


class CircuitBreaker:
    def __init__(self, threshold: int = 5, cooldown: float = 10.0) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.cooldown = cooldown
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.open_until = 0.0
        self._probing = False

    def allows(self, now: float) -> bool:
        """Whether a request may go to this backend now (does not reserve anything)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return now >= self.open_until
        return not self._probing

    def on_dispatch(self, now: float) -> None:
        """A request was sent: past the cooldown, it is the half-open probe."""
        if self.state is BreakerState.OPEN and now >= self.open_until:
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def on_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._probing = False

    def on_failure(self, now: float) -> None:
        self._probing = False
        if self.state is BreakerState.HALF_OPEN:
            self._open(now)
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self._open(now)

    def on_reconnect(self) -> None:
        """The backend is reachable again (a worker's fresh hello, an upstream's model list
        answering again): an open breaker need not wait out its cooldown, the next request
        is the probe. A closed or probing breaker is left as it is."""
        if self.state is BreakerState.OPEN:
            self.state = BreakerState.HALF_OPEN
            self._probing = False

    def on_abandoned(self) -> None:
        """The request ended without a verdict (client gone): a probe may be retried."""
        self._probing = False

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self.open_until = now + self.cooldown
        self.failures = 0
