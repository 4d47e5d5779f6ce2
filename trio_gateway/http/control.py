"""Everything but inference, on quart-trio: models, probes, metrics.

Quart gives routing, error handlers and (later) the admin and session APIs; these routes
are cheap, so the framework's per-request cost does not matter here.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from trio_gateway.backend_urls import BadURL, check_backend_url
from trio_gateway.errors import (
    ErrorKind,
    GatewayError,
    invalid_api_key,
    invalid_request,
    model_not_found,
)
from trio_gateway.gateway import Gateway, engine_for_url
from trio_gateway.http.auth import bearer_token, is_loopback, key_accepted
from trio_gateway.openai.errors import error_body, http_status
from trio_gateway.openai.responses import models_body
from trio_gateway.router.admission import Backend

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def create_control_app(gateway: Gateway) -> QuartTrio:
    app = QuartTrio("trio_gateway")
    # quart's 60 s default would cut a streamed body after a minute (docs/architecture.md §7).
    app.config["RESPONSE_TIMEOUT"] = None
    created = int(time.time())

    @app.get("/v1/models")
    async def list_models() -> Response:
        return _json(models_body(gateway.models, created))

    @app.get("/v1/models/<path:model>")
    async def get_model(model: str) -> Response:
        if model not in gateway.models:
            return _api_error(model_not_found(model))
        return _json(models_body([model], created)["data"][0])

    @app.after_request
    async def tag_request_id(response: Response) -> Response:
        response.headers["x-request-id"] = request.headers.get("x-request-id") or uuid.uuid4().hex
        return response

    @app.before_request
    async def authorize() -> Response | None:
        path = request.path
        if path.startswith("/v1/") and gateway.api_keys:
            token = bearer_token(request.headers.get("authorization"))
            if not key_accepted(token, gateway.api_keys):
                return _api_error(invalid_api_key())
        elif path.startswith("/admin/"):
            token = bearer_token(request.headers.get("authorization"))
            admin_token = gateway.config.admin_token
            allowed = (
                key_accepted(token, [admin_token])
                if admin_token
                else is_loopback(request.scope.get("client"))
            )
            if not allowed:
                return _api_error(
                    GatewayError(
                        ErrorKind.UNAUTHORIZED,
                        "Admin endpoints need the admin token"
                        if admin_token
                        else "Admin endpoints answer only loopback clients when no "
                        "--admin-token is set.",
                        code="admin_forbidden",
                        status_override=403 if not admin_token else 401,
                    )
                )
        return None

    @app.get("/health")
    async def health() -> Response:
        healthy = gateway.running
        return _json(
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
        return _json({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        if gateway.ready:
            return _json({"status": "ready"})
        return _json({"status": "not_ready", "phase": gateway.shutdown.phase.value}, 503)

    def shared_port_refusal(instead: str) -> Response | None:
        """One of several processes on one port: a change would reach that one only."""
        if not gateway.config.reuse_port:
            return None
        return _api_error(
            GatewayError(
                ErrorKind.VALIDATION,
                "This gateway is one of several processes sharing its port (--processes, "
                f"--reuse-port): this would reach one of them only; {instead}.",
                code="shared_port",
                status_override=409,
            )
        )

    @app.post("/admin/drain")
    async def drain() -> Response:
        """Start the graceful shutdown; `?wait=true` answers once nothing is in flight
        (a Kubernetes preStop hook that blocks until the pod is drained)."""
        if (refusal := shared_port_refusal("send SIGTERM to the supervisor")) is not None:
            return refusal
        gateway.shutdown.request_stop("POST /admin/drain")
        if request.args.get("wait", "").lower() in ("1", "true", "yes"):
            await gateway.shutdown.wait_stopped()
        return _json(
            {
                "phase": gateway.shutdown.phase.value,
                "inflight": len(gateway.ledger),
                "cut": gateway.shutdown.cut,
            },
            202 if gateway.shutdown.phase.value != "stopped" else 200,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        gateway.refresh_gauges()
        return Response(gateway.metrics.exposition(), content_type=PROMETHEUS_CONTENT_TYPE)

    @app.post("/v1/chat/completions")
    @app.post("/v1/completions")
    async def inference() -> Response:
        # Never reached: `GatewayApp` serves these POSTs itself. Declared so that other
        # methods get 405 rather than 404.
        raise RuntimeError("inference routes are served by trio_gateway.http.inference")

    @app.delete("/v1/sessions/<path:session_id>")
    async def close_session(session_id: str) -> Response:
        closed = gateway.sessions.close(session_id)
        if closed is None:
            return _api_error(
                GatewayError(
                    ErrorKind.NOT_FOUND,
                    f"No session {session_id!r}.",
                    param="session_id",
                    code="session_not_found",
                )
            )
        # 202: closed once its in-flight requests end.
        return _json({"id": session_id, "closed": closed}, 200 if closed else 202)

    @app.get("/admin/workers")
    async def list_workers() -> Response:
        return _json({"workers": [_describe_backend(b) for b in gateway.router.backends]})

    @app.post("/admin/workers")
    async def add_worker() -> Response:
        if (refusal := shared_port_refusal("give the workers with --worker")) is not None:
            return refusal
        body = await request.get_json(force=True, silent=True)
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str):
            return _api_error(
                invalid_request(
                    'Send {"url": "ws://HOST:PORT"} or an OpenAI-compatible "http://HOST:PORT/v1".',
                    "url",
                    "invalid_url",
                )
            )
        try:
            check_backend_url(url)
        except BadURL as error:
            return _api_error(invalid_request(f"url: {error}", "url", "invalid_url"))
        if gateway.router.find(url) is not None:
            return _api_error(
                GatewayError(
                    ErrorKind.VALIDATION,
                    f"{url} is already routed to.",
                    param="url",
                    code="duplicate_worker",
                    status_override=409,
                )
            )
        engine = engine_for_url(url, gateway.config)
        await gateway.add_engine(engine)
        backend = gateway.router.find(url)
        assert backend is not None
        return _json(_describe_backend(backend), 201)

    @app.delete("/admin/workers/<path:worker_id>")
    async def remove_worker(worker_id: str) -> Response:
        if (refusal := shared_port_refusal("give the workers with --worker")) is not None:
            return refusal
        if not gateway.remove_engine(worker_id):
            return _api_error(
                GatewayError(
                    ErrorKind.NOT_FOUND, f"No worker {worker_id!r}.", code="worker_not_found"
                )
            )
        return _json({"removed": worker_id})

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        kind = "invalid_request_error" if status < 500 else "internal_error"
        message = error.description or error.name
        return _api_error(
            GatewayError(ErrorKind.VALIDATION, message, status_override=status, type_override=kind)
        )

    return app


def _describe_backend(backend: Backend) -> dict[str, Any]:
    engine = backend.engine
    return {
        "id": backend.name,
        "url": getattr(engine, "url", None),
        "models": list(engine.models),
        "available": engine.available,
        "inflight": backend.inflight,
        "capacity": backend.capacity,
        "breaker": backend.breaker.state.value,
    }


def _api_error(error: GatewayError) -> Response:
    return _json(error_body(error), http_status(error))
