"""POST /admin/drain: the graceful shutdown, started over HTTP."""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from trio_gateway.gateway import Gateway
from trio_gateway.http.control.replies import json_response, shared_port_refusal


def add_routes(app: QuartTrio, gateway: Gateway) -> None:
    @app.post("/admin/drain")
    async def drain() -> Response:
        """Start the graceful shutdown; `?wait=true` answers once nothing is in flight
        (a Kubernetes preStop hook that blocks until the pod is drained)."""
        if (refusal := shared_port_refusal(gateway, "send SIGTERM to the supervisor")) is not None:
            return refusal
        gateway.shutdown.request_stop("POST /admin/drain")
        if request.args.get("wait", "").lower() in ("1", "true", "yes"):
            await gateway.shutdown.wait_stopped()
        return json_response(
            {
                "phase": gateway.shutdown.phase.value,
                "inflight": len(gateway.ledger),
                "cut": gateway.shutdown.cut,
            },
            202 if gateway.shutdown.phase.value != "stopped" else 200,
        )
