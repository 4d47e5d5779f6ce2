"""What orchestrators and scrapers ask, open to all: /health, /live, /ready, /metrics."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from trio_gateway.gateway import Gateway
from trio_gateway.http.control.replies import json_response

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def add_routes(app: QuartTrio, gateway: Gateway) -> None:
    @app.get("/health")
    async def health() -> Response:
        healthy = gateway.running
        return json_response(
            {
                "status": "ok" if healthy else "starting",
                "phase": gateway.shutdown.phase.value,
                "inflight": len(gateway.ledger),
                "models": gateway.models,
            },
            200 if healthy else 503,
        )

    @app.get("/live")
    async def live() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        if gateway.ready:
            return json_response({"status": "ready"})
        return json_response({"status": "not_ready", "phase": gateway.shutdown.phase.value}, 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        gateway.refresh_gauges()
        return Response(gateway.metrics.exposition(), content_type=PROMETHEUS_CONTENT_TYPE)
