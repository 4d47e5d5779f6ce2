"""Sessions over real sockets: two `trio-gateway worker` processes, one gateway."""

from __future__ import annotations

import httpx
import trio

from tests.support.serving import serving
from tests.support.worker_process import worker_process
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.ws_client import RemoteWorker
from trio_gateway.gateway import Gateway


async def test_sticky_sessions_and_delete_across_worker_processes() -> None:
    async with worker_process("w1") as (_, port1), worker_process("w2") as (_, port2):
        config = GatewayConfig(
            port=0,
            workers=(f"ws://127.0.0.1:{port1}", f"ws://127.0.0.1:{port2}"),
            worker_token="secret",
        )
        gateway = Gateway(config)
        async with serving(gateway) as url:
            with trio.fail_after(10):
                for backend in gateway.router.backends:
                    assert isinstance(backend.engine, RemoteWorker)
                    await backend.engine.wait_connected()
            body = {
                "model": "mock",
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "hi"}],
            }
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                with trio.fail_after(30):
                    homes = {
                        (
                            await client.post(
                                "/v1/chat/completions",
                                json=body,
                                headers={"x-session-id": "conv-1"},
                            )
                        ).headers["x-worker-id"]
                        for _ in range(10)
                    }
                    assert len(homes) == 1
                    deleted = await client.delete("/v1/sessions/conv-1")
                    assert deleted.status_code == 200
                    missing = await client.delete("/v1/sessions/conv-1")
                    assert missing.status_code == 404
        assert (
            gateway.metrics.registry.get_sample_value(
                "trio_gateway_sessions_closed_total", {"reason": "explicit"}
            )
            == 1
        )
