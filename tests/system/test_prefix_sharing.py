"""Replicas tell each other what they routed, through one real redis-server (bounded waits,
loopback only); the record codec and the throttle: tests/unit/test_prefix_sharing_records.py."""

from __future__ import annotations

import trio

from tests.support.asgi_client import running_gateway
from tests.support.bodies import chat
from tests.support.ports import refused_port
from tests.support.worker_harness import InMemoryWorker, running_worker
from trio_gateway.config import GatewayConfig
from trio_gateway.router.prefix_sharing import (
    PrefixSharing,
)

CHAT = "/v1/chat/completions"


async def test_two_replicas_learn_what_the_other_routed(redis_url: str) -> None:
    learned: dict[str, list[tuple[str, list[int]]]] = {"a": [], "b": [], "late": []}
    heard = {name: trio.Event() for name in learned}

    def sharing(name: str, records: int = 1) -> PrefixSharing:
        def apply(backend: str, hashes: list[int], now: float) -> None:
            learned[name].append((backend, hashes))
            if len(learned[name]) >= records:
                heard[name].set()

        return PrefixSharing(redis_url, apply, knows=lambda backend: backend != "unknown")

    a, b = sharing("a"), sharing("b")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        a.publish("w1", [11, 12, 13])
        a.publish("unknown", [5])
        b.publish("w2", [21])
        with trio.fail_after(5):
            await heard["a"].wait()
            await heard["b"].wait()
        # A replica that starts later catches up on what was said before it.
        await nursery.start(sharing("late", records=2).run)
        with trio.fail_after(5):
            await heard["late"].wait()
        nursery.cancel_scope.cancel()
    assert learned["b"] == [("w1", [11, 12, 13])]  # not its own, not an unknown backend's
    assert learned["a"] == [("w2", [21])]
    assert sorted(learned["late"]) == [("w1", [11, 12, 13]), ("w2", [21])]


async def test_no_redis_leaves_routing_alone_and_counts_errors() -> None:
    errors: list[None] = []
    failing = trio.Event()
    applied: list[tuple[str, list[int], float]] = []

    def on_error() -> None:
        errors.append(None)
        if len(errors) >= 2:
            failing.set()

    def apply(backend: str, hashes: list[int], now: float) -> None:
        applied.append((backend, hashes, now))

    with refused_port() as port:
        sharing = PrefixSharing(
            f"redis://127.0.0.1:{port}/0", apply=apply, knows=bool, on_error=on_error
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(sharing.run)
            sharing.publish("w1", [1])  # no I/O, never raises
            with trio.fail_after(5):
                await failing.wait()
            nursery.cancel_scope.cancel()
    assert applied == []  # routing learned nothing from a Redis it never reached
    assert sharing.received == 0
    assert sharing.sent == 0


async def test_two_cache_aware_replicas_send_a_prefix_to_the_same_worker(redis_url: str) -> None:
    async with running_worker("w1") as one, running_worker("w2") as two:
        config = GatewayConfig(session_store=redis_url, routing_policy="cache_aware")
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
            b_sharing = b.gateway.prefix_sharing
            assert b_sharing is not None
            with trio.fail_after(10):
                for workers in replica_workers:
                    for worker in workers:
                        await worker.wait_connected()
                prompts = [f"system prompt {i}: " + "lorem ipsum " * 400 for i in range(4)]
                homes = []
                for prompt in prompts:
                    answer = await a.request("POST", CHAT, chat(prompt, max_tokens=1))
                    homes.append(answer.headers[b"x-worker-id"])
                while b_sharing.received < len(prompts):  # noqa: ASYNC110 - a counter, bounded
                    await trio.sleep(0.01)
                # In the other order: on its own picture, b would place them the other way.
                served_by_b = []
                for prompt in reversed(prompts):
                    answer = await b.request("POST", CHAT, chat(prompt + " more", max_tokens=1))
                    served_by_b.append(answer.headers[b"x-worker-id"])
    assert served_by_b == homes[::-1]
    assert len(set(homes)) == 2  # the prefixes were spread (smallest index first), not herded
