"""What the control routes answer with: JSON bodies, OpenAI-shaped errors, and the refusal
of a change that would reach one process of several."""

from __future__ import annotations

from typing import Any

import orjson
from quart import Response

from trio_gateway.errors import ErrorKind, GatewayError
from trio_gateway.gateway import Gateway
from trio_gateway.openai.errors import error_body, http_status


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def error_response(error: GatewayError) -> Response:
    return json_response(error_body(error), http_status(error))


def shared_port_refusal(gateway: Gateway, instead: str) -> Response | None:
    """One of several processes on one port: a change would reach that one only."""
    if not gateway.config.reuse_port:
        return None
    return error_response(
        GatewayError(
            ErrorKind.VALIDATION,
            "This gateway is one of several processes sharing its port (--processes, "
            f"--reuse-port): this would reach one of them only; {instead}.",
            code="shared_port",
            status_override=409,
        )
    )
