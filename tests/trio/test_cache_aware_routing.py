"""The cache_aware policy in the router and the gateway (in-memory workers, no sockets),
sessions included (its decisions on plain candidates: tests/unit/test_cache_aware.py)."""

from __future__ import annotations

import trio
import trio.testing

from tests.support.asgi_client import running_gateway
from tests.support.fake_engine import FakeEngine
from tests.support.worker_harness import InMemoryWorker, running_worker
from trio_gateway.config import GatewayConfig
from trio_gateway.openai.schemas import parse_generation_request
from trio_gateway.router.admission import Router
from trio_gateway.router.breaker import Verdict
from trio_gateway.router.policies import CacheAware, CacheAwareOptions
from trio_gateway.router.route_key import RouteKey

BLOCK = 8

# SGLang's three steps alone (the load bound off): the bound has tests of its own.
OPTIONS = CacheAwareOptions(
    threshold=0.5, balance_abs=4, balance_rel=1.5, load_factor=0, block_chars=BLOCK, ttl_s=100.0
)


def prompt(blocks: int, tag: str = "p") -> str:
    """`blocks` full blocks, distinct per `tag` from the first block on."""
    return "".join(f"{tag}{i}".ljust(BLOCK, ".")[:BLOCK] for i in range(blocks))


def key(text: str) -> RouteKey:
    return RouteKey(text, "m")


def cache_aware_router(*names: str) -> tuple[Router, CacheAware]:
    ca = CacheAware(OPTIONS, clock=trio.current_time)
    router = Router(ca)
    for name in names:
        router.add(FakeEngine(name, capacity=None))
    return router, ca


async def test_the_router_sends_a_shared_prefix_to_one_backend() -> None:
    router, _ = cache_aware_router("a", "b", "c", "d")
    system = prompt(20, "system")
    homes = set()
    for i in range(12):
        request_key = key(system + f"user question {i}")
        backend = router.try_acquire("m", key=request_key)
        assert backend is not None
        homes.add(backend.name)
        router.release(backend, Verdict.SUCCESS)
    assert len(homes) == 1
    # Another system prompt starts elsewhere (the smallest index).
    other = router.try_acquire("m", key=key(prompt(20, "other")))
    assert other is not None and other.name not in homes


async def test_a_session_pinned_request_teaches_the_index() -> None:
    router, ca = cache_aware_router("a", "b")
    text = prompt(10, "conversation")
    pinned = router.try_acquire("m", only="b", key=key(text))
    assert pinned is not None and pinned.name == "b"
    assert ca.index.match(key(text).hashes(BLOCK)) == {"b": 10}
    router.release(pinned, Verdict.SUCCESS)
    # A request without the session with the same prefix follows it there.
    follower = router.try_acquire("m", key=key(text + " and more"))
    assert follower is not None and follower.name == "b"


async def test_a_retry_reuses_the_hashes_and_skips_the_failed_backend() -> None:
    router, ca = cache_aware_router("a", "b")
    text = prompt(10)
    request_key = key(text)
    first = router.try_acquire("m", key=request_key)
    assert first is not None
    hashes = request_key.hashes(BLOCK)
    again = router.try_acquire("m", exclude=[first.name], key=request_key)
    assert again is not None and again.name != first.name
    assert request_key.hashes(BLOCK) is hashes  # hashed once for both tries
    assert ca.index.match(hashes) == {"a": 10, "b": 10}


async def test_a_removed_backend_is_forgotten() -> None:
    router, ca = cache_aware_router("a", "b")
    text = prompt(10)
    backend = router.try_acquire("m", key=key(text))
    assert backend is not None
    router.release(backend, Verdict.SUCCESS)
    router.remove(backend)
    assert ca.index.size(backend.name) == 0


async def test_a_queued_request_is_routed_by_its_prefix(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ca = CacheAware(OPTIONS, clock=trio.current_time)
    router = Router(ca, queue_timeout=10.0)
    for name in ("a", "b"):
        router.add(FakeEngine(name, capacity=1))
    text = prompt(10)
    held_a = router.try_acquire("m", only="a", key=key(text))
    held_b = router.try_acquire("m", only="b", key=key(prompt(3, "b")))
    assert held_a is not None and held_b is not None
    got: list[str] = []

    async def queued() -> None:
        got.append((await router.acquire("m", key=key(text + " more"))).name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(queued)
        await trio.sleep(1)
        assert router.queued == 1
        router.release(held_b, Verdict.SUCCESS)  # both free up before the waiter looks again
        router.release(held_a, Verdict.SUCCESS)
    assert got == ["a"]  # where its prefix went, though b freed first


CHAT = "/v1/chat/completions"


def chat_body(system: str, user: str, **extra: object) -> dict[str, object]:
    return {
        "model": "mock",
        "max_tokens": 1,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        **extra,
    }


async def test_the_gateway_routes_cache_aware_and_learns_from_sessions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_worker("w1") as one, running_worker("w2") as two:
        workers = [
            InMemoryWorker("ws://w1", handler=one._handle),
            InMemoryWorker("ws://w2", handler=two._handle),
        ]
        config = GatewayConfig(routing_policy="cache_aware", cache_aware_block_chars=64)
        async with running_gateway(config, engines=list(workers)) as harness:
            for worker in workers:
                await worker.wait_connected()
            policy = harness.gateway.router.policy
            assert isinstance(policy, CacheAware)
            assert policy.options.block_chars == 64
            system = "You are a careful assistant. " * 40
            served = set()
            for i in range(6):
                answer = await harness.request("POST", CHAT, chat_body(system, f"q{i}"))
                assert answer.status == 200
                served.add(answer.headers[b"x-worker-id"])
            assert len(served) == 1
            (home,) = served
            other = b"w2" if home == b"w1" else b"w1"
            # A session opened on the other worker teaches the index what it was sent there.
            story = "Once upon a time, in a gateway far away. " * 40
            opened = await harness.request(
                "POST", CHAT, chat_body(story, "go on"), headers={"x-session-id": "s"}
            )
            assert opened.status == 200
            session_home = opened.headers[b"x-worker-id"]
            assert session_home == other  # the smaller index
            follower = await harness.request("POST", CHAT, chat_body(story, "and then?"))
            assert follower.headers[b"x-worker-id"] == session_home
            harness.gateway.fleet.remove_engine(session_home.decode())
            assert policy.index.size(session_home.decode()) == 0


def chat_of(messages: list[dict[str, str]]) -> RouteKey:
    """The key the gateway builds for a chat body with these messages."""
    body = {"model": "mock", "messages": messages}
    return RouteKey.of(parse_generation_request(body, "chat", "r"))


async def test_a_continuing_session_is_recorded_behind_its_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_worker("w1") as one, running_worker("w2") as two:
        servers = {b"w1": one, b"w2": two}
        workers = [
            InMemoryWorker("ws://w1", handler=one._handle),
            InMemoryWorker("ws://w2", handler=two._handle),
        ]
        config = GatewayConfig(routing_policy="cache_aware", cache_aware_block_chars=64)
        async with running_gateway(config, engines=list(workers)) as harness:
            for worker in workers:
                await worker.wait_connected()
            assert all(worker.keeps_session_history for worker in workers)  # mock workers
            policy = harness.gateway.router.policy
            assert isinstance(policy, CacheAware)
            story = "Once upon a time, in a gateway far away. " * 40
            opened = await harness.request(
                "POST", CHAT, chat_body(story, "go on"), headers={"x-session-id": "s"}
            )
            home = opened.headers[b"x-worker-id"]
            # The first request's history is empty: its plain key is what the worker caches.
            first = chat_of(
                [{"role": "system", "content": story}, {"role": "user", "content": "go on"}]
            )
            assert policy.index.match(first.hashes(64)) == {home.decode(): len(first.hashes(64))}
            turn = [{"role": "user", "content": "And what did the dragon say then? " * 30}]
            held = policy.index.size(home.decode())
            again = await harness.request(
                "POST",
                CHAT,
                {"model": "mock", "max_tokens": 1, "messages": turn},
                headers={"x-session-id": "s"},
            )
            assert again.status == 200 and again.headers[b"x-worker-id"] == home
            bare = chat_of(turn)
            # The worker ran the turn behind the session's history: it does not hold the bare
            # turn at the start of a sequence, and the index does not claim it does...
            assert servers[home].engine.prefix_cache.lookup(bare.prompt) == 0
            assert policy.index.match(bare.hashes(64)) == {}
            # ...but counts what the turn took of the worker's cache.
            assert policy.index.size(home.decode()) == held + len(bare.hashes(64))
            # So the same turn without the session is not drawn to the session's worker (by
            # step 3 it goes to the smaller index), where it would find nothing cached.
            alone = await harness.request(
                "POST", CHAT, {"model": "mock", "max_tokens": 1, "messages": turn}
            )
            assert alone.headers[b"x-worker-id"] != home


async def test_a_session_on_an_engine_without_history_is_recorded_as_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_worker("w1") as one:
        # As an OpenAI server says: a session is sticky routing, the client resends the
        # conversation, so the prompt is what the engine caches.
        one.engine.keeps_session_history = False  # type: ignore[misc]
        worker = InMemoryWorker("ws://w1", handler=one._handle)
        config = GatewayConfig(routing_policy="cache_aware", cache_aware_block_chars=64)
        async with running_gateway(config, engines=[worker]) as harness:
            await worker.wait_connected()
            assert worker.keeps_session_history is False  # told in its hello
            policy = harness.gateway.router.policy
            assert isinstance(policy, CacheAware)
            story = "Once upon a time, in a gateway far away. " * 40
            for question in ("go on", "and then?"):
                answer = await harness.request(
                    "POST", CHAT, chat_body(story, question), headers={"x-session-id": "s"}
                )
                assert answer.status == 200
                sent = chat_of(
                    [{"role": "system", "content": story}, {"role": "user", "content": question}]
                )
                assert policy.index.match(sent.hashes(64)) == {"w1": len(sent.hashes(64))}
