"""Validation of the requests that generate nothing: `/v1/embeddings`, and vLLM's `/tokenize`
and `/detokenize`, into the same `GenerationRequest` the completions build.

They share the completions' whole path (auth, routing, admission, breakers, metrics, the
end line) so that a fleet answers them like any other request; only the engine reads the
endpoint and answers them whole. `prompt` is what the router hashes and `--log-prompts`
logs: the input's text, or its token ids written out as a completion's are.

As for the completions, only what the gateway itself reads, or what no backend could take,
is checked; the other fields (vLLM's `add_special_tokens`, `truncate_prompt_tokens`, ...) go
to the engine as sent.
"""

from __future__ import annotations

from typing import Any

from trio_gateway.errors import invalid_request
from trio_gateway.generation import GENERATION_ENDPOINTS, Endpoint, GenerationRequest
from trio_gateway.openai.schemas import (
    _chat_prompt,
    _is_int,
    _type_error,
    parse_generation_request,
    required_model,
)

ENCODING_FORMATS = ("float", "base64")


def parse_request(
    body: dict[str, Any],
    endpoint: Endpoint,
    request_id: str,
    *,
    session_header: str | None = None,
) -> GenerationRequest:
    """Any inference route's body, validated for its endpoint (400 on the first problem)."""
    if endpoint in GENERATION_ENDPOINTS:
        return parse_generation_request(body, endpoint, request_id, session_header=session_header)
    model = required_model(body)
    if endpoint == "embeddings":
        prompt = embeddings_prompt(body)
    elif endpoint == "tokenize":
        prompt = _tokenize_prompt(body)
    else:
        prompt = " ".join(str(token) for token in detokenize_tokens(body))
    # Never a session (nothing to continue) nor a stream (nothing to stream).
    return GenerationRequest(
        request_id=request_id,
        endpoint=endpoint,
        model=model,
        prompt=prompt,
        stream=False,
        body=body,
    )


def embeddings_inputs(body: dict[str, Any]) -> list[str] | list[list[int]]:
    """The embeddings' `input` as a list of items: strings, or token id lists.

    OpenAI's four forms: a string, an array of strings, an array of token ids (one input),
    an array of arrays of token ids. Empty inputs are refused, as OpenAI does.
    """
    if "input" not in body:
        raise invalid_request(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    value = body["input"]
    expected = (
        "a string, an array of strings, an array of integers or an array of arrays of integers"
    )
    if isinstance(value, str):
        items: list[str] | list[list[int]] = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        items = list(value)
    elif isinstance(value, list) and value and all(_is_int(v) for v in value):
        items = [list(value)]
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(v, list) and all(_is_int(t) for t in v) for v in value)
    ):
        items = [list(v) for v in value]
    elif isinstance(value, list) and not value:
        raise invalid_request(
            "Invalid 'input': empty array. Expected an array with minimum length 1.",
            "input",
            "empty_array",
        )
    else:
        raise _type_error("input", expected, value)
    for index, item in enumerate(items):
        if not item:
            raise invalid_request(
                f"Invalid 'input[{index}]': empty input. Expected a non-empty string or array.",
                f"input[{index}]" if len(items) > 1 else "input",
                "empty_string" if isinstance(item, str) else "empty_array",
            )
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ENCODING_FORMATS:
        raise invalid_request(
            f"Invalid value for 'encoding_format': expected one of {', '.join(ENCODING_FORMATS)}.",
            "encoding_format",
            "invalid_value",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not _is_int(dimensions):
            raise _type_error("dimensions", "an integer", dimensions)
        if dimensions < 1:
            raise invalid_request(
                f"Invalid 'dimensions': integer below minimum value. Expected a value >= 1, "
                f"but got {dimensions} instead.",
                "dimensions",
                "integer_below_min_value",
            )
    return items


def embeddings_prompt(body: dict[str, Any]) -> str:
    items = embeddings_inputs(body)
    return "\n".join(
        item if isinstance(item, str) else " ".join(str(t) for t in item) for item in items
    )


def _tokenize_prompt(body: dict[str, Any]) -> str:
    """vLLM takes either a completion's `prompt` (a string) or a chat's `messages`; the
    messages are read as the chat route reads them, into the text the mock counts."""
    if "messages" in body and "prompt" not in body:
        return _chat_prompt(body)
    if "prompt" not in body:
        raise invalid_request(
            "Missing required parameter: 'prompt' (or 'messages').",
            "prompt",
            "missing_required_parameter",
        )
    prompt = body["prompt"]
    if not isinstance(prompt, str):
        raise _type_error("prompt", "a string", prompt)
    if "messages" in body:
        raise invalid_request(
            "Send either 'prompt' or 'messages', not both.", "messages", "invalid_value"
        )
    return prompt


def detokenize_tokens(body: dict[str, Any]) -> list[int]:
    if "tokens" not in body:
        raise invalid_request(
            "Missing required parameter: 'tokens'.", "tokens", "missing_required_parameter"
        )
    tokens = body["tokens"]
    if not isinstance(tokens, list) or not all(_is_int(t) for t in tokens):
        raise _type_error("tokens", "an array of integers", tokens)
    return tokens
