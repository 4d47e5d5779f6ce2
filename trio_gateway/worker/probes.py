"""The worker's HTTP side, on `--metrics-port`: `/metrics` for Prometheus, `/live` and
`/ready` for an orchestrator's probes (ready while it takes new generations: not once it
drains, nor while its engine is down). A bare ASGI app under hypercorn: three fixed routes
need no framework."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from trio_gateway.worker.metrics import WorkerMetrics


class ProbesApp:
    def __init__(self, metrics: WorkerMetrics, ready: Callable[[], bool]) -> None:
        self.metrics = metrics
        self.ready = ready

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            status, body = 200, self.metrics.exposition()
        elif path == "/live":
            status, body = 200, b"ok\n"
        elif path == "/ready":
            status, body = (200, b"ready\n") if self.ready() else (503, b"draining\n")
        else:
            status, body = 404, b"not found\n"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; version=0.0.4")],
                "trailers": False,
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def serve_probes(
    app: ProbesApp, host: str, port: int, *, task_status: trio.TaskStatus[int]
) -> None:
    """Serves `app` until cancelled; `task_status` gets the port bound (0 picks one)."""
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(hypercorn_serve, app, config, shutdown_trigger=trio.sleep_forever)
        )
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
