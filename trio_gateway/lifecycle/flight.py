"""A flight: one request's engine work, in its own cancel scope, in the gateway's nursery.

The scope is the handle: a disconnect, the inactivity timeout or shutdown cancel it with a
reason, and leaving it is the only way the engine work ends. The engine task runs under a
nursery the gateway owns, not the ASGI handler's, so the handler stays free to write the end
of the stream after the engine is gone. Where the scope opens and closes, and who cancels
it: docs/architecture.md, first screen and §1.4.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import trio

from trio_gateway.errors import (
    GatewayError,
    client_cancelled,
    internal_error,
    response_timeout,
    shutting_down,
)
from trio_gateway.generation import Chunk, GenerationRequest
from trio_gateway.router.admission import Backend, Router
from trio_gateway.router.breaker import Verdict
from trio_gateway.router.route_key import RouteKey
from trio_gateway.sessions.manager import SessionManager

log = logging.getLogger("trio_gateway.flight")

# Why a flight's scope was cancelled.
CLIENT_DISCONNECTED = "client_disconnected"
RESPONSE_TIMEOUT = "response_timeout"
SHUTDOWN = "shutdown"
HANDLER_EXIT = "handler_exit"


class ClientGoneSignal(Protocol):
    """All a flight knows of its client: one awaitable that returns once the client is gone.

    The lifecycle never reads the transport itself, so it runs without any ASGI (a
    `trio.Event` is one, set by a test). `wait` must be awaited for the whole flight, not
    only for a stream: hypercorn reports a gone client only to a task awaiting ASGI
    `receive()` (`http/disconnect.py`), so the flight's watcher is that task.
    """

    async def wait(self) -> None: ...


@dataclass(eq=False, slots=True)
class Flight:
    request_id: str
    model: str
    endpoint: str
    started_at: float
    worker: str | None = None  # the backend serving it, once routed
    # The backend serving it and since when (after any wait in the queue): its per-backend
    # metrics. A retry on another backend moves both, so the request counts where it ended.
    backend: Backend | None = None
    dispatched_at: float = 0.0
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cancel_reason: str | None = None
    error: GatewayError | None = None
    done: trio.Event = field(default_factory=trio.Event)
    # Since when the response writer has been waiting on the engine; inf while it writes
    # (a slow client is backpressure, not engine silence).
    waiting_since: float = math.inf
    # How long the engine may stay silent: the inactivity timeout, or for a unary request
    # on an engine that answers it whole, the unary timeout (set once routed).
    silence_limit: float = math.inf
    # Routing, for the request's span: time spent waiting for a slot, backends tried.
    queue_wait: float = 0.0
    attempts: int = 0

    def cancel(self, reason: str) -> None:
        """Cancel the engine work; the first reason given is the one that counts."""
        if self.cancel_reason is None and not self.done.is_set():
            self.cancel_reason = reason
            self.scope.cancel()

    def outcome(self, finish_reason: str | None) -> GatewayError | None:
        """How the request ended, as the one error the client and the metrics see (or None)."""
        if self.error is not None:
            return self.error
        if finish_reason is not None:
            return None
        if self.cancel_reason == CLIENT_DISCONNECTED:
            return client_cancelled()
        if self.cancel_reason == RESPONSE_TIMEOUT:
            return response_timeout(self.silence_limit)
        if self.cancel_reason == SHUTDOWN:
            return shutting_down()
        if self.cancel_reason == HANDLER_EXIT:
            return client_cancelled()
        return internal_error("The engine ended the response without finishing it.")


async def run_flight(
    flight: Flight,
    router: Router,
    request: GenerationRequest,
    chunks: trio.MemorySendChannel[Chunk],
    client: ClientGoneSignal,
    inactivity_timeout: float,
    unary_timeout: float,
    sessions: SessionManager | None = None,
) -> None:
    """The engine task: route, then generate into `chunks`, beside a watcher of the client
    (`client`) and of the engine's silence.

    Waiting in the admission queue happens in here, under the flight's scope, so a client
    that leaves while queued leaves the queue at once. Closing `chunks` on the way out (any
    way out) is what tells the response writer the engine is done.
    """
    flight.silence_limit = inactivity_timeout
    # A unary request on an engine that answers it whole is timed as a whole (`_generate_on`).
    whole_answer_timeout = None if request.stream else unary_timeout
    try:
        with chunks:
            try:
                with flight.scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_watch, client, flight)
                        try:
                            if request.session_id is not None and sessions is not None:
                                await _generate_in_session(
                                    flight, router, sessions, request, chunks, whole_answer_timeout
                                )
                            else:
                                await _route_and_generate(
                                    flight, router, request, chunks, whole_answer_timeout
                                )
                        except GatewayError as error:
                            flight.error = error
                        except Exception:
                            log.exception(
                                "engine %s failed on request %s", flight.worker, flight.request_id
                            )
                            flight.error = internal_error()
                        finally:
                            nursery.cancel_scope.cancel()
            except trio.Cancelled:
                # Not ours (the flight scope catches its own): the gateway's root scope is
                # going. The reason is set before `chunks` closes, so the writer sees it.
                if flight.cancel_reason is None:
                    flight.cancel_reason = SHUTDOWN
                raise
    finally:
        flight.done.set()


async def _route_and_generate(
    flight: Flight,
    router: Router,
    request: GenerationRequest,
    chunks: trio.MemorySendChannel[Chunk],
    whole_answer_timeout: float | None,
) -> None:
    """Generate on a backend the router picks; a failure that produced nothing and says so
    (`retryable`) is tried again on another backend, each backend at most once."""
    tried: list[str] = []
    last_failure: GatewayError | None = None
    key = RouteKey.of(request)  # its prompt hashed once, whatever the retries
    while True:
        waiting_from = trio.current_time()
        try:
            backend = await router.acquire(request.model, exclude=tried, key=key)
        except GatewayError:
            if last_failure is not None:
                raise last_failure from None  # the last backend's failure says more
            raise
        finally:
            flight.queue_wait += trio.current_time() - waiting_from
        try:
            await _generate_on(flight, router, backend, request, chunks, whole_answer_timeout)
            return
        except GatewayError as error:
            if not error.retryable:
                raise
            log.warning(
                "request %s: %s failed before its first chunk (%s); trying another backend",
                flight.request_id,
                backend.name,
                error.message,
            )
            last_failure = error
            tried.append(backend.name)


async def _generate_in_session(
    flight: Flight,
    router: Router,
    sessions: SessionManager,
    request: GenerationRequest,
    chunks: trio.MemorySendChannel[Chunk],
    whole_answer_timeout: float | None,
) -> None:
    """On the session's worker only: no retry elsewhere, the session's state lives there."""
    waiting_from = trio.current_time()
    try:
        backend, session = await sessions.acquire(request)
    finally:
        flight.queue_wait += trio.current_time() - waiting_from
    try:
        await _generate_on(flight, router, backend, request, chunks, whole_answer_timeout)
    finally:
        sessions.release(session)


async def _generate_on(
    flight: Flight,
    router: Router,
    backend: Backend,
    request: GenerationRequest,
    chunks: trio.MemorySendChannel[Chunk],
    whole_answer_timeout: float | None,
) -> None:
    """Generate on a backend whose slot is held, then give the slot back with a verdict
    for its breaker: success, a backend fault on evidence that the backend is down, none
    otherwise (neither counts nor resets).

    Evidence is an error that `counts_against_backend` (unreachable, lost, a 5xx status;
    not a request's own in-band failure, see `GatewayError`), or a silence: the
    inactivity (or whole-answer) timeout firing while this engine held the request. From
    outside, that is what a hung engine looks like, its connection up and its
    pings answered, and only the breaker notices it. The silence timer runs from the
    request's start, queue included, so a timeout is held against the engine only when the
    engine had the request for at least half the limit: more time spent waiting for a slot
    than in the engine is the gateway's own overload, not a dead backend (and exactly the
    whole limit would miss by the microseconds between the writer's wait and the dispatch).
    The client's disconnect, shutdown and errors that are not faults give no verdict.
    """
    flight.worker = backend.name
    flight.backend = backend
    if whole_answer_timeout is not None and not backend.engine.streams_unary:
        flight.silence_limit = max(flight.silence_limit, whole_answer_timeout)
    dispatched_at = flight.dispatched_at = trio.current_time()
    flight.attempts += 1
    verdict = Verdict.NONE  # unless shown otherwise: the client left, shutdown, ...
    try:
        await backend.engine.generate(request, chunks)
        verdict = Verdict.SUCCESS
    except GatewayError as error:
        if error.counts_against_backend:
            verdict = Verdict.BACKEND_FAULT
        raise
    finally:
        if (
            verdict is Verdict.NONE
            and flight.cancel_reason == RESPONSE_TIMEOUT
            and trio.current_time() - dispatched_at >= flight.silence_limit / 2
        ):
            verdict = Verdict.BACKEND_FAULT
        router.release(backend, verdict)


async def _watch(client: ClientGoneSignal, flight: Flight) -> None:
    """Watch the client's connection and the engine's silence, in one task per flight.

    One task for both, so a flight costs no second task: it waits on `client` (for
    hypercorn, the task awaiting `receive()`, see `ClientGoneSignal`) under a deadline. The
    inactivity deadline is re-armed from `flight.waiting_since` only when it expires, so
    the writer pays one attribute store per write, not a cancel scope.
    """
    while True:
        now = trio.current_time()
        limit = flight.silence_limit
        silent_until = flight.waiting_since + limit
        if silent_until <= now:
            flight.cancel(RESPONSE_TIMEOUT)
            return
        with trio.move_on_at(min(silent_until, now + limit)):
            await client.wait()
            flight.cancel(CLIENT_DISCONNECTED)
            # Wall-clock stamp: benchmarks/worker_path.py measures disconnect → cancel.
            log.debug("request %s: client gone, cancelled at %.6f", flight.request_id, time.time())
            return
