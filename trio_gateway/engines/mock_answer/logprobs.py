"""Deterministic log-probabilities of content tokens, in chat's and completions' shapes.

Chat (`logprobs: true`, `top_logprobs: k`): one `content` entry per token with the chosen
token ranked first among `k`. Completions (`logprobs: k`): vLLM's parallel lists, the top
alternatives a dict holding the chosen token and `k` more.
"""

from __future__ import annotations

from typing import Any

import orjson

from trio_gateway.engines.mock_answer.words import DISTINCT


def token_logprobs(chat: bool, top: int, seed: int, position: int, token: str, offset: int) -> Any:
    """Chat: one `content` entry; completions: (token, logprob, top, text offset)."""
    base = 0.01 + ((seed * 31 + position * 17) % 89) / 100
    chosen = -round(base, 4)
    alternatives: list[tuple[str, float]] = []
    wanted = top - 1 if chat else top
    start = (seed + position * 7 + 1) % len(DISTINCT)
    for step in range(len(DISTINCT)):
        if len(alternatives) >= wanted:
            break
        word = DISTINCT[(start + step) % len(DISTINCT)]
        candidate = word if position == 0 else " " + word
        if candidate != token:
            rank = len(alternatives) + 1
            alternatives.append((candidate, -round(base + 0.75 * rank, 4)))
    if not chat:  # vLLM: the chosen token and `logprobs` more, as a dict
        return (token, chosen, {token: chosen, **dict(alternatives)}, offset)
    ranked = [(token, chosen), *alternatives] if top else []
    return {
        "token": token,
        "logprob": chosen,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked
        ],
    }


def event_logprobs(chat: bool, entry: Any) -> bytes:
    """One event's `logprobs` value, for one token's `entry` (None: `null`)."""
    if entry is None:
        return b"null"
    if chat:
        return orjson.dumps({"content": [entry]})
    token, chosen, top, offset = entry
    return orjson.dumps(
        {
            "tokens": [token],
            "token_logprobs": [chosen],
            "top_logprobs": [top],
            "text_offset": [offset],
        }
    )


def merged_logprobs(chat: bool, top: int | None, entries: list[Any]) -> Any:
    """A unary choice's `logprobs`: every content token's entry."""
    if top is None:
        return None
    if chat:
        return {"content": entries}
    return {
        "tokens": [token for token, _, _, _ in entries],
        "token_logprobs": [chosen for _, chosen, _, _ in entries],
        "top_logprobs": [alternatives for _, _, alternatives, _ in entries],
        "text_offset": [offset for _, _, _, offset in entries],
    }
