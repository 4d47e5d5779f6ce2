"""DELETE /v1/sessions/{id}: a client ends its session before its idle timeout."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from trio_gateway.gateway import Gateway
from trio_gateway.http.control.replies import error_response, json_response
from trio_gateway.openai.errors import APIError


def add_routes(app: QuartTrio, gateway: Gateway) -> None:
    @app.delete("/v1/sessions/<path:session_id>")
    async def close_session(session_id: str) -> Response:
        closed = gateway.sessions.close(session_id)
        if closed is None:
            return error_response(
                APIError(
                    404,
                    f"No session {session_id!r}.",
                    "invalid_request_error",
                    "session_id",
                    "session_not_found",
                    "not_found",
                )
            )
        # 202: closed once its in-flight requests end.
        return json_response({"id": session_id, "closed": closed}, 200 if closed else 202)
