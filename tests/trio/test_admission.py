"""Admission and routing: slots, the bounded queue, 404/429/503, and the breakers' part."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from tests.support.fake_engine import FakeEngine
from trio_gateway.errors import GatewayError
from trio_gateway.openai.errors import error_body, http_status, openai_type
from trio_gateway.router.admission import Backend, Router
from trio_gateway.router.breaker import BreakerState, Verdict
from trio_gateway.router.policies import LeastInflight, RoundRobin


@dataclass(eq=False)
class UrlEngine(FakeEngine):
    url: str = ""


def router_with(*engines: FakeEngine, **options: float | int | None) -> Router:
    router = Router(LeastInflight(), **options)  # type: ignore[arg-type]
    for engine in engines:
        router.add(engine)
    return router


def state_of(backend: Backend) -> BreakerState:
    """Read through a call, so mypy does not narrow the state across transitions."""
    return backend.breaker.state


Outcome = tuple[Backend | GatewayError, float]


async def acquire_into(
    router: Router, model: str, outcomes: list[Outcome], exclude: Sequence[str] = ()
) -> None:
    """Acquire, recording what came back (a backend or the GatewayError) and when."""
    try:
        backend = await router.acquire(model, exclude)
    except GatewayError as error:
        outcomes.append((error, trio.current_time()))
    else:
        outcomes.append((backend, trio.current_time()))


# --- the table -----------------------------------------------------------------------------


async def test_backend_properties() -> None:
    router = Router(LeastInflight())
    engine = FakeEngine("a", ("m", "n"), capacity=2)
    backend = router.add(engine)
    assert backend.engine is engine
    assert backend.name == "a"
    assert backend.inflight == 0
    assert backend.capacity == 2
    assert backend.max_inflight is None
    assert backend.serves("m")
    assert backend.serves("n")
    assert not backend.serves("x")
    assert backend.has_room()
    backend.inflight = 2
    assert not backend.has_room()
    assert state_of(backend) is BreakerState.CLOSED


async def test_router_passes_breaker_settings() -> None:
    router = Router(LeastInflight(), breaker_threshold=7, breaker_cooldown=2.5)
    backend = router.add(FakeEngine("a"))
    assert backend.breaker.threshold == 7
    assert backend.breaker.cooldown == 2.5


async def test_add_duplicate_name_raises() -> None:
    router = router_with(FakeEngine("a"))
    with pytest.raises(ValueError, match="'a' is already routed to"):
        router.add(FakeEngine("a", ("other",)))
    assert [b.name for b in router.backends] == ["a"]
    assert router.models() == ["m"]


async def test_add_duplicate_of_a_url_raises() -> None:
    router = router_with(UrlEngine("w1", url="ws://host:1"))
    with pytest.raises(ValueError, match="already routed to"):
        router.add(FakeEngine("ws://host:1"))
    assert len(router.backends) == 1


async def test_find_by_name_and_url() -> None:
    plain = FakeEngine("plain")
    worker = UrlEngine("worker-1", url="ws://10.0.0.1:9000")
    router = router_with(plain, worker)
    found_plain = router.find("plain")
    assert found_plain is not None
    assert found_plain.engine is plain
    by_name = router.find("worker-1")
    by_url = router.find("ws://10.0.0.1:9000")
    assert by_name is not None
    assert by_name is by_url
    assert by_name.engine is worker
    assert router.find("nope") is None
    assert router.find("ws://10.0.0.1:9001") is None


async def test_remove() -> None:
    router = router_with(FakeEngine("a"), FakeEngine("b", ("n",)))
    backend = router.find("a")
    assert backend is not None
    router.remove(backend)
    assert router.find("a") is None
    assert [b.name for b in router.backends] == ["b"]
    assert not router.knows("m")
    with pytest.raises(GatewayError) as info:
        router.try_acquire("m")
    assert http_status(info.value) == 404


async def test_models_lists_each_once_in_order() -> None:
    router = router_with(
        FakeEngine("a", ("m2", "m1")),
        FakeEngine("b", ("m1", "m3")),
        FakeEngine("c", ("m3", "m2", "m4"), available=False),
    )
    assert router.models() == ["m2", "m1", "m3", "m4"]
    assert Router(RoundRobin()).models() == []


async def test_knows() -> None:
    router = router_with(FakeEngine("a", ("m",), available=False))
    assert router.knows("m")  # unavailable backends still make a model known
    assert not router.knows("x")


# --- try_acquire / release -----------------------------------------------------------------


async def test_try_acquire_picks_available_backend_serving_model() -> None:
    router = router_with(
        FakeEngine("other", ("x",), capacity=5),
        FakeEngine("down", ("m",), capacity=5, available=False),
        FakeEngine("up", ("m",), capacity=5),
    )
    backend = router.try_acquire("m")
    assert backend is not None
    assert backend.name == "up"
    assert backend.inflight == 1
    assert [b.inflight for b in router.backends] == [0, 0, 1]
    again = router.try_acquire("m")
    assert again is backend
    assert backend.inflight == 2


async def test_try_acquire_uses_the_policy() -> None:
    router = Router(RoundRobin())
    a = router.add(FakeEngine("a", capacity=None))
    b = router.add(FakeEngine("b", capacity=None))
    assert [router.try_acquire("m") for _ in range(4)] == [a, b, a, b]
    assert (a.inflight, b.inflight) == (2, 2)

    least = router_with(FakeEngine("a", capacity=None), FakeEngine("b", capacity=None))
    first = least.try_acquire("m")
    second = least.try_acquire("m")
    assert first is not None and second is not None
    assert first.name == "a"
    assert second.name == "b"  # a is busier now


async def test_release_decrements_and_frees_the_slot() -> None:
    router = router_with(FakeEngine("a", capacity=1))
    backend = router.try_acquire("m")
    assert backend is not None
    assert router.try_acquire("m") is None
    router.release(backend, Verdict.NONE)
    assert backend.inflight == 0
    assert state_of(backend) is BreakerState.CLOSED
    assert router.try_acquire("m") is backend
    assert backend.inflight == 1


async def test_engine_capacity_respected() -> None:
    router = router_with(FakeEngine("a", capacity=2))
    first, second = router.try_acquire("m"), router.try_acquire("m")
    assert first is not None and first is second
    assert first.inflight == 2
    assert router.try_acquire("m") is None  # full, but could take it later: queue-able
    assert first.inflight == 2


async def test_max_inflight_override_below_engine_capacity() -> None:
    router = router_with(FakeEngine("a", capacity=5), max_inflight=1)
    backend = router.try_acquire("m")
    assert backend is not None
    assert backend.max_inflight == 1
    assert backend.capacity == 1
    assert router.try_acquire("m") is None


async def test_max_inflight_override_above_engine_capacity() -> None:
    router = router_with(FakeEngine("a", capacity=1), max_inflight=3)
    got = [router.try_acquire("m") for _ in range(4)]
    assert [g is not None for g in got] == [True, True, True, False]
    assert router.backends[0].inflight == 3


async def test_no_capacity_means_unlimited() -> None:
    router = router_with(FakeEngine("a", capacity=None))
    for _ in range(500):
        assert router.try_acquire("m") is not None
    assert router.backends[0].inflight == 500


async def test_full_backend_spills_to_another() -> None:
    router = router_with(FakeEngine("a", capacity=1), FakeEngine("b", capacity=1))
    first, second = router.try_acquire("m"), router.try_acquire("m")
    assert first is not None and second is not None
    assert {first.name, second.name} == {"a", "b"}
    assert router.try_acquire("m") is None


@pytest.mark.parametrize("engines", [(), (FakeEngine("a", ("other",)),)])
async def test_unknown_model_is_404(engines: tuple[FakeEngine, ...]) -> None:
    router = router_with(*engines)
    with pytest.raises(GatewayError) as info:
        router.try_acquire("nope")
    error = info.value
    assert http_status(error) == 404
    assert error_body(error)["error"]["code"] == "model_not_found"
    assert error.param == "model"
    assert error.kind.value == "not_found"
    assert "`nope`" in error.message
    with pytest.raises(GatewayError) as again:
        await router.acquire("nope")
    assert http_status(again.value) == 404
    assert router.queued == 0


async def test_known_model_all_unavailable_is_503() -> None:
    router = router_with(
        FakeEngine("a", available=False), FakeEngine("b", available=False, capacity=None)
    )
    with pytest.raises(GatewayError) as info:
        router.try_acquire("m")
    error = info.value
    assert http_status(error) == 503
    assert error_body(error)["error"]["code"] == "unavailable"
    assert openai_type(error) == "unavailable"
    assert error.kind.value == "unavailable"
    assert error.retryable is False
    assert "'m'" in error.message
    with pytest.raises(GatewayError) as again:
        await router.acquire("m")  # 503 at once: nothing to wait for
    assert http_status(again.value) == 503
    assert router.queued == 0


async def test_unavailable_even_when_full_is_503_not_queued() -> None:
    router = router_with(FakeEngine("a", capacity=1))
    backend = router.try_acquire("m")
    assert backend is not None
    backend.engine.available = False  # type: ignore[misc]
    with pytest.raises(GatewayError) as info:
        router.try_acquire("m")
    assert http_status(info.value) == 503


async def test_the_only_backend_open_is_routed_to_anyway(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Panic routing: an open breaker does not refuse a model's last backends."""
    router = router_with(FakeEngine("a", capacity=None), breaker_threshold=1)
    backend = router.try_acquire("m")
    assert backend is not None
    router.release(backend, Verdict.BACKEND_FAULT)
    assert state_of(backend) is BreakerState.OPEN
    assert not backend.breaker.allows(trio.current_time())
    assert router.routable("m") and router.serves_any()
    assert router.try_acquire("m") is backend
    assert state_of(backend) is BreakerState.OPEN  # not a probe: the cooldown runs on
    router.release(backend, Verdict.SUCCESS)
    assert state_of(backend) is BreakerState.CLOSED


async def test_panic_spreads_over_every_open_backend(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(
        FakeEngine("a", capacity=None), FakeEngine("b", capacity=None), breaker_threshold=1
    )
    router.policy = RoundRobin()
    for name in ("a", "b"):
        backend = router.try_acquire("m", only=name)
        assert backend is not None
        router.release(backend, Verdict.BACKEND_FAULT)
        assert state_of(backend) is BreakerState.OPEN
    got = [router.try_acquire("m") for _ in range(4)]
    assert [b.name for b in got if b is not None] == ["a", "b", "a", "b"]


async def test_panic_waits_for_room_and_never_picks_a_disconnected_backend(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(FakeEngine("a", capacity=1), FakeEngine("b"), breaker_threshold=1)
    a, b = router.find("a"), router.find("b")
    assert a is not None and b is not None
    for backend in (a, b):
        backend.breaker.on_failure(trio.current_time())
    b.engine.available = False  # type: ignore[misc]
    assert router.try_acquire("m") is a
    assert router.try_acquire("m") is None  # a is full: queue for it
    a.engine.available = False  # type: ignore[misc]
    assert not router.routable("m") and not router.serves_any()
    with pytest.raises(GatewayError) as info:
        router.try_acquire("m")
    assert http_status(info.value) == 503
    assert info.value.kind.value == "unavailable"


async def test_a_healthy_backend_that_is_full_is_waited_for_rather_than_panic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(FakeEngine("a", capacity=None), FakeEngine("b"), breaker_threshold=1)
    a, b = router.find("a"), router.find("b")
    assert a is not None and b is not None
    a.breaker.on_failure(trio.current_time())
    b.inflight = 1
    assert router.try_acquire("m") is None
    assert a.inflight == 0


async def test_a_fresh_hello_makes_an_open_breaker_half_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(FakeEngine("a", capacity=None), FakeEngine("b"), breaker_threshold=1)
    a, b = router.find("a"), router.find("b")
    assert a is not None and b is not None
    a.breaker.on_failure(trio.current_time())
    assert router.try_acquire("m") is b
    router.backend_reconnected(a)
    assert state_of(a) is BreakerState.HALF_OPEN
    assert router.try_acquire("m") is a  # the probe, long before the cooldown's end
    router.backend_reconnected(b)  # closed: nothing changes
    assert state_of(b) is BreakerState.CLOSED


async def test_breaker_open_backend_is_skipped_for_a_healthy_one() -> None:
    router = router_with(
        FakeEngine("a", capacity=None), FakeEngine("b", capacity=None), breaker_threshold=1
    )
    a = router.find("a")
    assert a is not None
    a.inflight += 1
    router.release(a, Verdict.BACKEND_FAULT)
    assert state_of(a) is BreakerState.OPEN
    for _ in range(3):
        got = router.try_acquire("m")
        assert got is not None
        assert got.name == "b"


async def test_exclude_skips_backends() -> None:
    router = router_with(
        FakeEngine("a", capacity=None), FakeEngine("b", capacity=None), FakeEngine("c")
    )
    got = router.try_acquire("m", exclude=["a"])
    assert got is not None and got.name == "b"
    got = router.try_acquire("m", exclude=("a", "b"))
    assert got is not None and got.name == "c"
    got = router.try_acquire("m", exclude={"a", "b", "nonexistent"})
    assert got is None  # c is full: could serve later
    with pytest.raises(GatewayError) as info:
        router.try_acquire("m", exclude=["a", "b", "c"])
    assert http_status(info.value) == 503  # known model, nothing left to try
    assert router.find("a") is not None
    assert [b.inflight for b in router.backends] == [0, 1, 1]


async def test_exclude_accepts_a_generator() -> None:
    router = router_with(FakeEngine("a"), FakeEngine("b"))
    backend = await router.acquire("m", (name for name in ["a"]))
    assert backend.name == "b"


# --- the queue -----------------------------------------------------------------------------


async def test_acquire_without_waiting(autojump_clock: trio.testing.MockClock) -> None:
    router = router_with(FakeEngine("a"))
    start = trio.current_time()
    backend = await router.acquire("m")
    assert backend.name == "a"
    assert backend.inflight == 1
    assert router.queued == 0
    assert trio.current_time() == start


async def test_acquire_queues_until_a_release(autojump_clock: trio.testing.MockClock) -> None:
    router = router_with(FakeEngine("a"), queue_timeout=30.0)
    held = router.try_acquire("m")
    assert held is not None
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acquire_into, router, "m", outcomes)
        await trio.sleep(3.0)
        assert router.queued == 1
        assert outcomes == []
        assert held.inflight == 1
        released_at = trio.current_time()
        router.release(held, Verdict.SUCCESS)
        assert held.inflight == 0
    assert len(outcomes) == 1
    got, at = outcomes[0]
    assert got is held
    assert at == released_at  # promptly: no mock time passed
    assert held.inflight == 1
    assert router.queued == 0


async def test_exclude_holds_while_queued(autojump_clock: trio.testing.MockClock) -> None:
    router = router_with(FakeEngine("a"), FakeEngine("b"))
    a, b = router.find("a"), router.find("b")
    assert a is not None and b is not None
    a.inflight = b.inflight = 1
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acquire_into, router, "m", outcomes, ["b"])
        await trio.testing.wait_all_tasks_blocked()
        router.release(b, Verdict.NONE)  # the excluded one frees up: still waiting
        await trio.testing.wait_all_tasks_blocked()
        assert router.queued == 1
        assert b.inflight == 0
        router.release(a, Verdict.NONE)
    assert [o[0] for o in outcomes] == [a]
    assert (a.inflight, b.inflight) == (1, 0)


async def test_each_release_lets_one_waiter_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(FakeEngine("a"), queue_timeout=100.0)
    held = router.try_acquire("m")
    assert held is not None
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(acquire_into, router, "m", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        assert router.queued == 3
        for served in range(1, 4):
            await trio.sleep(1.0)
            router.release(held, Verdict.SUCCESS)
            await trio.testing.wait_all_tasks_blocked()
            assert len(outcomes) == served
            assert router.queued == 3 - served
            assert held.inflight == 1
            assert outcomes[-1] == (held, trio.current_time())
    assert all(o[0] is held for o in outcomes)


async def test_waiter_that_loses_the_race_keeps_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(FakeEngine("a"), queue_timeout=50.0)
    held = router.try_acquire("m")
    assert held is not None
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acquire_into, router, "m", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        router.release(held, Verdict.SUCCESS)
        barger = router.try_acquire("m")  # takes the slot before the waiter runs
        assert barger is held
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == []  # no spurious 429: still queued
        assert router.queued == 1
        await trio.sleep(10.0)
        released_at = trio.current_time()
        router.release(held, Verdict.SUCCESS)
    assert outcomes == [(held, released_at)]
    assert held.inflight == 1


async def test_queue_full_is_429(autojump_clock: trio.testing.MockClock) -> None:
    router = router_with(FakeEngine("a"), queue_size=2)
    held = router.try_acquire("m")
    assert held is not None
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acquire_into, router, "m", outcomes)
        nursery.start_soon(acquire_into, router, "m", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        assert router.queued == 2
        start = trio.current_time()
        with pytest.raises(GatewayError) as info:
            await router.acquire("m")
        assert trio.current_time() == start  # refused at once
        error = info.value
        assert http_status(error) == 429
        assert error.kind.value == "overload"
        assert openai_type(error) == "overload"
        assert error_body(error)["error"]["code"] == "overload"
        assert "queue is full (2 requests waiting)" in error.message
        assert error.message.endswith("Retry later.")
        assert router.queued == 2
        nursery.cancel_scope.cancel()
    assert held.inflight == 1


async def test_queue_size_zero_refuses_any_wait(autojump_clock: trio.testing.MockClock) -> None:
    router = router_with(FakeEngine("a"), queue_size=0)
    assert (await router.acquire("m")).inflight == 1
    with pytest.raises(GatewayError) as info:
        await router.acquire("m")
    assert http_status(info.value) == 429
    assert router.queued == 0


async def test_queue_timeout_is_429_after_exactly_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(FakeEngine("a"), queue_timeout=7.5)
    held = router.try_acquire("m")
    assert held is not None
    start = trio.current_time()
    with pytest.raises(GatewayError) as info:
        await router.acquire("m")
    assert trio.current_time() - start == 7.5
    error = info.value
    assert http_status(error) == 429
    assert error.kind.value == "overload"
    assert error.message == "No capacity within 7.5 s. Retry later."
    assert router.queued == 0
    assert held.inflight == 1


async def test_queue_timeout_not_reset_by_fruitless_wakeups(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(FakeEngine("a"), queue_timeout=10.0)
    held = router.try_acquire("m")
    assert held is not None
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(acquire_into, router, "m", outcomes)
        for _ in range(3):
            await trio.sleep(3.0)
            router.wake()  # nothing freed: the waiter looks and goes back to waiting
    assert len(outcomes) == 1
    error, at = outcomes[0]
    assert isinstance(error, GatewayError)
    assert http_status(error) == 429
    assert at - start == 10.0


async def test_cancelled_waiter_leaves_the_queue_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(FakeEngine("a"), queue_timeout=60.0)
    held = router.try_acquire("m")
    assert held is not None
    results: list[str] = []

    async def client(scope: trio.CancelScope) -> None:
        with scope:
            await router.acquire("m")
            results.append("acquired")
        results.append("cancelled" if scope.cancelled_caught else "done")

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client, scope)
        await trio.sleep(5.0)
        assert router.queued == 1
        cancelled_at = trio.current_time()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert router.queued == 0
        assert trio.current_time() == cancelled_at
    assert results == ["cancelled"]
    assert held.inflight == 1  # no slot taken
    router.release(held, Verdict.NONE)
    assert held.inflight == 0
    assert router.try_acquire("m") is held  # and the freed slot is really free


async def test_cancelled_waiter_does_not_block_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(FakeEngine("a"), queue_size=1)
    held = router.try_acquire("m")
    assert held is not None
    with trio.move_on_after(1.0):
        await router.acquire("m")
    assert router.queued == 0
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acquire_into, router, "m", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        assert router.queued == 1  # the place was given back
        router.release(held, Verdict.SUCCESS)
    assert [o[0] for o in outcomes] == [held]


async def test_wake_after_backend_becomes_available(
    autojump_clock: trio.testing.MockClock,
) -> None:
    full = FakeEngine("full", capacity=1)
    down = FakeEngine("down", capacity=1, available=False)
    router = router_with(full, down)
    held = router.try_acquire("m")
    assert held is not None and held.name == "full"
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acquire_into, router, "m", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        down.available = True
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == []  # nobody told the waiter
        assert router.queued == 1
        woken_at = trio.current_time()
        router.wake()
    assert len(outcomes) == 1
    got, at = outcomes[0]
    assert isinstance(got, Backend)
    assert got.name == "down"
    assert got.inflight == 1
    assert at == woken_at
    assert held.inflight == 1


async def test_add_wakes_waiters(autojump_clock: trio.testing.MockClock) -> None:
    router = router_with(FakeEngine("a"))
    held = router.try_acquire("m")
    assert held is not None
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acquire_into, router, "m", outcomes)
        await trio.sleep(2.0)
        added = router.add(FakeEngine("b"))
    assert [o[0] for o in outcomes] == [added]
    assert outcomes[0][1] == trio.current_time()
    assert added.inflight == 1


async def test_waiter_gets_503_when_its_backends_go_away(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = FakeEngine("a")
    router = router_with(engine, queue_timeout=30.0)
    held = router.try_acquire("m")
    assert held is not None
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acquire_into, router, "m", outcomes)
        await trio.sleep(1.0)
        engine.available = False
        router.wake()
    assert len(outcomes) == 1
    error = outcomes[0][0]
    assert isinstance(error, GatewayError)
    assert http_status(error) == 503
    assert router.queued == 0


# --- verdicts and the breaker --------------------------------------------------------------


async def test_failures_open_the_breaker_after_threshold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(FakeEngine("a", capacity=None), breaker_threshold=3, breaker_cooldown=10.0)
    for n in range(1, 3):
        backend = router.try_acquire("m")
        assert backend is not None
        router.release(backend, Verdict.BACKEND_FAULT)
        assert backend.breaker.failures == n
        assert state_of(backend) is BreakerState.CLOSED
        assert backend.inflight == 0
    backend = router.try_acquire("m")
    assert backend is not None
    failed_at = trio.current_time()
    router.release(backend, Verdict.BACKEND_FAULT)
    assert state_of(backend) is BreakerState.OPEN
    assert backend.breaker.open_until == failed_at + 10.0
    assert not backend.breaker.allows(trio.current_time())


async def test_success_verdict_resets_failures() -> None:
    router = router_with(FakeEngine("a", capacity=None), breaker_threshold=2)
    backend = router.try_acquire("m")
    assert backend is not None
    router.release(backend, Verdict.BACKEND_FAULT)
    assert backend.breaker.failures == 1
    assert router.try_acquire("m") is backend
    router.release(backend, Verdict.SUCCESS)
    assert backend.breaker.failures == 0
    assert router.try_acquire("m") is backend
    router.release(backend, Verdict.NONE)  # no verdict: neither counts nor resets
    assert backend.breaker.failures == 0
    assert state_of(backend) is BreakerState.CLOSED


async def test_half_open_probe_success_closes(autojump_clock: trio.testing.MockClock) -> None:
    # "full" is healthy but has no room: requests wait for it rather than panic onto "a".
    router = router_with(
        FakeEngine("a", capacity=None),
        FakeEngine("full", capacity=1),
        breaker_threshold=1,
        breaker_cooldown=5.0,
    )
    full = router.find("full")
    assert full is not None
    full.inflight = 1
    backend = router.try_acquire("m")
    assert backend is not None and backend.name == "a"
    router.release(backend, Verdict.BACKEND_FAULT)
    assert state_of(backend) is BreakerState.OPEN
    await trio.sleep(4.9)
    assert router.try_acquire("m") is None
    await trio.sleep(0.1)
    probe = router.try_acquire("m")
    assert probe is backend
    assert state_of(backend) is BreakerState.HALF_OPEN
    assert router.try_acquire("m") is None  # one probe at a time
    router.release(probe, Verdict.SUCCESS)
    assert state_of(backend) is BreakerState.CLOSED
    assert router.try_acquire("m") is backend
    assert router.try_acquire("m") is backend
    assert backend.inflight == 2


async def test_half_open_probe_failure_reopens(autojump_clock: trio.testing.MockClock) -> None:
    router = router_with(FakeEngine("a", capacity=None), breaker_threshold=2, breaker_cooldown=5.0)
    backend = router.try_acquire("m")
    assert backend is not None
    backend.inflight += 1
    router.release(backend, Verdict.BACKEND_FAULT)
    router.release(backend, Verdict.BACKEND_FAULT)
    assert state_of(backend) is BreakerState.OPEN
    await trio.sleep(5.0)
    probe = router.try_acquire("m")
    assert probe is backend
    await trio.sleep(2.0)
    failed_at = trio.current_time()
    router.release(probe, Verdict.BACKEND_FAULT)
    assert state_of(backend) is BreakerState.OPEN
    assert backend.breaker.open_until == failed_at + 5.0
    assert not backend.breaker.allows(trio.current_time())


async def test_abandoned_probe_lets_another_probe_go(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(FakeEngine("a", capacity=None), breaker_threshold=1, breaker_cooldown=1.0)
    backend = router.try_acquire("m")
    assert backend is not None
    router.release(backend, Verdict.BACKEND_FAULT)
    await trio.sleep(1.0)
    probe = router.try_acquire("m")
    assert probe is backend
    router.release(probe, Verdict.NONE)
    assert state_of(backend) is BreakerState.HALF_OPEN
    assert backend.inflight == 0
    assert router.try_acquire("m") is backend
    assert state_of(backend) is BreakerState.HALF_OPEN


async def test_failure_verdict_wakes_waiter_to_other_backend(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(FakeEngine("a"), FakeEngine("b"), breaker_threshold=1)
    a, b = router.find("a"), router.find("b")
    assert a is not None and b is not None
    a.inflight = b.inflight = 1
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acquire_into, router, "m", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        router.release(
            a, Verdict.BACKEND_FAULT
        )  # a's breaker opens: the waiter must not land there
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == []
        assert router.queued == 1
        router.release(b, Verdict.SUCCESS)
    assert [o[0] for o in outcomes] == [b]
    assert a.inflight == 0
    assert state_of(a) is BreakerState.OPEN


async def test_a_queued_request_looks_again_when_a_cooldown_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = router_with(
        FakeEngine("a"),
        FakeEngine("b"),
        breaker_threshold=1,
        breaker_cooldown=10.0,
        queue_timeout=60.0,
    )
    b = router.try_acquire("m", only="b")
    assert b is not None
    router.release(b, Verdict.BACKEND_FAULT)  # one failure: b's breaker opens for 10 s
    opened_at = trio.current_time()
    a = router.try_acquire("m")
    assert a is not None and a.name == "a"  # a is now full
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acquire_into, router, "m", outcomes)
        await trio.sleep(1)
        assert router.queued == 1
    got, at = outcomes[0]
    assert isinstance(got, Backend) and got.name == "b"  # the half-open probe
    assert at == pytest.approx(opened_at + 10.0)


def test_a_configured_backend_is_its_name_capacity_models_and_lengths() -> None:
    """A `[[backends]]` entry's settings on the router: the name is the label (a worker's
    hello does not rename it), `capacity` wins over `--max-inflight` and the engine's
    figure, `models` filters what the engine lists, `max_model_len` wins over its own."""
    engine = FakeEngine("worker-id", models=("a", "b"), capacity=8, context_lengths={"a": 100})
    router = Router(LeastInflight(), max_inflight=4)
    backend = router.add(
        engine, label="w1", capacity=2, allowed=frozenset({"a"}), max_model_len={"a": 50}
    )
    assert backend.name == "w1" and router.find("w1") is backend
    assert backend.capacity == 2
    assert router.models() == ["a"] and not router.knows("b") and router.knows("a")
    assert router.context_length("a") == 50
    plain = router.add(FakeEngine("other", capacity=8))
    assert plain.capacity == 4  # --max-inflight over the engine's own
    with pytest.raises(ValueError, match="already routed"):
        router.add(FakeEngine("x"), label="w1")


async def test_a_removed_backend_is_idle_once_its_last_request_ends() -> None:
    router = router_with(FakeEngine("a", capacity=2))
    (backend,) = router.backends
    first = router.try_acquire("m")
    second = router.try_acquire("m")
    assert first is backend and second is backend
    router.remove(backend)
    assert backend.retired and not backend.idle.is_set()
    with pytest.raises(GatewayError):
        router.try_acquire("m")  # no new request on it
    router.release(backend, Verdict.SUCCESS)
    assert not backend.idle.is_set()
    router.release(backend, Verdict.SUCCESS)
    assert backend.idle.is_set()


async def test_replace_swaps_in_place() -> None:
    router = router_with(FakeEngine("a"), FakeEngine("b"), FakeEngine("c"))
    old = router.backends[1]
    new = router.backend_for(FakeEngine("b2"), label="b")
    router.replace(old, new)
    assert [b.name for b in router.backends] == ["a", "b", "c"]
    assert router.backends[1] is new and old.retired and old.idle.is_set()


def test_the_policy_weighs_only_while_some_weight_is_not_1() -> None:
    router = router_with(FakeEngine("a"))
    assert not router.policy.weighted
    heavy = router.add(FakeEngine("b"), weight=3)
    assert router.policy.weighted
    router.remove(heavy)
    assert not router.policy.weighted
