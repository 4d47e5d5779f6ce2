"""Everything but inference, on quart-trio: one route group per module, one app.

Quart gives routing and error handlers; these routes are cheap, so the framework's
per-request cost does not matter here. Auth is not here: `GatewayApp` decides it for
every request before quart sees one (`http/auth.py`).
"""

from __future__ import annotations

import uuid

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from trio_gateway.errors import ErrorKind, GatewayError
from trio_gateway.gateway import Gateway
from trio_gateway.http.control import drain, models, probes, sessions, workers
from trio_gateway.http.control.replies import error_response


def create_control_app(gateway: Gateway) -> QuartTrio:
    # No static folder: quart would otherwise serve an open /static/ route nobody asked for.
    app = QuartTrio("trio_gateway", static_folder=None)
    # quart's 60 s default would cut a streamed body after a minute (docs/architecture.md §7).
    app.config["RESPONSE_TIMEOUT"] = None
    for group in (models, sessions, probes, drain, workers):
        group.add_routes(app, gateway)

    @app.after_request
    async def tag_request_id(response: Response) -> Response:
        response.headers["x-request-id"] = request.headers.get("x-request-id") or uuid.uuid4().hex
        return response

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        kind = "invalid_request_error" if status < 500 else "internal_error"
        message = error.description or error.name
        return error_response(
            GatewayError(ErrorKind.VALIDATION, message, status_override=status, type_override=kind)
        )

    return app
