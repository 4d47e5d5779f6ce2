"""Gateway-side `RemoteWorker`s wired to `WorkerServer`s over in-memory streams.

Real WebSocket framing (trio-websocket) and the real worker code, no sockets, so the request
plane runs under MockClock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import trio
import trio.testing
from trio_websocket import (
    WebSocketConnection,
    WebSocketRequest,
    wrap_client_stream,
    wrap_server_stream,
)

from tests.support.asgi_client import Harness, running_gateway
from trio_gateway.config import GatewayConfig, WorkerConfig
from trio_gateway.engines.ws_client import RemoteWorker
from trio_gateway.worker.server import WorkerServer

Handler = Callable[[WebSocketRequest], Awaitable[None]]


@dataclass(eq=False)
class InMemoryWorker(RemoteWorker):
    """A RemoteWorker whose connections go to `handler` (a WorkerServer's, or a fake)."""

    handler: Handler | None = None
    refuse: bool = False  # the worker is "down": connections fail
    _links: list[trio.CancelScope] = field(default_factory=list)

    def open_connection(
        self, headers: list[tuple[bytes, bytes]]
    ) -> AbstractAsyncContextManager[WebSocketConnection]:
        return self._connect(headers)

    @asynccontextmanager
    async def _connect(
        self, headers: list[tuple[bytes, bytes]]
    ) -> AsyncIterator[WebSocketConnection]:
        if self.refuse or self.handler is None:
            raise OSError("connection refused (in-memory worker is down)")
        handler = self.handler
        client_stream, server_stream = trio.testing.memory_stream_pair()
        try:
            async with trio.open_nursery() as nursery:
                link = trio.CancelScope()
                self._links.append(link)

                async def server_side() -> None:
                    with link:
                        try:
                            request = await wrap_server_stream(nursery, server_stream)
                            await handler(request)
                        finally:
                            await trio.aclose_forcefully(server_stream)

                nursery.start_soon(server_side)
                ws = await wrap_client_stream(
                    nursery,
                    client_stream,  # type: ignore[arg-type]
                    "worker",
                    "/",
                    extra_headers=headers,
                )
                try:
                    yield ws
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # open_websocket_url raises bare errors; so must this stand-in for it.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    def kill(self) -> None:
        """As kill -9: the worker's side vanishes mid-conversation."""
        for link in self._links:
            link.cancel()
        self._links.clear()


@asynccontextmanager
async def running_worker(worker_id: str, **settings: object) -> AsyncIterator[WorkerServer]:
    """A WorkerServer's engine and shutdown controller, without its listeners."""
    server = WorkerServer(WorkerConfig(worker_id=worker_id, **settings))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.engine.run)
        await nursery.start(server.shutdown.run)
        nursery.start_soon(server.sessions.reap)
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def gateway_on_worker(
    config: GatewayConfig | None = None,
) -> AsyncIterator[tuple[Harness, WorkerServer, InMemoryWorker]]:
    """A gateway routed to one in-memory worker "w1", once the worker has said hello."""
    async with running_worker("w1") as server:
        worker = InMemoryWorker("ws://w1", handler=server._handle)
        async with running_gateway(config, engines=[worker]) as harness:
            await worker.wait_connected()
            yield harness, server, worker
