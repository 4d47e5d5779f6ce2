"""Unary response bodies and the other small JSON documents of the OpenAI API."""

from __future__ import annotations

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


def models_body(models: list[str], created: int, owned_by: str = "trio-gateway") -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": owned_by}
            for name in models
        ],
    }
