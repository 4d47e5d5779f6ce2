"""What counts against a backend's breaker, panic routing, `/ready`, and a worker's hello.

Issue 16 item 2: five failing requests blacked out a one-backend gateway for the cooldown
while `/ready` said 200. Each test here failed before that fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import pytest
import trio
import trio.testing

from tests.support.asgi_client import Harness, running_gateway
from tests.support.bodies import chat
from tests.support.worker_harness import gateway_on_worker
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.upstream.errors import (
    inband_error,
    status_error,
)
from trio_gateway.errors import (
    GatewayError,
    unavailable,
)
from trio_gateway.generation import Chunk, GenerationRequest
from trio_gateway.router.admission import Backend
from trio_gateway.router.breaker import BreakerState

CHAT = "/v1/chat/completions"

# What an engine does with one request: fail with an error after `before` chunks, stall
# after them ("stall"), or answer ("ok").
Step = tuple[str, GatewayError | None, int]
OK: Step = ("ok", None, 0)


def token(text: str, finish_reason: str | None = None) -> Chunk:
    event = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish_reason}]}
    return Chunk(text, 1, finish_reason, payload=b"data: " + orjson.dumps(event) + b"\n\n")


@dataclass(eq=False)
class ScriptedEngine:
    """An engine serving "mock" whose requests follow `script` in turn, then answer."""

    name: str = "scripted"
    script: list[Step] = field(default_factory=list)
    models: tuple[str, ...] = ("mock",)
    capacity: int | None = None
    available: bool = True
    streams_unary: bool = True
    keeps_session_history: bool = False
    context_lengths: dict[str, int] = field(default_factory=dict)
    hold: float = 0.0  # how long an "ok" answer takes
    url: str | None = None
    on_available: Callable[[], None] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def open_session(self, session_id: str, idle_timeout_s: float) -> None:
        return None

    async def close_session(self, session_id: str) -> None:
        return None

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        what, error, before = self.script.pop(0) if self.script else OK
        for _ in range(before):
            await send.send(token("x"))
        if what == "fail":
            assert error is not None
            raise error
        if what == "stall":
            await trio.sleep_forever()
        await trio.sleep(self.hold)
        await send.send(token("done", "stop"))


def backend_of(harness: Harness) -> Backend:
    (backend,) = harness.gateway.router.backends
    return backend


def state_of(backend: Backend) -> BreakerState:
    return backend.breaker.state


async def stream(harness: Harness) -> int | None:
    return (await harness.request("POST", CHAT, chat(stream=True))).status


# --- (a) what is evidence that the backend is down -----------------------------------------


async def test_injected_mock_errors_do_not_open_the_breaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The issue's reproduction: five streams with `mock.error_after: 1` in a row."""
    async with running_gateway() as harness:
        for _ in range(5):
            failed = await harness.request("POST", CHAT, chat(stream=True, mock={"error_after": 1}))
            assert failed.status == 200
            assert orjson.loads(failed.events()[-2])["error"]["type"] == "internal_error"
        backend = backend_of(harness)
        assert state_of(backend) is BreakerState.CLOSED
        assert backend.breaker.failures == 0
        good = await harness.request("POST", CHAT, chat(stream=True, max_tokens=3))
        assert good.status == 200 and len(good.tokens()) == 3


@pytest.mark.parametrize("before", [0, 2])
async def test_inband_errors_from_an_upstream_do_not_count(
    autojump_clock: trio.testing.MockClock, before: int
) -> None:
    error = inband_error({"error": {"message": "boom", "code": 500}})
    engine = ScriptedEngine(script=[("fail", error, before)] * 3)
    async with running_gateway(GatewayConfig(breaker_threshold=1), [engine]) as harness:
        for _ in range(3):
            await stream(harness)
        assert state_of(backend_of(harness)) is BreakerState.CLOSED
        assert backend_of(harness).breaker.failures == 0


async def test_backend_faults_still_count(autojump_clock: trio.testing.MockClock) -> None:
    engine = ScriptedEngine(script=[("fail", status_error("u", 502, b""), 1)])
    async with running_gateway(GatewayConfig(breaker_threshold=2), [engine]) as harness:
        await stream(harness)
        assert backend_of(harness).breaker.failures == 1


async def test_an_engine_silent_for_the_whole_inactivity_timeout_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = ScriptedEngine(script=[("stall", None, 1)])
    config = GatewayConfig(breaker_threshold=1, inactivity_timeout_s=5)
    async with running_gateway(config, [engine]) as harness:
        timed_out = await harness.request("POST", CHAT, chat(stream=True))
        assert orjson.loads(timed_out.events()[-2])["error"]["type"] == "response_timeout"
        assert state_of(backend_of(harness)) is BreakerState.OPEN


async def test_a_timeout_mostly_spent_in_the_queue_does_not_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The silence timer starts with the request; the engine is blamed only for a silence
    it held the request through from end to end."""
    engine = ScriptedEngine(script=[OK, ("stall", None, 0)], capacity=1, hold=4.0)
    config = GatewayConfig(breaker_threshold=1, inactivity_timeout_s=5)
    async with running_gateway(config, [engine]) as harness:
        first = harness.start("POST", CHAT, chat(stream=True))
        await trio.testing.wait_all_tasks_blocked()
        second = await harness.request("POST", CHAT, chat(stream=True))  # 4 s queued
        await first.finished.wait()
        assert second.status == 504, (second.status, bytes(second.body))
        assert second.json()["error"]["type"] == "response_timeout"
        assert state_of(backend_of(harness)) is BreakerState.CLOSED


# --- (b) panic routing and (c) /ready ------------------------------------------------------


async def test_a_one_backend_gateway_is_not_blacked_out_by_an_open_breaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fault = ("fail", unavailable("The upstream is unavailable (HTTP 503)."), 0)
    engine = ScriptedEngine(script=[fault, fault])
    config = GatewayConfig(breaker_threshold=2, breaker_cooldown_s=10)
    async with running_gateway(config, [engine]) as harness:
        assert [await stream(harness) for _ in range(2)] == [503, 503]
        backend = backend_of(harness)
        assert state_of(backend) is BreakerState.OPEN
        assert trio.current_time() < backend.breaker.open_until
        served = await harness.request("POST", CHAT, chat(stream=True))
        assert served.status == 200 and served.tokens() == ["done"]
        assert state_of(backend) is BreakerState.CLOSED  # its success closed it


def open_breaker(backend: Backend) -> None:
    for _ in range(backend.breaker.threshold):
        backend.breaker.on_failure(trio.current_time())


def take_down(backend: Backend) -> None:
    backend.engine.available = False  # type: ignore[misc]


def open_and_take_down(backend: Backend) -> None:
    open_breaker(backend)
    take_down(backend)


STATES: dict[str, Callable[[Backend], None]] = {
    "healthy": lambda backend: None,
    "breaker open": open_breaker,
    "engine down": take_down,
    "breaker open, engine down": open_and_take_down,
}


@pytest.mark.parametrize("make", STATES.values(), ids=STATES.keys())
async def test_ready_agrees_with_what_a_request_gets(
    autojump_clock: trio.testing.MockClock, make: Callable[[Backend], None]
) -> None:
    async with running_gateway(GatewayConfig(), [ScriptedEngine()]) as harness:
        make(backend_of(harness))
        ready = (await harness.request("GET", "/ready")).status
        served = await stream(harness)
        assert ready in (200, 503)
        assert (ready == 200) == (served == 200), (ready, served)


# --- (d) a worker's fresh hello ------------------------------------------------------------


async def test_a_worker_that_reconnects_is_half_open_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = GatewayConfig(breaker_threshold=1, breaker_cooldown_s=60)
    async with gateway_on_worker(config) as (harness, _server, worker):
        backend = backend_of(harness)
        open_breaker(backend)
        assert state_of(backend) is BreakerState.OPEN
        hello = trio.Event()
        route_again = worker.on_available
        assert route_again is not None

        def on_hello() -> None:
            route_again()
            hello.set()

        worker.on_available = on_hello
        worker.kill()
        with trio.fail_after(5):
            await hello.wait()
        assert worker.connections == 2
        now = trio.current_time()
        assert now < backend.breaker.open_until - 50  # long before the cooldown's end
        assert state_of(backend) is BreakerState.HALF_OPEN
        assert backend.breaker.allows(now)
        probe = await harness.request("POST", CHAT, chat(stream=True, max_tokens=2))
        assert probe.status == 200 and len(probe.tokens()) == 2
        assert state_of(backend) is BreakerState.CLOSED


async def test_injected_errors_on_a_worker_do_not_open_its_breaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same five failures through the worker plane: the error frame says they are the
    requests' own, so the worker stays closed."""
    async with gateway_on_worker() as (harness, _server, _worker):
        for _ in range(5):
            failed = await harness.request("POST", CHAT, chat(stream=True, mock={"error_after": 1}))
            assert orjson.loads(failed.events()[-2])["error"]["type"] == "internal_error"
        backend = backend_of(harness)
        assert state_of(backend) is BreakerState.CLOSED
        assert backend.breaker.failures == 0
