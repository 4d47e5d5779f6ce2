"""Admission and routing: a slot on a backend, or a place in a bounded queue, or 429/503.

The table of backends (their in-flight counts, capacities and breakers) and the choice are
plain code; the only trio here is the wait of a queued request, which is an event per waiter
and leaves the queue the moment its caller is cancelled (a client that went away).

Panic routing. A breaker steers requests away from a backend while others are healthy; it
does not refuse the last ones. When every connected backend that may take a request has
its breaker refusing (open, or half-open with its probe out), the request is routed among
them anyway, as Envoy does below its panic threshold, here at 0% healthy: refusing would
turn a suspicion into a certain outage (one backend: every request 503 for the cooldown),
while routing costs at worst the failures that were coming anyway, and the first success
closes the breaker. Letting one probe through at once was the alternative; it still
refuses everything else while the probe runs, and a probe that is a long stream keeps that
going for minutes. A backend that is not connected (`engine.available` False) is never
routed to, panic or not: a request on it fails at once. `/ready` asks the same question
(`serves_any`), so it says 503 exactly when requests would be refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import trio

from trio_gateway.engines.protocol import Engine
from trio_gateway.errors import GatewayError, model_not_found, overloaded, unavailable
from trio_gateway.router.breaker import BreakerState, CircuitBreaker, Verdict
from trio_gateway.router.policies import Policy
from trio_gateway.router.route_key import NO_KEY, RouteKey

log = logging.getLogger("trio_gateway.router")


@dataclass(eq=False)
class Backend:
    engine: Engine
    breaker: CircuitBreaker
    inflight: int = 0
    # Set by the backend's `capacity` or the gateway's override (`--max-inflight`); else
    # the engine's own capacity.
    max_inflight: int | None = None
    # The scope of the engine's background work in the gateway's nursery.
    scope: trio.CancelScope | None = None
    # The configured name (`[[backends]]`): stable, unlike a worker's id after its hello.
    label: str | None = None
    weight: int = 1  # its share of the traffic, for the policies that weigh (policies.py)
    # Models it may serve, of those the engine lists (None: all); and context lengths the
    # configuration gives, over the engine's own.
    allowed: frozenset[str] | None = None
    max_model_len: Mapping[str, int] = field(default_factory=dict)
    # Out of the router (removed or replaced by a reload): takes no new request, and
    # `idle` is set once its last one is released.
    retired: bool = False
    idle: trio.Event = field(default_factory=trio.Event)
    up: trio.Event = field(default_factory=trio.Event)  # set once it has connected

    @property
    def name(self) -> str:
        return self.label if self.label is not None else self.engine.name

    @property
    def capacity(self) -> int | None:
        return self.max_inflight if self.max_inflight is not None else self.engine.capacity

    @property
    def models(self) -> tuple[str, ...]:
        listed = self.engine.models
        if self.allowed is None:
            return listed
        return tuple(model for model in listed if model in self.allowed)

    @property
    def context_lengths(self) -> Mapping[str, int]:
        if not self.max_model_len:
            return self.engine.context_lengths
        return {**self.engine.context_lengths, **self.max_model_len}

    def has_room(self) -> bool:
        return self.capacity is None or self.inflight < self.capacity

    def serves(self, model: str) -> bool:
        if self.allowed is not None and model not in self.allowed:
            return False
        return model in self.engine.models


@dataclass
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)


class Router:
    def __init__(
        self,
        policy: Policy,
        *,
        max_inflight: int | None = None,
        queue_size: int = 1024,
        queue_timeout: float = 30.0,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 10.0,
    ) -> None:
        self.policy = policy
        self.max_inflight = max_inflight
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self._breaker_threshold = breaker_threshold
        self._breaker_cooldown = breaker_cooldown
        self.backends: list[Backend] = []
        self._waiters: list[_Waiter] = []
        self._panicking: set[str] = set()  # models routed in panic at their last request

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def add(
        self,
        engine: Engine,
        *,
        label: str | None = None,
        capacity: int | None = None,
        weight: int = 1,
        allowed: frozenset[str] | None = None,
        max_model_len: Mapping[str, int] | None = None,
    ) -> Backend:
        """Route to `engine` (`backend_for`, then `insert`)."""
        backend = self.backend_for(
            engine,
            label=label,
            capacity=capacity,
            weight=weight,
            allowed=allowed,
            max_model_len=max_model_len,
        )
        self.insert(backend)
        return backend

    def backend_for(
        self,
        engine: Engine,
        *,
        label: str | None = None,
        capacity: int | None = None,
        weight: int = 1,
        allowed: frozenset[str] | None = None,
        max_model_len: Mapping[str, int] | None = None,
    ) -> Backend:
        """A backend for `engine`, not routed to yet; under `label` when configured.
        `capacity` (the backend's own setting) wins over `--max-inflight`, which wins over
        the engine's figure."""
        return Backend(
            engine,
            CircuitBreaker(self._breaker_threshold, self._breaker_cooldown),
            max_inflight=capacity if capacity is not None else self.max_inflight,
            label=label,
            weight=weight,
            allowed=allowed,
            max_model_len=dict(max_model_len or {}),
        )

    def insert(self, backend: Backend) -> None:
        if self.find(backend.name) is not None:
            raise ValueError(f"a backend named {backend.name!r} is already routed to")
        self.backends.append(backend)
        self._reweigh()
        self.wake()

    def _reweigh(self) -> None:
        """Tell the policy whether weights matter now (`Policy.weighted`)."""
        self.policy.weighted = any(backend.weight != 1 for backend in self.backends)

    def replace(self, old: Backend, new: Backend) -> None:
        """`new` takes `old`'s place in one step (no request finds neither): new requests go
        to `new`, those `old` holds finish there (`remove`)."""
        index = self.backends.index(old)
        self.remove(old)
        self.backends.insert(index, new)
        self._reweigh()
        self.wake()

    def find(self, name: str) -> Backend | None:
        """By the engine's name (a worker's id once it said hello) or its address."""
        for backend in self.backends:
            if name in (backend.name, backend.engine.url):
                return backend
        return None

    def remove(self, backend: Backend) -> None:
        """Out of the routing table at once; requests it holds keep their slots until they
        end, and `backend.idle` is set when the last one is released."""
        self.backends.remove(backend)
        self.policy.forget(backend.name)
        self._reweigh()
        backend.retired = True
        if backend.inflight == 0:
            backend.idle.set()

    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for backend in self.backends:
            for model in backend.models:
                seen.setdefault(model)
        return list(seen)

    def knows(self, model: str) -> bool:
        return any(backend.serves(model) for backend in self.backends)

    def context_length(self, model: str) -> int | None:
        """The largest context length a backend serving `model` reports (None: none says):
        a request one of them can serve is not refused for another's smaller limit."""
        lengths = [
            length
            for backend in self.backends
            if (length := backend.context_lengths.get(model)) is not None
        ]
        return max(lengths, default=None)

    def _candidates(
        self, model: str, exclude: Iterable[str], now: float, only: str | None = None
    ) -> tuple[list[Backend], bool, bool]:
        """Backends that can take the request now, whether any could later (when full), and
        whether these are the panic choice (every one's breaker refuses; module docstring)."""
        excluded = set(exclude)
        allowed: list[Backend] = []
        refused: list[Backend] = []
        for backend in self.backends:
            if backend.name in excluded or not backend.serves(model):
                continue
            if only is not None and backend.name != only:
                continue
            if not backend.engine.available:
                continue
            (allowed if backend.breaker.allows(now) else refused).append(backend)
        panic = not allowed
        pool = refused if panic else allowed
        ready = [backend for backend in pool if backend.has_room()]
        return ready, len(ready) < len(pool), panic and bool(pool)

    def routable(self, model: str) -> bool:
        """Whether a request for `model` would be routed now or queued, not refused."""
        ready, could_later, _ = self._candidates(model, (), trio.current_time())
        return bool(ready) or could_later

    def serves_any(self) -> bool:
        """Whether a request for some model would be routed: what `/ready` reports."""
        return any(self.routable(model) for model in self.models())

    def backend_reconnected(self, backend: Backend) -> None:
        """A backend came back (a worker's fresh hello): its breaker is half-open at once,
        and queued requests look again."""
        backend.breaker.on_reconnect()
        backend.up.set()
        self.wake()

    def try_acquire(
        self,
        model: str,
        exclude: Iterable[str] = (),
        only: str | None = None,
        key: RouteKey = NO_KEY,
    ) -> Backend | None:
        """A slot now, or None; raises when the request cannot be served by waiting.
        `only` names the one backend allowed (a session's worker): it still goes through
        the policy, which learns from it. `key` is what the policy may route on."""
        now = trio.current_time()
        excluded = set(exclude)
        ready, could_later, panic = self._candidates(model, excluded, now, only)
        if not excluded and only is None and panic != (model in self._panicking):
            self._note_panic(model, panic)  # of the model's backends as a whole
        if ready:
            backend = self.policy.choose(ready, key)
            assert isinstance(backend, Backend)
            backend.inflight += 1
            backend.breaker.on_dispatch(now)
            return backend
        if could_later:
            return None
        if not self.knows(model):
            raise model_not_found(model)
        raise unavailable(
            f"No backend serving {model!r} is available right now.", request_only=True
        )

    def _note_panic(self, model: str, panic: bool) -> None:
        if panic:
            self._panicking.add(model)
            log.warning(
                "every backend serving %r has its breaker open: routing to them anyway", model
            )
        else:
            self._panicking.discard(model)
            log.info("model %r: no longer routing in panic", model)

    async def acquire(
        self,
        model: str,
        exclude: Iterable[str] = (),
        only: str | None = None,
        key: RouteKey = NO_KEY,
    ) -> Backend:
        """A slot on a backend, waiting in the bounded queue when every one is full."""
        exclude = tuple(exclude)
        backend = self.try_acquire(model, exclude, only, key)
        if backend is not None:
            return backend
        if len(self._waiters) >= self.queue_size:
            raise _overload(f"The queue is full ({self.queue_size} requests waiting).")
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            with trio.move_on_after(self.queue_timeout):
                while True:
                    # Also look again when an open breaker's cooldown ends (a probe may go).
                    with trio.move_on_at(self._next_cooldown_end()):
                        await waiter.event.wait()
                    waiter.event = trio.Event()
                    backend = self.try_acquire(model, exclude, only, key)
                    if backend is not None:
                        return backend
        finally:
            self._waiters.remove(waiter)
        raise _overload(f"No capacity within {self.queue_timeout:g} s.")

    def release(self, backend: Backend, verdict: Verdict) -> None:
        """Give the slot back, and the backend's breaker what the request's end says."""
        backend.inflight -= 1
        if backend.retired and backend.inflight == 0:
            backend.idle.set()
        if verdict is Verdict.SUCCESS:
            backend.breaker.on_success()
        elif verdict is Verdict.BACKEND_FAULT:
            backend.breaker.on_failure(trio.current_time())
        else:
            backend.breaker.on_abandoned()
        self.wake()

    def _next_cooldown_end(self) -> float:
        ends = [b.breaker.open_until for b in self.backends if b.breaker.state is BreakerState.OPEN]
        return min(ends, default=math.inf)

    def wake(self) -> None:
        """Let queued requests look again (a slot freed, a backend came back)."""
        for waiter in self._waiters:
            waiter.event.set()


def _overload(message: str) -> GatewayError:
    return overloaded(message + " Retry later.")
