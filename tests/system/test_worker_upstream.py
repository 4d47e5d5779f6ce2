"""`trio-gateway worker --upstream`: a real engine's server behind the WebSocket plane.

The worker hosts an OpenAI-compatible upstream (tests/upstream_server on a loopback socket);
the gateway reaches it over an in-memory WebSocket. What must hold is what holds for the
mock: the upstream's own answer reaches the client, the gateway's cancel reaches the engine
(the worker closes that upstream request), credits hold back a reader that stops, sessions
open and close. Every wait is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from tests.support.asgi_client import Harness, running_gateway
from tests.support.upstream_server import MockUpstream, expected_text, running_upstream
from tests.support.worker_harness import InMemoryWorker
from trio_gateway.config import WorkerConfig
from trio_gateway.engines.upstream.engine import OpenAIUpstream
from trio_gateway.generation import Chunk
from trio_gateway.openai.schemas import parse_generation_request
from trio_gateway.openai.sse import completion_text
from trio_gateway.worker.server import WorkerServer

CHAT = "/v1/chat/completions"


@asynccontextmanager
async def worker_over(upstream: MockUpstream, **settings: object) -> AsyncIterator[WorkerServer]:
    server = WorkerServer(WorkerConfig(worker_id="w1", upstream=upstream.url, **settings))  # type: ignore[arg-type]
    assert isinstance(server.engine, OpenAIUpstream)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.engine.run)
        await nursery.start(server.shutdown.run)
        nursery.start_soon(server.sessions.reap)
        await server.engine.wait_probes(1)
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def gateway_on_upstream_worker(
    **upstream_settings: object,
) -> AsyncIterator[tuple[Harness, WorkerServer, InMemoryWorker, MockUpstream]]:
    async with (
        running_upstream(graceful_timeout=0.2, **upstream_settings) as upstream,  # type: ignore[arg-type]
        worker_over(upstream) as server,
    ):
        worker = InMemoryWorker("ws://w1", handler=server._handle, window=4)
        async with running_gateway(engines=[worker]) as harness:
            await worker.wait_connected()
            yield harness, server, worker, upstream


def ask(model: str = "up-a", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello there world"}], **extra}


async def test_the_worker_says_what_its_engine_serves() -> None:
    with trio.fail_after(10):
        async with gateway_on_upstream_worker(models=["up-a", "slow"]) as (_, _, worker, _):
            assert worker.models == ("up-a", "slow")
            assert worker.streams_unary is False  # its unary answers come whole


async def test_stream_and_unary_are_the_upstreams_own() -> None:
    with trio.fail_after(10):
        async with gateway_on_upstream_worker() as (harness, server, _, upstream):
            stream = await harness.request("POST", CHAT, ask(stream=True, max_tokens=3))
            unary = await harness.request("POST", CHAT, ask(max_tokens=3))
    assert "".join(stream.tokens()) == expected_text(3)
    assert stream.events()[-1] == "[DONE]"
    assert unary.body == upstream.generations[1].answer
    assert upstream.generations[0].body["stream"] is True
    assert upstream.generations[1].body["stream"] is False
    assert len(server.ledger) == 0


async def test_upstream_errors_keep_their_class() -> None:
    with trio.fail_after(10):
        async with gateway_on_upstream_worker(models=["up-a", "fail-400", "inband-error"]) as (
            harness,
            _,
            worker,
            _,
        ):
            bad = await harness.request("POST", CHAT, ask("fail-400", stream=True))
            broken = await harness.request("POST", CHAT, ask("inband-error", stream=True))
            assert worker.available
    assert bad.status == 400
    assert bad.json()["error"]["message"] == "upstream says 400"
    assert broken.status == 200
    assert broken.events()[-1] == "[DONE]"
    assert "out of KV cache" in broken.events()[-2]


async def test_a_client_that_leaves_closes_the_upstream_request() -> None:
    with trio.fail_after(10):
        async with gateway_on_upstream_worker(models=["up-a", "slow"]) as (
            harness,
            server,
            _,
            upstream,
        ):
            exchange = harness.start("POST", CHAT, ask("slow", stream=True))
            await exchange.wait_until(lambda e: len(e.tokens()) >= 2)
            exchange.disconnect()
            await exchange.finished.wait()
            await upstream.wait_until(lambda: upstream.generations[-1].disconnected)
            await server.ledger.wait_empty()
    record = upstream.generations[-1]
    assert not record.finished
    assert record.events_sent < 20  # of 202


async def test_credits_hold_back_the_upstream_for_a_reader_that_stops() -> None:
    with trio.fail_after(30):
        async with gateway_on_upstream_worker(models=["flood"]) as (_, server, worker, upstream):
            send, receive = trio.open_memory_channel[Chunk](1)
            body = ask("flood", stream=True, max_tokens=1000)
            request = parse_generation_request(body, "chat", "r1")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.generate, request, send)
                await upstream.wait_until(lambda: bool(upstream.generations))
                await trio.testing.wait_all_tasks_blocked(cushion=0.1)
                record = upstream.generations[0]
                # 64 KiB tokens: the window (4), the channels and the socket buffers hold a
                # few dozen, not a thousand.
                assert record.events_sent < 200
                assert not record.finished
                text = 0
                while True:
                    chunk = await receive.receive()
                    text += len(completion_text(chunk.payload))
                    if chunk.finish_reason is not None:
                        break
    assert record.finished
    assert text == 1000 * 64 * 1024
    assert len(server.ledger) == 0


async def test_sessions_open_and_close_on_the_worker() -> None:
    with trio.fail_after(10):
        async with gateway_on_upstream_worker() as (harness, server, _, upstream):
            first = await harness.request("POST", CHAT, ask(max_tokens=2, session_id="s1"))
            assert first.status == 200
            assert server.sessions.get("s1") is not None
            second = await harness.request("POST", CHAT, ask(max_tokens=2, session_id="s1"))
            assert second.headers[b"x-worker-id"] == first.headers[b"x-worker-id"]
            await harness.gateway.sessions.close_all("test")
            assert server.sessions.get("s1") is None
    # The session's fields are the gateway's: the upstream never sees them.
    assert all("session_id" not in r.body for r in upstream.generations)
