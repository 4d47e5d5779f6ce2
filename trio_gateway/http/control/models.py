"""The OpenAI routes quart serves: the model list, and the inference paths' other methods."""

from __future__ import annotations

import time
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from trio_gateway.errors import model_not_found
from trio_gateway.gateway import Gateway
from trio_gateway.http.control.replies import error_response, json_response
from trio_gateway.openai.responses import models_body


def add_routes(app: QuartTrio, gateway: Gateway) -> None:
    created = int(time.time())

    def listed(models: list[str]) -> dict[str, Any]:
        # The largest a backend serving it reports, as `max_tokens` is judged against.
        lengths = {model: gateway.router.context_length(model) for model in models}
        return models_body(models, created, lengths)

    @app.get("/v1/models")
    async def list_models() -> Response:
        return json_response(listed(gateway.models))

    @app.get("/v1/models/<path:model>")
    async def get_model(model: str) -> Response:
        if model not in gateway.models:
            return error_response(model_not_found(model))
        return json_response(listed([model])["data"][0])

    @app.post("/v1/chat/completions")
    @app.post("/v1/completions")
    @app.post("/v1/embeddings")
    @app.post("/tokenize")
    @app.post("/detokenize")
    async def inference() -> Response:
        # Never reached: `GatewayApp` serves these POSTs itself. Declared so that other
        # methods get 405 rather than 404.
        raise RuntimeError("inference routes are served by trio_gateway.http.inference")
