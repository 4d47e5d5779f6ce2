"""Two `trio-gateway worker` processes behind a gateway on real sockets; one is killed -9
mid-stream. Every wait is bounded."""

from __future__ import annotations

import json
import re
import signal

import trio

from tests.support.serving import serving
from tests.support.worker_process import worker_process
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.ws_client import RemoteWorker
from trio_gateway.gateway import Gateway


def chat_request(port: int, tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": "mock",
            "stream": True,
            "mock": {"tokens": tokens},
            "messages": [{"role": "user", "content": "x"}],
        }
    ).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_a_worker_killed_mid_stream() -> None:
    async with worker_process("w1") as (w1, port1), worker_process("w2") as (_, port2):
        config = GatewayConfig(
            port=0,
            workers=(f"ws://127.0.0.1:{port1}", f"ws://127.0.0.1:{port2}"),
            worker_token="secret",
            routing_policy="round_robin",
        )
        gateway = Gateway(config)
        async with serving(gateway) as url:
            port = int(url.rsplit(":", 1)[1])
            with trio.fail_after(10):
                for backend in gateway.router.backends:
                    assert isinstance(backend.engine, RemoteWorker)
                    await backend.engine.wait_connected()

            streams: list[trio.SocketStream] = []
            served_by: list[bytes] = []
            for _ in range(4):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(chat_request(port, 100_000))
                head = b""
                with trio.fail_after(10):
                    while b'"content":"' not in head.split(b"\r\n\r\n", 1)[-1]:
                        head += await stream.receive_some()
                served_by.append(re.search(rb"x-worker-id: (\w+)", head).group(1))  # type: ignore[union-attr]
                streams.append(stream)
            assert sorted(served_by) == [b"w1", b"w1", b"w2", b"w2"]

            w1.send_signal(signal.SIGKILL)
            killed_at = trio.current_time()
            for stream, worker in zip(streams, served_by, strict=True):
                if worker != b"w1":
                    continue
                received = b""
                with trio.fail_after(1):  # the bound the issue sets
                    while not received.endswith(b"0\r\n\r\n"):
                        received += await stream.receive_some()
                assert b'"type":"unavailable"' in received
                assert b"data: [DONE]" in received
            assert trio.current_time() - killed_at < 1

            # w2's streams are untouched; new requests go to w2 only.
            for stream, worker in zip(streams, served_by, strict=True):
                if worker == b"w2":
                    with trio.fail_after(5):
                        assert b'"content":"' in await stream.receive_some()
                await stream.aclose()
            fresh = await trio.open_tcp_stream("127.0.0.1", port)
            async with fresh:
                await fresh.send_all(chat_request(port, 3))
                received = b""
                with trio.fail_after(10):
                    while not received.endswith(b"0\r\n\r\n"):
                        received += await fresh.receive_some()
            assert b"x-worker-id: w2" in received and b"data: [DONE]" in received
            with trio.fail_after(10):
                await gateway.ledger.wait_empty()
            value = gateway.metrics.registry.get_sample_value(
                "trio_gateway_inflight_requests", {"model": "mock"}
            )
            assert value == 0
