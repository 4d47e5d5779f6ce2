"""Unary response bodies and the other small JSON documents of the OpenAI API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trio_gateway.generation import Endpoint


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response_id(endpoint: Endpoint, request_id: str) -> str:
    return ("chatcmpl-" if endpoint == "chat" else "cmpl-") + request_id


def models_body(
    models: list[str],
    created: int,
    context_lengths: Mapping[str, int | None] | None = None,
    owned_by: str = "trio-gateway",
) -> dict[str, Any]:
    """OpenAI's model list, each model with vLLM's `max_model_len` where a backend says it
    (clients size their requests by it; a model no backend gives one for goes without)."""
    lengths = context_lengths or {}
    data = []
    for name in models:
        model: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": owned_by,
        }
        if lengths.get(name) is not None:
            model["max_model_len"] = lengths[name]
        data.append(model)
    return {"object": "list", "data": data}
