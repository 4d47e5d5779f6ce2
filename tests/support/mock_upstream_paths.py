"""One OpenAI-compatible upstream on real sockets and the three ways to reach it: directly,
through a gateway relaying to it, through a gateway whose worker relays to it.

The upstream is a trio-gateway serving its mock on hypercorn: it answers chat, completions,
embeddings and vLLM's /tokenize, /detokenize, deterministically, so the answers of the
three paths can be compared (tests/system/test_lossless.py, test_non_generative_relay.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from tests.support.serving import serving
from trio_gateway.config import GatewayConfig, WorkerConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.upstream.engine import OpenAIUpstream
from trio_gateway.engines.ws_client import RemoteWorker
from trio_gateway.gateway import Gateway
from trio_gateway.worker.server import WorkerServer


@dataclass
class Paths:
    direct: str
    relayed: str  # a gateway with the upstream as its backend
    worker: str  # a gateway whose worker hosts the upstream
    worker_gateway: Gateway


@asynccontextmanager
async def three_paths() -> AsyncIterator[Paths]:
    upstream = Gateway(GatewayConfig(port=1), [MockEngine(("mock",), ttft_ms=1, itl_ms=1)])
    with trio.fail_after(20):
        async with serving(upstream) as direct, trio.open_nursery() as nursery:
            relay_engine = OpenAIUpstream(direct + "/v1")
            relayed_gateway = Gateway(GatewayConfig(port=1), [relay_engine])
            worker = WorkerServer(WorkerConfig(port=0, metrics_port=0, upstream=direct + "/v1"))
            await nursery.start(worker.serve)
            remote = RemoteWorker(f"ws://127.0.0.1:{worker.port}")
            worker_gateway = Gateway(GatewayConfig(port=1), [remote])
            async with serving(relayed_gateway) as relayed, serving(worker_gateway) as via_worker:
                await relay_engine.wait_probes(1)
                await remote.wait_connected()
                yield Paths(direct, relayed, via_worker, worker_gateway)
                nursery.cancel_scope.cancel()
