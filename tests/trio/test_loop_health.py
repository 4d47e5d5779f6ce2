"""Event-loop lag and the scrape-time gauges."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing

from tests.support.asgi_client import running_gateway
from trio_gateway.loop_health import count_tasks, sample_event_loop_lag
from trio_gateway.metrics import GatewayMetrics


async def test_a_blocked_loop_shows_up_as_lag(mock_clock: trio.testing.MockClock) -> None:
    metrics = GatewayMetrics()
    registry = metrics.registry
    async with trio.open_nursery() as nursery:
        await nursery.start(sample_event_loop_lag, metrics, 0.5)
        # As a 1.2 s blocking call would: time passes while the loop runs nothing else.
        mock_clock.jump(1.2)
        for _ in range(100):  # bounded: mock time is frozen again, fail_after would not fire
            if registry.get_sample_value("trio_gateway_event_loop_lag_seconds_count") == 1:
                break
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    lag = registry.get_sample_value("trio_gateway_event_loop_lag_seconds_sum")
    assert lag is not None and abs(lag - 0.7) < 1e-6  # woke at 1.2 for a 0.5 deadline


async def test_no_lag_when_the_loop_is_free(autojump_clock: trio.testing.MockClock) -> None:
    metrics = GatewayMetrics()
    async with trio.open_nursery() as nursery:
        await nursery.start(sample_event_loop_lag, metrics, 0.5)
        await trio.sleep(5.1)
        nursery.cancel_scope.cancel()
    registry = metrics.registry
    assert registry.get_sample_value("trio_gateway_event_loop_lag_seconds_count") == 10
    assert registry.get_sample_value("trio_gateway_event_loop_lag_seconds_sum") == 0


async def test_count_tasks_sees_new_tasks() -> None:
    before = count_tasks()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(trio.sleep_forever)
        await trio.lowlevel.checkpoint()
        assert count_tasks() == before + 5
        nursery.cancel_scope.cancel()


async def test_metrics_scrape_reports_phase_backends_and_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway() as harness:
        body = bytes((await harness.request("GET", "/metrics")).body).decode()
        assert 'trio_gateway_shutdown_phase{phase="running"} 1.0' in body
        assert 'trio_gateway_shutdown_phase{phase="draining"} 0.0' in body
        assert 'trio_gateway_backend_up{backend="mock"} 1.0' in body
        assert harness.metric("trio_gateway_live_tasks") > 5
