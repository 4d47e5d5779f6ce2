"""An overloaded upstream, on real sockets: the gateway on hypercorn in front of the mock
upstream of tests/support/upstream_server.py on hypercorn, configured as `serve --worker URL
--upstream-max-inflight 2 --queue-size 2` would be.

The upstream never answers more than 2 requests at once, the next 2 wait in the gateway's
queue (seen on its /metrics), and every request past that gets 429 with `Retry-After` at
once; when the upstream's streams end, the queued ones go through. Every wait is bounded.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio
import trio.testing

from tests.support.serving import serving
from tests.support.upstream_server import running_upstream
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.upstream.engine import OpenAIUpstream
from trio_gateway.gateway import Gateway

MODEL = "held"  # one token, then the upstream holds the stream until the test lets go
SLOTS = 2
QUEUE = 2
REFUSED = 3


def queued_on(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'trio_gateway_queued_requests{{model="{MODEL}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_the_upstream_sees_at_most_its_capacity_and_the_rest_queue_or_get_429() -> None:
    async with running_upstream(models=[MODEL], graceful_timeout=0.5) as upstream:
        config = GatewayConfig(
            port=0,
            workers=(upstream.url,),
            upstream_max_inflight=SLOTS,
            queue_size=QUEUE,
            queue_timeout_s=30,
        )
        gateway = Gateway(config)
        (backend,) = gateway.router.backends
        assert isinstance(backend.engine, OpenAIUpstream)
        async with serving(gateway) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            with trio.fail_after(10):
                await backend.engine.wait_probes(1)
            answers: dict[int, tuple[int, dict[str, str], str]] = {}

            async def ask(n: int) -> None:
                body: dict[str, Any] = {
                    "model": MODEL,
                    "stream": True,
                    "messages": [{"role": "user", "content": f"request {n}"}],
                }
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    text = "".join([part async for part in response.aiter_text()])
                answers[n] = (response.status_code, dict(response.headers), text)

            async def metrics() -> str:
                return (await client.get("/metrics")).text

            async with trio.open_nursery() as nursery:
                with trio.fail_after(20):
                    for n in range(SLOTS):
                        nursery.start_soon(ask, n)
                    await upstream.wait_until(lambda: upstream.generating == SLOTS)
                    for n in range(SLOTS, SLOTS + QUEUE):
                        nursery.start_soon(ask, n)
                    # Every task here blocked for 50 ms, each socket read: they wait in the queue.
                    await trio.testing.wait_all_tasks_blocked(0.05)
                    assert gateway.router.queued == QUEUE
                    assert queued_on(await metrics()) == QUEUE
                    for n in range(SLOTS + QUEUE, SLOTS + QUEUE + REFUSED):
                        await ask(n)  # one by one: each refused at once, nothing freed
                    assert upstream.generating == SLOTS
                    assert len(upstream.generations) == SLOTS
                    upstream.release_held.set()
            assert queued_on(await metrics()) == 0

    assert upstream.most_generating == SLOTS
    assert len(upstream.generations) == SLOTS + QUEUE
    served = [answers[n] for n in range(SLOTS + QUEUE)]
    assert [status for status, _, _ in served] == [200] * (SLOTS + QUEUE)
    assert all(text.endswith("data: [DONE]\n\n") for _, _, text in served)
    for n in range(SLOTS + QUEUE, SLOTS + QUEUE + REFUSED):
        status, headers, text = answers[n]
        assert status == 429
        assert headers["retry-after"] == "5"
        assert '"type":"overload"' in text
