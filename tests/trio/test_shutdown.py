"""Shutdown: the whole drain on MockClock through the app (the phase machine alone:
tests/unit/test_shutdown_phases.py)."""

from __future__ import annotations

import orjson
import pytest
import trio

from tests.support.asgi_client import running_gateway
from tests.support.bodies import chat
from trio_gateway.config import GatewayConfig
from trio_gateway.lifecycle.shutdown import Phase

CHAT = "/v1/chat/completions"


def stream(tokens: int, itl_ms: float = 100) -> dict[str, object]:
    return chat(stream=True, mock={"tokens": tokens, "itl_ms": itl_ms})


async def test_streams_shorter_than_the_deadline_finish_intact(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(GatewayConfig(drain_timeout_s=10)) as harness:
        streams = [harness.start("POST", CHAT, stream(30)) for _ in range(5)]  # 3 s each
        await streams[0].wait_until(lambda e: len(e.tokens()) >= 2)
        harness.gateway.shutdown.request_stop("test")
        await harness.gateway.shutdown.wait_stopped()
        assert trio.current_time() < 4
        for exchange in streams:
            await exchange.finished.wait()
            assert len(exchange.tokens()) == 30
            assert exchange.events()[-1] == "[DONE]"
            assert all("error" not in orjson.loads(e) for e in exchange.events()[:-1])
        assert harness.gateway.shutdown.cut == 0


async def test_streams_longer_than_the_deadline_are_cut_with_a_frame_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(GatewayConfig(drain_timeout_s=2)) as harness:
        short = harness.start("POST", CHAT, stream(10))  # 1 s
        long = [harness.start("POST", CHAT, stream(1000)) for _ in range(3)]  # 100 s
        unary = harness.start("POST", CHAT, chat(mock={"tokens": 1000, "itl_ms": 100}))
        await long[0].wait_until(lambda e: len(e.tokens()) >= 1)
        started = trio.current_time()
        harness.gateway.shutdown.request_stop("test")
        await harness.gateway.shutdown.wait_stopped()
        assert trio.current_time() - started == pytest.approx(2, abs=0.01)
        assert harness.gateway.shutdown.cut == 4
        assert short.events()[-1] == "[DONE]" and len(short.tokens()) == 10
        for exchange in long:
            await exchange.finished.wait()
            events = exchange.events()
            assert events[-1] == "[DONE]"
            assert orjson.loads(events[-2])["error"]["type"] == "shutdown"
        await unary.finished.wait()
        assert unary.status == 503
        assert unary.json()["error"]["type"] == "shutdown"
        assert len(harness.gateway.ledger) == 0
        assert harness.metric("trio_gateway_inflight_requests", model="mock") == 0
        assert harness.metric("trio_gateway_cancellations_total", reason="shutdown") == 4


async def test_new_requests_during_the_drain_get_503_and_readiness_flips(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(GatewayConfig(drain_timeout_s=30)) as harness:
        assert (await harness.request("GET", "/ready")).status == 200
        running = harness.start("POST", CHAT, stream(50))
        await running.wait_until(lambda e: len(e.tokens()) >= 1)
        harness.gateway.shutdown.request_stop("test")
        refused = await harness.request("POST", CHAT, chat())
        assert refused.status == 503
        assert refused.headers[b"retry-after"] == b"5"
        assert refused.json()["error"]["type"] == "unavailable"
        ready = await harness.request("GET", "/ready")
        assert ready.status == 503
        assert ready.json()["phase"] == "draining"
        assert (await harness.request("GET", "/live")).status == 200
        await running.finished.wait()
        assert running.events()[-1] == "[DONE]"
        assert len(running.tokens()) == 50


async def test_drain_delay_takes_requests_while_not_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(GatewayConfig(drain_delay_s=5, drain_timeout_s=10)) as harness:
        harness.gateway.shutdown.request_stop("SIGTERM")
        assert (await harness.request("GET", "/ready")).status == 503
        during = await harness.request("POST", CHAT, chat(max_tokens=2))
        assert during.status == 200  # the load balancer has not caught up yet: served
        await trio.sleep(5)
        after = await harness.request("POST", CHAT, chat(max_tokens=2))
        assert after.status == 503
        await harness.gateway.shutdown.wait_stopped()
        assert trio.current_time() < 5.5


async def test_a_second_trigger_cuts_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with running_gateway(GatewayConfig(drain_timeout_s=30)) as harness:
        long = harness.start("POST", CHAT, stream(1000))
        await long.wait_until(lambda e: len(e.tokens()) >= 1)
        harness.gateway.shutdown.request_stop("SIGTERM")
        await trio.sleep(1)
        harness.gateway.shutdown.request_stop("SIGTERM")
        await harness.gateway.shutdown.wait_stopped()
        assert trio.current_time() < 1.5
        await long.finished.wait()
        assert orjson.loads(long.events()[-2])["error"]["type"] == "shutdown"


async def test_drain_with_nothing_in_flight_stops_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway() as harness:
        harness.gateway.shutdown.request_stop("test")
        await harness.gateway.shutdown.wait_stopped()
        assert trio.current_time() == 0


async def test_admin_drain_endpoint_and_wait(autojump_clock: trio.testing.MockClock) -> None:
    async with running_gateway(GatewayConfig(drain_timeout_s=30)) as harness:
        running = harness.start("POST", CHAT, stream(20))
        await running.wait_until(lambda e: len(e.tokens()) >= 1)
        response = await harness.request("POST", "/admin/drain?wait=true")
        assert response.status == 200  # answered once nothing was left in flight
        assert response.json()["phase"] == "stopped"
        assert running.events()[-1] == "[DONE]"


async def test_admin_needs_the_token_or_loopback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(GatewayConfig(admin_token="s3cret")) as harness:
        denied = await harness.request("POST", "/admin/drain")
        assert denied.status == 401
        allowed = await harness.request(
            "POST", "/admin/drain", headers={"authorization": "Bearer s3cret"}
        )
        assert allowed.status == 202
        assert allowed.json()["phase"] == "draining"
    async with running_gateway() as harness:
        remote = await harness.request("POST", "/admin/drain", client=("10.1.2.3", 5000))
        assert remote.status == 403
        assert harness.gateway.shutdown.phase is Phase.RUNNING


async def test_api_keys_guard_v1(autojump_clock: trio.testing.MockClock) -> None:
    async with running_gateway(GatewayConfig(api_keys=("k1", "k2"))) as harness:
        missing = await harness.request("POST", CHAT, chat(max_tokens=1))
        assert missing.status == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        wrong = await harness.request(
            "POST", CHAT, chat(max_tokens=1), headers={"authorization": "Bearer nope"}
        )
        assert wrong.status == 401
        assert b"nope" not in bytes(wrong.body)
        ok = await harness.request(
            "POST", CHAT, chat(max_tokens=1), headers={"authorization": "Bearer k2"}
        )
        assert ok.status == 200
        assert (await harness.request("GET", "/v1/models")).status == 401
        models = await harness.request("GET", "/v1/models", headers={"authorization": "Bearer k1"})
        assert models.status == 200
        assert (await harness.request("GET", "/health")).status == 200  # probes stay open
