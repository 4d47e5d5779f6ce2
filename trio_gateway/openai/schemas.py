"""Validation of OpenAI request bodies into `GenerationRequest`s.

Hand-written rather than pydantic: the rules are few, the error messages matter, and the hot
path should not pay for a model per request.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from trio_gateway.errors import GatewayError, invalid_request
from trio_gateway.generation import Endpoint, GenerationRequest, MockOptions

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# The mock's own bounds: a test knob must not hold a slot for ever or build a huge answer.
MOCK_MAX_TOKENS = 1_000_000
MOCK_MAX_MS = 3_600_000
MOCK_MAX_TOOL_CALLS = 16


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_request(
            "We could not parse the JSON body of your request. "
            "(HINT: This likely means you aren't using your HTTP library correctly.)"
        ) from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _type_error(param: str, expected: str, value: Any) -> GatewayError:
    return invalid_request(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)}.",
        param,
        "invalid_type",
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _optional_number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_number(value):
        raise _type_error(name, "a number", value)
    if not low <= value <= high:
        expected = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise invalid_request(
            f"Invalid '{name}': {value} is not {expected}.",
            name,
            "invalid_value",
        )
    return float(value)


def _max_tokens(body: dict[str, Any]) -> int | None:
    chosen: int | None = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value):
            raise _type_error(name, "an integer", value)
        if value < 1:
            raise invalid_request(
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1, "
                f"but got {value} instead.",
                name,
                "integer_below_min_value",
            )
        if chosen is None:
            chosen = value
    return chosen


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _type_error("stop", "a string or an array of strings", value)
    return tuple(s for s in value if s)  # as many as the engine takes (vLLM: no limit)


def _mock_options(body: dict[str, Any]) -> MockOptions | None:
    value = body.get("mock")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _type_error("mock", "an object", value)
    bounds = {
        "tokens": MOCK_MAX_TOKENS,
        "error_after": MOCK_MAX_TOKENS,
        "stall_after": MOCK_MAX_TOKENS,
        "reasoning_tokens": MOCK_MAX_TOKENS,
        "tool_calls": MOCK_MAX_TOOL_CALLS,
        "itl_ms": MOCK_MAX_MS,
        "ttft_ms": MOCK_MAX_MS,
    }
    unknown = sorted(set(value) - set(bounds))
    if unknown:
        raise invalid_request(
            f"Unknown field(s) in 'mock': {', '.join(unknown)}.", "mock", "unknown_parameter"
        )
    for name, bound in bounds.items():
        field_value = value.get(name)
        if field_value is None:
            continue
        integral = not name.endswith("_ms")
        if not (_is_int(field_value) if integral else _is_number(field_value)):
            kind = "an integer" if integral else "a number"
            raise _type_error(f"mock.{name}", kind, field_value)
        if not 0 <= field_value <= bound:
            raise invalid_request(
                f"Invalid 'mock.{name}': {field_value} is not between 0 and {bound}.",
                f"mock.{name}",
                "invalid_value",
            )
    return MockOptions(**{name: value.get(name) for name in bounds})


def _message_text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _type_error(f"messages[{index}].content", "an array of content parts", part)
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise _type_error(f"messages[{index}].content.text", "a string", text)
                texts.append(text)
        return "".join(texts)
    raise _type_error(f"messages[{index}].content", "a string or an array", content)


def _chat_prompt(body: dict[str, Any]) -> str:
    if "messages" not in body:
        raise invalid_request(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            "messages",
            "empty_array",
        )
    lines = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _type_error(f"messages[{index}]", "an object", message)
        role = message.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise invalid_request(
                f"Invalid value for 'messages[{index}].role': expected one of "
                f"{', '.join(sorted(CHAT_ROLES))}.",
                f"messages[{index}].role",
                "invalid_value",
            )
        lines.append(f"{role}: {_message_text(message.get('content'), index)}")
    return "\n".join(lines)


def _completion_prompt(body: dict[str, Any]) -> str:
    if "prompt" not in body:
        raise invalid_request(
            "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
        )
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        return " ".join(str(t) for t in prompt)
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        raise invalid_request(
            "Batched prompts are not supported; send one prompt per request.",
            "prompt",
            "unsupported_value",
        )
    raise _type_error("prompt", "a string", prompt)


def required_model(body: dict[str, Any]) -> str:
    """The body's `model`: every inference route needs one (400 without)."""
    model = body.get("model")
    if model is None:
        raise invalid_request(
            "Missing required parameter: 'model'.", "model", "missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string", model)
    return model


def parse_generation_request(
    body: dict[str, Any],
    endpoint: Endpoint,
    request_id: str,
    *,
    session_header: str | None = None,
) -> GenerationRequest:
    """Validate an OpenAI body. Raises `GatewayError` (400) on the first problem found.

    Only what the gateway itself reads is checked; every other field passes through to the
    engine as it is, for the engine to judge. The model's existence and its context length
    are the caller's questions (404, `check_max_tokens`), as only it knows the backends.
    """
    model = required_model(body)
    prompt = _chat_prompt(body) if endpoint == "chat" else _completion_prompt(body)

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _type_error("stream", "a boolean", stream)
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _type_error("stream_options", "an object", options)
        if not stream:
            raise invalid_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
                "invalid_value",
            )
        include_usage = options.get("include_usage", False)
        if include_usage is None:
            include_usage = False
        if not isinstance(include_usage, bool):
            raise _type_error("stream_options.include_usage", "a boolean", include_usage)
    n = body.get("n")
    if n is None:
        n = 1
    if not _is_int(n):
        raise _type_error("n", "an integer", n)
    if n < 1:
        raise invalid_request(
            f"Invalid 'n': integer below minimum value. Expected a value >= 1, but got {n}.",
            "n",
            "integer_below_min_value",
        )
    # Bounds an upstream enforces are its own (vLLM takes temperatures above OpenAI's 2).
    _optional_number(body, "temperature", 0.0, math.inf)
    _optional_number(body, "top_p", 0.0, 1.0)
    _optional_number(body, "presence_penalty", -2.0, 2.0)
    _optional_number(body, "frequency_penalty", -2.0, 2.0)

    session_id = body.get("session_id")
    if session_id is None:
        session_id = session_header
    if session_id is not None and (not isinstance(session_id, str) or not session_id):
        raise _type_error("session_id", "a non-empty string", session_id)

    session_timeout = _optional_number(body, "session_timeout", 0.001, 7 * 24 * 3600)

    return GenerationRequest(
        request_id=request_id,
        endpoint=endpoint,
        model=model,
        prompt=prompt,
        stream=stream,
        max_tokens=_max_tokens(body),
        n=n,
        stop=_stop(body),
        include_usage=include_usage,
        mock=_mock_options(body),
        session_id=session_id,
        session_timeout=session_timeout,
        body=body,
    )


def check_max_tokens(request: GenerationRequest, context_length: int | None) -> None:
    """400 for `max_tokens` above the model's context length, when the backends know it."""
    if context_length is None or request.max_tokens is None:
        return
    if request.max_tokens > context_length:
        name = "max_completion_tokens" if "max_completion_tokens" in request.body else "max_tokens"
        raise invalid_request(
            f"Invalid '{name}': {request.max_tokens} exceeds the model's maximum context "
            f"length of {context_length} tokens.",
            name,
            "integer_above_max_value",
        )


def check_prompt_length(
    request: GenerationRequest, context_length: int, prompt_tokens: int
) -> None:
    """400 for a prompt plus `max_tokens` over the context length, in vLLM's words.

    `prompt_tokens` must be the engine's own count (the caller knows whose it is). As vLLM
    does: without `max_tokens` the prompt must leave room for one token; with it, prompt and
    completion together must fit. vLLM's message, word for word ("messages" becomes
    "prompt" on /v1/completions); the rest is OpenAI's shape for this error, as every error
    of the gateway's own is (`invalid_request_error`, the prompt's param, code
    `context_length_exceeded`), where vLLM has `BadRequestError`, no param and 400 as code.
    """
    param = "messages" if request.endpoint == "chat" else "prompt"
    head = f"This model's maximum context length is {context_length} tokens. However, you requested"
    if request.max_tokens is None:
        if prompt_tokens < context_length:
            return
        message = (
            f"{head} {prompt_tokens} tokens in the {param}, "
            f"Please reduce the length of the {param}."
        )
    else:
        total = prompt_tokens + request.max_tokens
        if total <= context_length:
            return
        message = (
            f"{head} {total} tokens ({prompt_tokens} in the {param}, {request.max_tokens} in "
            f"the completion). Please reduce the length of the {param} or completion."
        )
    raise invalid_request(message, param, "context_length_exceeded")
