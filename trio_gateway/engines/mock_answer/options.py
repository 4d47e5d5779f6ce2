"""What a request asks of the mock, checked before anything starts (a 400, as vLLM's).

The mock answers what vLLM would, within bounds: `n` choices, logprobs (chat's
`logprobs`/`top_logprobs`, completions' `logprobs`), and through the `mock` field reasoning
tokens and calls of the request's own `tools`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trio_gateway.errors import invalid_request
from trio_gateway.generation import GenerationRequest

MAX_N = 128
MAX_TOP_LOGPROBS = 20  # chat `top_logprobs` (vLLM's default max_logprobs; OpenAI's bound)
MAX_COMPLETION_LOGPROBS = 5  # completions `logprobs` (OpenAI's bound)


@dataclass(frozen=True, slots=True)
class AnswerOptions:
    top: int | None  # alternatives listed per content token; None: no logprobs
    reasoning: int  # reasoning tokens before the content
    content: int  # content tokens
    calls: tuple[str, ...]  # the function each tool call names, in order


def answer_options(request: GenerationRequest, default_tokens: int) -> AnswerOptions:
    """Raises `GatewayError` (validation) for what the mock cannot answer."""
    if request.n > MAX_N:
        raise invalid_request(
            f"Invalid 'n': integer above maximum value. Expected a value <= {MAX_N}, "
            f"but got {request.n} instead.",
            "n",
            "integer_above_max_value",
        )
    if request.n < 1:
        raise invalid_request(
            f"Invalid 'n': integer below minimum value. Expected a value >= 1, "
            f"but got {request.n} instead.",
            "n",
            "integer_below_min_value",
        )
    mock = request.mock
    top = _logprobs_option(request)
    reasoning = (mock.reasoning_tokens if mock else None) or 0
    call_count = (mock.tool_calls if mock else None) or 0
    tools = _tool_names(request, call_count)
    if reasoning and request.endpoint != "chat":
        raise invalid_request(
            "Invalid 'mock.reasoning_tokens': reasoning is a chat completions feature.",
            "mock.reasoning_tokens",
            "invalid_value",
        )
    content = default_tokens if mock is None or mock.tokens is None else mock.tokens
    calls = tuple(tools[number % len(tools)] for number in range(call_count)) if tools else ()
    return AnswerOptions(top, reasoning, content, calls)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _logprobs_option(request: GenerationRequest) -> int | None:
    """How many alternatives each content token lists, or None without logprobs."""
    body = request.body
    logprobs = body.get("logprobs")
    if request.endpoint != "chat":
        if logprobs is None:
            return None
        if not _is_int(logprobs) or not 0 <= logprobs <= MAX_COMPLETION_LOGPROBS:
            raise invalid_request(
                f"Invalid 'logprobs': expected an integer between 0 and "
                f"{MAX_COMPLETION_LOGPROBS}, but got {logprobs!r}.",
                "logprobs",
                "invalid_value",
            )
        return int(logprobs)
    if logprobs is not None and not isinstance(logprobs, bool):
        raise invalid_request(
            f"Invalid 'logprobs': expected a boolean, but got {logprobs!r}.",
            "logprobs",
            "invalid_type",
        )
    top = body.get("top_logprobs")
    if top is not None:
        if not _is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise invalid_request(
                f"Invalid 'top_logprobs': expected an integer between 0 and "
                f"{MAX_TOP_LOGPROBS}, but got {top!r}.",
                "top_logprobs",
                "invalid_value",
            )
        if not logprobs:
            raise invalid_request(
                "Invalid 'top_logprobs': 'logprobs' must be true when 'top_logprobs' is set.",
                "top_logprobs",
                "invalid_value",
            )
    if not logprobs:
        return None
    return int(top or 0)


def _tool_names(request: GenerationRequest, count: int) -> tuple[str, ...]:
    """The function names of the request's `tools`, when the mock is to call some."""
    if not count:
        return ()
    tools = request.body.get("tools")
    if request.endpoint != "chat" or tools is None:
        raise invalid_request(
            "Invalid 'mock.tool_calls': the mock calls the request's 'tools'; send some "
            "(chat completions only).",
            "mock.tool_calls",
            "invalid_value",
        )
    names: list[str] = []
    if isinstance(tools, list):
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(name, str) or not name:
                names = []
                break
            names.append(name)
    if not names:
        raise invalid_request(
            "Invalid 'tools': expected a non-empty array of "
            '{"type": "function", "function": {"name": ...}} objects.',
            "tools",
            "invalid_value",
        )
    return tuple(names)
