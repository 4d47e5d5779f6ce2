"""DELETE /v1/sessions/{id}: a client ends its session before its idle timeout."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from trio_gateway.errors import ErrorKind, GatewayError
from trio_gateway.gateway import Gateway
from trio_gateway.http.control.replies import error_response, json_response


def add_routes(app: QuartTrio, gateway: Gateway) -> None:
    @app.delete("/v1/sessions/<path:session_id>")
    async def close_session(session_id: str) -> Response:
        closed = gateway.sessions.close(session_id)
        if closed is None:
            return error_response(
                GatewayError(
                    ErrorKind.NOT_FOUND,
                    f"No session {session_id!r}.",
                    param="session_id",
                    code="session_not_found",
                )
            )
        # 202: closed once its in-flight requests end.
        return json_response({"id": session_id, "closed": closed}, 200 if closed else 202)
