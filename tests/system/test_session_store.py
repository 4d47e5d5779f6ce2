"""Two gateway replicas sharing one redis-server route a session to the same worker; a
Redis outage leaves requests working. Real clock, loopback only, every wait bounded.

redis-server comes from the system (Debian's package; `.ci/run` installs it). Without it these
tests skip, unless TRIO_GATEWAY_REQUIRE_REDIS=1 (as in CI), which makes its absence a failure.
"""

from __future__ import annotations

import socket

import trio

from tests.support.asgi_client import running_gateway
from tests.support.bodies import chat
from tests.support.redis_server import start_redis
from tests.support.worker_harness import InMemoryWorker, running_worker
from trio_gateway.config import GatewayConfig
from trio_gateway.sessions.store import RedisSessionStore

CHAT = "/v1/chat/completions"


async def test_a_password_in_the_url_is_used_and_never_shown() -> None:
    process, port = start_redis("--requirepass", "s3cret")
    try:
        store = RedisSessionStore(f"redis://:s3cret@127.0.0.1:{port}/0")
        assert "s3cret" not in store.url
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            with trio.fail_after(5):
                await store.record("s", "w1", 10)
                assert await store.lookup("s") == "w1"
                assert await store.fresh("s")
            nursery.cancel_scope.cancel()
        wrong = RedisSessionStore(f"redis://:nope@127.0.0.1:{port}/0")
        async with trio.open_nursery() as nursery:
            await nursery.start(wrong.run)
            with trio.fail_after(5):
                assert await wrong.lookup("s") is None  # refused: degraded, not raised
            nursery.cancel_scope.cancel()
    finally:
        process.terminate()
        process.wait(5)


async def test_two_replicas_route_a_session_to_the_same_worker(redis_url: str) -> None:
    async with running_worker("w1") as one, running_worker("w2") as two:
        config = GatewayConfig(session_store=redis_url)
        replica_workers = [
            [
                InMemoryWorker("ws://w1", handler=one._handle),
                InMemoryWorker("ws://w2", handler=two._handle),
            ]
            for _ in range(2)
        ]
        async with (
            running_gateway(config, engines=list(replica_workers[0])) as a,
            running_gateway(config, engines=list(replica_workers[1])) as b,
        ):
            with trio.fail_after(10):
                for workers in replica_workers:
                    for worker in workers:
                        await worker.wait_connected()
                first = await a.request("POST", CHAT, chat(max_tokens=1, session_id="shared"))
                home = first.headers[b"x-worker-id"]
                served_by_b = {
                    (
                        await b.request("POST", CHAT, chat(max_tokens=1, session_id="shared"))
                    ).headers[b"x-worker-id"]
                    for _ in range(8)
                }
            assert served_by_b == {home}
            # b adopted the session: it never opened a second one on a worker.
            assert len(one.sessions) + len(two.sessions) == 1
            assert a.metric("trio_gateway_sessions_opened_total") == 1
            assert b.metric("trio_gateway_sessions_opened_total") == 0


async def test_a_redis_outage_does_not_take_requests_down() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    config = GatewayConfig(session_store=f"redis://127.0.0.1:{dead}/0")
    async with running_gateway(config) as gateway:
        with trio.fail_after(10):
            responses = [
                await gateway.request("POST", CHAT, chat(max_tokens=2, session_id="s"))
                for _ in range(3)
            ]
        assert [r.status for r in responses] == [200, 200, 200]
        # Sticky within this replica, counted as store errors.
        assert gateway.metric("trio_gateway_sessions_opened_total") == 1
        assert gateway.metric("trio_gateway_session_store_errors_total") >= 1
