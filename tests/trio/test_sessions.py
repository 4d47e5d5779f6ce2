"""Sessions: the gateway's reaper on MockClock, then two in-memory workers (the table alone:
tests/unit/test_session_table.py)."""

from __future__ import annotations

import trio
import trio.testing

from tests.support.asgi_client import Harness, running_gateway
from tests.support.bodies import chat
from tests.support.worker_harness import InMemoryWorker, gateway_on_worker, running_worker
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock import MockEngine

CHAT = "/v1/chat/completions"


def mock_of(harness: Harness) -> MockEngine:
    engine = harness.gateway.router.backends[0].engine
    assert isinstance(engine, MockEngine)
    return engine


def closed(harness: Harness, reason: str) -> float:
    return harness.metric("trio_gateway_sessions_closed_total", reason=reason)


async def test_a_session_continues_and_expires_exactly_at_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway() as harness:
        first = await harness.request(
            "POST", CHAT, chat("hi", max_tokens=5, session_id="s1", session_timeout=10)
        )
        assert first.status == 200
        assert "s1" in mock_of(harness).sessions
        assert harness.metric("trio_gateway_sessions_active") == 1
        second = await harness.request("POST", CHAT, chat("hi", max_tokens=5, session_id="s1"))
        ended_at = trio.current_time()  # the session's last use: it expires 10 s after
        fresh = await harness.request("POST", CHAT, chat("hi", max_tokens=5))
        # The session's history seeds its answers: the same prompt continues differently.
        assert (
            second.json()["choices"][0]["message"]["content"]
            != (fresh.json()["choices"][0]["message"]["content"])
        )
        await trio.sleep_until(ended_at + 9.999)
        assert "s1" in mock_of(harness).sessions
        await trio.sleep_until(ended_at + 10.001)
        assert "s1" not in mock_of(harness).sessions
        assert closed(harness, "expired") == 1
        assert harness.metric("trio_gateway_sessions_active") == 0


async def test_a_request_in_flight_postpones_expiry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway() as harness:
        long = harness.start(
            "POST",
            CHAT,
            chat(
                stream=True, mock={"tokens": 30, "itl_ms": 1000}, session_id="s", session_timeout=5
            ),
        )
        await long.finished.wait()  # 30 s, far past the 5 s timeout
        assert "s" in mock_of(harness).sessions
        await trio.sleep(4.9)
        assert "s" in mock_of(harness).sessions
        await trio.sleep(0.2)
        assert "s" not in mock_of(harness).sessions


async def test_many_sessions_expire_in_order(autojump_clock: trio.testing.MockClock) -> None:
    async with running_gateway() as harness:
        ends = {}
        for name, timeout in [("a", 30), ("b", 10), ("c", 20)]:
            await harness.request(
                "POST", CHAT, chat(max_tokens=1, session_id=name, session_timeout=timeout)
            )
            ends[name] = trio.current_time() + timeout
        open_at = []
        for moment in sorted(ends.values()):
            await trio.sleep_until(moment - 0.001)
            open_at.append(sorted(mock_of(harness).sessions))
        await trio.sleep(0.002)
        assert open_at == [["a", "b", "c"], ["a", "c"], ["a"]]
        assert mock_of(harness).sessions == {}


async def test_delete_closes_now_or_after_the_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway() as harness:
        await harness.request("POST", CHAT, chat(max_tokens=1, session_id="idle"))
        deleted = await harness.request("DELETE", "/v1/sessions/idle")
        assert deleted.status == 200 and deleted.json()["closed"] is True
        await trio.sleep(0.1)
        assert "idle" not in mock_of(harness).sessions
        busy = harness.start(
            "POST", CHAT, chat(stream=True, mock={"tokens": 20, "itl_ms": 100}, session_id="busy")
        )
        await busy.wait_until(lambda e: len(e.tokens()) >= 2)
        pending = await harness.request("DELETE", "/v1/sessions/busy")
        assert pending.status == 202
        assert "busy" in mock_of(harness).sessions
        await busy.finished.wait()
        assert busy.events()[-1] == "[DONE]"
        await trio.sleep(0.1)
        assert "busy" not in mock_of(harness).sessions
        assert closed(harness, "explicit") == 2
        assert (await harness.request("DELETE", "/v1/sessions/nope")).status == 404


async def test_shutdown_closes_open_sessions(autojump_clock: trio.testing.MockClock) -> None:
    async with running_gateway() as harness:
        await harness.request("POST", CHAT, chat(max_tokens=1, session_id="x"))
        harness.gateway.shutdown.request_stop("test")
        await harness.gateway.shutdown.wait_stopped()
        assert mock_of(harness).sessions == {}
        assert closed(harness, "shutdown") == 1
        refused = await harness.request("POST", CHAT, chat(session_id="y"))
        assert refused.status == 503


async def test_sticky_on_one_of_two_workers_and_closed_there(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_worker("w1") as one, running_worker("w2") as two:
        workers = [
            InMemoryWorker("ws://w1", handler=one._handle),
            InMemoryWorker("ws://w2", handler=two._handle),
        ]
        async with running_gateway(GatewayConfig(), engines=list(workers)) as harness:
            for worker in workers:
                await worker.wait_connected()
            served = {
                (
                    await harness.request(
                        "POST", CHAT, chat(max_tokens=1), headers={"x-session-id": "conv"}
                    )
                ).headers[b"x-worker-id"]
                for _ in range(12)
            }
            assert len(served) == 1
            home = one if served == {b"w1"} else two
            other = two if home is one else one
            assert len(home.sessions) == 1 and len(other.sessions) == 0
            gauge = home.metrics.registry.get_sample_value(
                "trio_gateway_worker_sessions_active", {}
            )
            assert gauge == 1
            assert (await harness.request("DELETE", "/v1/sessions/conv")).status == 200
            await trio.sleep(0.5)
            assert len(home.sessions) == 0


async def test_a_lost_worker_loses_its_sessions_unless_affinity_is_soft(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for affinity in ("hard", "soft"):
        async with running_worker("w1") as one, running_worker("w2") as two:
            workers = [
                InMemoryWorker("ws://w1", handler=one._handle),
                InMemoryWorker("ws://w2", handler=two._handle),
            ]
            config = GatewayConfig(session_affinity=affinity)
            async with running_gateway(config, engines=list(workers)) as harness:
                for worker in workers:
                    await worker.wait_connected()
                first = await harness.request("POST", CHAT, chat(max_tokens=1, session_id="c"))
                home = first.headers[b"x-worker-id"]
                lost = workers[0] if home == b"w1" else workers[1]
                lost.refuse = True
                lost.kill()
                await trio.sleep(1)
                again = await harness.request("POST", CHAT, chat(max_tokens=1, session_id="c"))
                if affinity == "hard":
                    assert again.status == 503
                    assert again.json()["error"]["type"] == "session_lost"
                else:
                    assert again.status == 200
                    assert again.headers[b"x-worker-id"] != home
                assert closed(harness, "worker_lost") == 1


async def test_the_worker_expires_its_copy_after_the_gateways_timeout_and_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trio_gateway.sessions.manager import WORKER_GRACE_S

    async with gateway_on_worker() as (harness, server, _worker):
        await harness.request(
            "POST", CHAT, chat(max_tokens=1, session_id="orphan", session_timeout=10)
        )
        used_at = trio.current_time()
        engine = server.engine
        assert isinstance(engine, MockEngine) and "orphan" in engine.sessions
        # The gateway forgets the worker (as if the gateway died): nobody closes it.
        harness.gateway.fleet.remove_engine("w1")
        await trio.sleep_until(used_at + 10 + WORKER_GRACE_S - 0.01)
        assert "orphan" in engine.sessions
        await trio.sleep_until(used_at + 10 + WORKER_GRACE_S + 0.01)
        assert "orphan" not in engine.sessions
        assert len(server.sessions) == 0
        gauge = server.metrics.registry.get_sample_value("trio_gateway_worker_sessions_active", {})
        assert gauge == 0
