"""/admin/workers: the backends routed to, listed, added and removed while serving."""

from __future__ import annotations

import logging
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from trio_gateway.backend_engines import engine_for_url
from trio_gateway.backend_urls import BadURL, check_backend_url
from trio_gateway.config import ConfigError
from trio_gateway.errors import ErrorKind, GatewayError, internal_error, invalid_request
from trio_gateway.gateway import Gateway
from trio_gateway.http.control.replies import error_response, json_response, shared_port_refusal
from trio_gateway.router.admission import Backend

ONE_PROCESS_ONLY = "give the workers with --worker"
log = logging.getLogger("trio_gateway")


def add_routes(app: QuartTrio, gateway: Gateway) -> None:
    @app.get("/admin/workers")
    async def list_workers() -> Response:
        return json_response({"workers": [_describe(b) for b in gateway.router.backends]})

    @app.post("/admin/workers")
    async def add_worker() -> Response:
        if (refusal := shared_port_refusal(gateway, ONE_PROCESS_ONLY)) is not None:
            return refusal
        body = await request.get_json(force=True, silent=True)
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str):
            return error_response(
                invalid_request(
                    'Send {"url": "ws(s)://HOST:PORT"} or an OpenAI-compatible "http(s)://HOST:PORT/v1".',
                    "url",
                    "invalid_url",
                )
            )
        try:
            check_backend_url(url)
        except BadURL as error:
            return error_response(invalid_request(f"url: {error}", "url", "invalid_url"))
        try:
            engine = engine_for_url(url, gateway.config)
        except ConfigError as error:  # its TLS files went missing or bad since start-up
            log.warning("cannot add %s: %s", url, error)
            return error_response(internal_error(f"Cannot add {url}: {error}"))
        try:  # the engine's URL is the normalised one (no trailing slash, no password)
            backend = await gateway.fleet.add_engine(engine)
        except ValueError:
            return error_response(
                GatewayError(
                    ErrorKind.VALIDATION,
                    f"{engine.url} is already routed to.",
                    param="url",
                    code="duplicate_worker",
                    status_override=409,
                )
            )
        return json_response(_describe(backend), 201)

    @app.delete("/admin/workers/<path:worker_id>")
    async def remove_worker(worker_id: str) -> Response:
        if (refusal := shared_port_refusal(gateway, ONE_PROCESS_ONLY)) is not None:
            return refusal
        if not gateway.fleet.remove_engine(worker_id):
            return error_response(
                GatewayError(
                    ErrorKind.NOT_FOUND, f"No worker {worker_id!r}.", code="worker_not_found"
                )
            )
        return json_response({"removed": worker_id})


def _describe(backend: Backend) -> dict[str, Any]:
    engine = backend.engine
    return {
        "id": backend.name,
        "url": engine.url,
        "weight": backend.weight,
        "models": list(backend.models),
        "available": engine.available,
        "inflight": backend.inflight,
        "capacity": backend.capacity,
        "breaker": backend.breaker.state.value,
    }
