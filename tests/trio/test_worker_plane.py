"""The WebSocket request plane end to end, in memory, on MockClock: gateway ⇄ worker."""

from __future__ import annotations

import orjson
import trio
import trio.testing

from tests.support.asgi_client import running_gateway
from tests.support.bodies import chat
from tests.support.worker_harness import InMemoryWorker, gateway_on_worker, running_worker
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.generation import Chunk, GenerationRequest
from trio_gateway.openai.schemas import parse_generation_request
from trio_gateway.plane.codec import encode
from trio_gateway.plane.frames import PROTOCOL_VERSION, ChunkFrame, Generate, Hello

CHAT = "/v1/chat/completions"


def request(tokens: int = 50, rid: str = "r1", **mock: float) -> GenerationRequest:
    body = chat("hi", stream=True, mock={"tokens": tokens, **mock})
    return parse_generation_request(body, "chat", rid)


async def test_stream_through_a_worker(autojump_clock: trio.testing.MockClock) -> None:
    async with gateway_on_worker() as (harness, server, worker):
        assert worker.name == "w1" and worker.models == ("mock",)
        exchange = await harness.request("POST", CHAT, chat(stream=True, max_tokens=20))
        assert exchange.headers[b"x-worker-id"] == b"w1"
        assert len(exchange.tokens()) == 20
        assert exchange.events()[-1] == "[DONE]"
        unary = await harness.request("POST", CHAT, chat(max_tokens=5))
        assert unary.json()["usage"]["completion_tokens"] == 5
        assert unary.headers[b"x-worker-id"] == b"w1"
        assert len(server.ledger) == 0


async def test_a_reader_that_stops_stops_the_remote_engine_after_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_worker("w1") as server:
        worker = InMemoryWorker("ws://w1", handler=server._handle, window=4)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await worker.wait_connected()
            send, receive = trio.open_memory_channel[Chunk](1)
            nursery.start_soon(worker.generate, request(tokens=1000), send)
            await trio.sleep(5)  # 500 steps' worth of time
            engine = server.engine
            assert isinstance(engine, MockEngine)
            paused_at = engine.scheduler.running[0].generated
            # The gateway's channel (1) + in transit (window 4, credit every 2) + the
            # worker's local channel (4): a few chunks, not 500.
            assert paused_at <= 1 + 4 + 4 + 1
            await trio.sleep(5)
            assert engine.scheduler.running[0].generated == paused_at
            received = [await receive.receive()]
            while received[-1].finish_reason is None:
                received.append(await receive.receive())
            assert len(received) == 1000
            assert received[-1].finish_reason is not None
            nursery.cancel_scope.cancel()


async def test_client_disconnect_cancels_on_the_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway_on_worker() as (harness, server, _worker):
        exchange = harness.start("POST", CHAT, chat(stream=True, mock={"tokens": 1000}))
        await exchange.wait_until(lambda e: len(e.tokens()) >= 3)
        assert len(server.ledger) == 1
        exchange.disconnect()
        await exchange.finished.wait()
        with trio.fail_after(1):
            await server.ledger.wait_empty()
        engine = server.engine
        assert isinstance(engine, MockEngine) and engine.active == 0
        value = server.metrics.registry.get_sample_value(
            "trio_gateway_worker_cancellations_total", {"reason": "client_disconnected"}
        )
        assert value == 1
        assert harness.metric("trio_gateway_inflight_requests", model="mock") == 0


async def test_worker_lost_mid_stream_ends_streams_with_a_frame_and_quarantines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway_on_worker() as (harness, _server, worker):
        streams = [
            harness.start("POST", CHAT, chat(stream=True, mock={"tokens": 1000})) for _ in range(3)
        ]
        for exchange in streams:
            await exchange.wait_until(lambda e: len(e.tokens()) >= 2)
        worker.refuse = True
        lost_at = trio.current_time()
        worker.kill()
        for exchange in streams:
            await exchange.finished.wait()
            events = exchange.events()
            assert events[-1] == "[DONE]"
            assert orjson.loads(events[-2])["error"]["type"] == "unavailable"
        assert trio.current_time() - lost_at < 1
        assert not worker.available
        assert harness.metric("trio_gateway_inflight_requests", model="mock") == 0
        refused = await harness.request("POST", CHAT, chat())
        assert refused.status == 503
        worker.refuse = False  # the worker is back: it says hello again
        await worker.wait_connected()
        assert worker.connections == 2
        again = await harness.request("POST", CHAT, chat(max_tokens=3))
        assert again.status == 200


async def test_a_request_refused_before_its_first_chunk_is_retried_elsewhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_worker("w1") as first, running_worker("w2") as second:
        draining = InMemoryWorker("ws://w1", handler=first._handle)
        healthy = InMemoryWorker("ws://w2", handler=second._handle)
        config = GatewayConfig(routing_policy="round_robin")
        async with running_gateway(config, engines=[draining, healthy]) as harness:
            await draining.wait_connected()
            await healthy.wait_connected()
            first.shutdown.request_stop("test")  # w1 now answers 503 to new work
            for _ in range(4):
                exchange = await harness.request("POST", CHAT, chat(stream=True, max_tokens=3))
                assert exchange.status == 200
                assert exchange.headers[b"x-worker-id"] == b"w2"
                assert len(exchange.tokens()) == 3


async def test_worker_errors_and_bad_frames_fail_only_their_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def fake_worker(request: object) -> None:
        ws = await request.accept()  # type: ignore[attr-defined]
        await ws.send_message(encode(Hello("fake", ("mock",), 10, PROTOCOL_VERSION)))
        while True:
            frame = orjson.loads(await ws.get_message())
            if frame["type"] != "generate":
                continue
            rid = frame["id"]
            if frame["request"]["body"]["messages"][0]["content"] == "garbage":
                await ws.send_message(orjson.dumps({"type": "chunk", "id": rid}).decode())
            else:
                event = {"choices": [{"index": 0, "delta": {"content": "ok"}}]}
                payload = "data: " + orjson.dumps(event).decode() + "\n\n"
                await ws.send_message(encode(ChunkFrame(rid, payload, 1, "stop", 1)))

    worker = InMemoryWorker("ws://fake", handler=fake_worker)
    async with running_gateway(engines=[worker]) as harness:
        await worker.wait_connected()
        bad = await harness.request("POST", CHAT, chat("garbage", stream=True))
        assert bad.status == 503  # failed before any chunk
        assert "bad frame" in bad.json()["error"]["message"]
        good = await harness.request("POST", CHAT, chat("fine", stream=True))
        assert good.tokens() == ["ok"]
        assert worker.available  # the connection survived


async def test_engine_error_on_the_worker_is_an_error_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway_on_worker() as (harness, _server, _worker):
        exchange = await harness.request("POST", CHAT, chat(stream=True, mock={"error_after": 3}))
        assert len(exchange.tokens()) == 3
        assert orjson.loads(exchange.events()[-2])["error"]["type"] == "internal_error", (
            exchange.events()[-2]
        )


async def test_wrong_token_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with running_worker("w1", token="right") as server:
        worker = InMemoryWorker("ws://w1", handler=server._handle, token="wrong")
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await trio.sleep(3)
            assert not worker.available and worker.connections == 0
            worker.token = "right"
            await worker.wait_connected()
            assert worker.connections == 1
            nursery.cancel_scope.cancel()


async def test_stalled_worker_hits_the_inactivity_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = GatewayConfig(inactivity_timeout_s=5)
    async with gateway_on_worker(config) as (harness, server, _worker):
        exchange = await harness.request("POST", CHAT, chat(stream=True, mock={"stall_after": 2}))
        assert orjson.loads(exchange.events()[-2])["error"]["type"] == "response_timeout"
        with trio.fail_after(1):
            await server.ledger.wait_empty()  # the cancel reached the worker


async def test_worker_drain_finishes_its_streams_then_cuts_with_a_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_worker("w1", drain_timeout_s=2) as server:
        worker = InMemoryWorker("ws://w1", handler=server._handle)
        async with running_gateway(engines=[worker]) as harness:
            await worker.wait_connected()
            short = harness.start("POST", CHAT, chat(stream=True, mock={"tokens": 10}))
            long = harness.start("POST", CHAT, chat(stream=True, mock={"tokens": 1000}))
            await long.wait_until(lambda e: len(e.tokens()) >= 1)
            server.shutdown.request_stop("SIGTERM")
            await server.shutdown.wait_stopped()
            await short.finished.wait()
            await long.finished.wait()
            assert short.events()[-1] == "[DONE]" and len(short.tokens()) == 10
            assert orjson.loads(long.events()[-2])["error"]["type"] == "unavailable"
            assert long.events()[-1] == "[DONE]"
            assert len(server.ledger) == 0


async def test_a_gateway_vanishing_mid_stream_does_not_take_the_worker_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trio_websocket import wrap_client_stream, wrap_server_stream

    async with running_worker("w1") as server:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        handled = trio.Event()
        async with trio.open_nursery() as nursery:

            async def worker_side() -> None:
                ws_request = await wrap_server_stream(nursery, server_stream)
                await server._handle(ws_request)  # must return, whatever the gateway did
                handled.set()

            nursery.start_soon(worker_side)
            ws = await wrap_client_stream(nursery, client_stream, "w1", "/")  # type: ignore[arg-type]
            await ws.get_message()  # hello
            await ws.send_message(encode(Generate("g1", request(tokens=1000), 4)))
            await ws.get_message()  # the first chunk: it is generating
            await trio.aclose_forcefully(client_stream)  # the gateway vanishes
            with trio.fail_after(5):
                await handled.wait()
            assert len(server.ledger) == 0
            nursery.cancel_scope.cancel()


async def test_backend_up_keeps_one_series_per_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Labelled by URL, so a worker's hello (which renames it to its id) does not leave a
    series behind at 0; a worker removed over the admin API takes its series with it."""
    async with running_worker("w1") as server:
        worker = InMemoryWorker("ws://w1", handler=server._handle)
        async with running_gateway(engines=[worker]) as harness:
            harness.gateway.refresh_gauges()  # before the hello
            assert harness.metric("trio_gateway_backend_up", backend="ws://w1") == 0
            await worker.wait_connected()
            assert worker.name == "w1"
            body = bytes((await harness.request("GET", "/metrics")).body).decode()
            ups = [line for line in body.splitlines() if line.startswith("trio_gateway_backend_up")]
            assert ups == ['trio_gateway_backend_up{backend="ws://w1"} 1.0']
            assert (await harness.request("DELETE", "/admin/workers/w1")).status == 200
            body = bytes((await harness.request("GET", "/metrics")).body).decode()
            assert "trio_gateway_backend_up{" not in body


async def test_worker_probes_on_the_metrics_port(autojump_clock: trio.testing.MockClock) -> None:
    async with running_worker("w1") as server:

        async def get(path: str) -> int:
            sent: list[dict[str, object]] = []

            async def send(message: dict[str, object]) -> None:
                sent.append(message)

            async def receive() -> dict[str, object]:
                return {"type": "http.request", "body": b"", "more_body": False}

            await server.probes({"type": "http", "path": path}, receive, send)  # type: ignore[arg-type]
            status = sent[0]["status"]
            assert isinstance(status, int)
            return status

        assert [await get(p) for p in ("/live", "/ready", "/metrics", "/nope")] == [
            200,
            200,
            200,
            404,
        ]
        server.shutdown.request_stop("SIGTERM")
        assert await get("/ready") == 503
        assert await get("/live") == 200


async def test_a_worker_coming_back_serves_the_queue_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_worker("w1") as first, running_worker("w2") as second:
        busy = InMemoryWorker("ws://w1", handler=first._handle)
        back = InMemoryWorker("ws://w2", handler=second._handle, refuse=True)
        config = GatewayConfig(max_inflight=1, queue_timeout_s=60)
        async with running_gateway(config, engines=[busy, back]) as harness:
            await busy.wait_connected()
            long = harness.start("POST", CHAT, chat(stream=True, mock={"tokens": 10_000}))
            await long.wait_until(lambda e: len(e.tokens()) >= 1)
            queued = harness.start("POST", CHAT, chat(max_tokens=1))
            await trio.sleep(1)
            assert harness.gateway.router.queued == 1  # w1 full, w2 down
            back.refuse = False
            came_back_at = trio.current_time()
            await queued.finished.wait()
            assert queued.status == 200
            assert queued.headers[b"x-worker-id"] == b"w2"
            assert trio.current_time() - came_back_at < 6  # redial backoff, not the timeout
            long.disconnect()
