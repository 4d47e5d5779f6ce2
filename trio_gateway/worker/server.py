"""`trio-gateway worker`: an engine (the mock by default) behind the WebSocket request plane.

The server owns what outlives a connection: the engine, the in-flight ledger and its
graceful drain, the sessions, the metrics. It takes a gateway's handshake (`plane.handshake`)
and hands each accepted connection to a `GatewayConnection` (`worker.connection`); its HTTP
side is `worker.probes`.
"""

from __future__ import annotations

import logging
from functools import partial

import trio
from trio_websocket import WebSocketRequest, serve_websocket

from trio_gateway.config import WorkerConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.protocol import Engine
from trio_gateway.lifecycle.ledger import InFlightLedger
from trio_gateway.lifecycle.shutdown import GracefulShutdown
from trio_gateway.plane.handshake import MAX_MESSAGE_BYTES, refusal
from trio_gateway.tls import ClientTLS, server_context
from trio_gateway.worker.connection import GatewayConnection, WorkerParts
from trio_gateway.worker.metrics import WorkerMetrics
from trio_gateway.worker.probes import ProbesApp, serve_probes
from trio_gateway.worker.sessions import WorkerSessions

log = logging.getLogger("trio_gateway.worker")


def engine_from_settings(config: WorkerConfig) -> Engine:
    """The engine this worker hosts: the OpenAI-compatible server on its node, or the mock."""
    if config.upstream:
        from trio_gateway.engines.upstream.engine import OpenAIUpstream

        tls = ClientTLS(
            config.upstream_ca_bundle, config.upstream_client_cert, config.upstream_client_key
        )
        secure = config.upstream.startswith("https://")
        return OpenAIUpstream(
            config.upstream,
            api_key=config.upstream_api_key or None,
            ssl_context=tls.context() if secure else None,
        )
    return MockEngine.from_settings(config)


class WorkerServer:
    def __init__(self, config: WorkerConfig, engine: Engine | None = None) -> None:
        self.config = config
        self.engine: Engine = engine or engine_from_settings(config)
        self.metrics = WorkerMetrics()
        self.ledger = InFlightLedger()
        self.shutdown = GracefulShutdown(self.ledger, config.drain_timeout_s)
        self.sessions = WorkerSessions(self.engine, self.metrics)
        self.probes = ProbesApp(self.metrics, self._ready)
        self.worker_id = config.worker_id
        self.port = config.port
        self.metrics_port = config.metrics_port
        # Built here, before anything listens: a bad file is a `ConfigError`, one line.
        self.ssl_context = (
            server_context(
                config.certfile, config.keyfile, config.ca_certs, config.keyfile_password
            )
            if config.certfile
            else None
        )

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host = self.config.host
        async with trio.open_nursery() as nursery:
            await nursery.start(self.engine.run)
            await nursery.start(self.shutdown.run)
            nursery.start_soon(self.sessions.reap)
            listener = await nursery.start(
                partial(
                    serve_websocket,
                    self._handle,
                    host,
                    self.config.port,
                    self.ssl_context,
                    max_message_size=MAX_MESSAGE_BYTES,
                )
            )
            self.port = listener.port
            self.worker_id = self.config.worker_id or f"{host}:{self.port}"
            self.metrics_port = await nursery.start(
                serve_probes, self.probes, host, self.config.metrics_port
            )
            log.info(
                "worker %s: request plane %s://%s:%d, metrics http://%s:%d/metrics",
                self.worker_id,
                "ws" if self.ssl_context is None else "wss",
                host,
                self.port,
                host,
                self.metrics_port,
            )
            task_status.started()
            await self.shutdown.wait_stopped()
            nursery.cancel_scope.cancel()

    def _ready(self) -> bool:
        """Ready while it takes new generations: not once it drains, nor with no engine."""
        return self.shutdown.ready and self.engine.available

    async def _handle(self, request: WebSocketRequest) -> None:
        peer = f"{request.remote}"
        refused = refusal(request.headers, self.config.token)
        if refused is not None:
            log.error("refused a gateway from %s: %s", peer, refused.reason)
            await request.reject(refused.status, body=refused.body)
            return
        if not self.engine.available or not self.engine.models:
            # An upstream engine not answering yet: the gateway redials with backoff, and
            # its hello (models, context lengths) will be the engine's real ones.
            await request.reject(503, body=b"the worker's engine is not ready")
            return
        ws = await request.accept()
        self.metrics.connections.inc()
        try:
            parts = WorkerParts(
                self.worker_id,
                self.engine,
                self.config.max_inflight,
                self.ledger,
                self.shutdown,
                self.sessions,
                self.metrics,
            )
            await GatewayConnection(ws, peer, parts).serve()
        finally:
            self.metrics.connections.dec()
