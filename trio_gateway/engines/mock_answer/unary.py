"""The mock's unary answer: what merging its stream's deltas gives, as vLLM answers unary.

Built once, at the last step, from what each choice kept of its steps and the last step's
pieces (not yet applied: the reader may still refuse that step).
"""

from __future__ import annotations

from typing import Any

import orjson

from trio_gateway.engines.mock_answer.logprobs import merged_logprobs
from trio_gateway.engines.mock_answer.plan import (
    CONTENT,
    REASONING,
    TOOL_ARGS,
    TOOL_HEAD,
    Choice,
    Piece,
)
from trio_gateway.engines.mock_answer.tools import merged_calls


def unary_body(
    *,
    response_id: str,
    chat: bool,
    created: int,
    model: str,
    top: int | None,
    choices: list[Choice],
    pending: dict[int, Piece],
    usage: dict[str, Any],
) -> bytes:
    """The unary answer: every choice's deltas merged, the last step's (`pending`) included."""
    merged = []
    for c in choices:
        content = list(c.content)
        reasoning = list(c.reasoning)
        logprobs = list(c.logprobs)
        arguments = [list(a) for a in c.arguments]
        finish, stop_reason = c.final_reason, c.stop_reason
        piece = pending.get(c.index)
        if piece is not None:
            finish, stop_reason = piece.finish, piece.stop_reason
            if piece.kind == CONTENT:
                content.append(piece.text)
                if piece.logprobs is not None:
                    logprobs.append(piece.logprobs)
            elif piece.kind == REASONING:
                reasoning.append(piece.text)
            elif piece.kind == TOOL_HEAD:
                arguments.append([])
            elif piece.kind == TOOL_ARGS:
                arguments[piece.call].append(piece.text)
        text = "".join(content)
        choice: dict[str, Any] = {"index": c.index}
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if reasoning:
                message["reasoning_content"] = "".join(reasoning)
            if arguments:
                message["content"] = text or None
                message["tool_calls"] = merged_calls(c.calls, arguments)
            choice["message"] = message
        else:
            choice["text"] = text
        choice["logprobs"] = merged_logprobs(chat, top, logprobs)
        choice["finish_reason"] = finish
        choice["stop_reason"] = stop_reason
        merged.append(choice)
    return orjson.dumps(
        {
            "id": response_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": merged,
            "usage": usage,
        }
    )
