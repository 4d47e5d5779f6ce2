"""The mock's tool calls: each a header delta (id, name) then argument fragments, one token
each, as vLLM streams them; merged into `message.tool_calls` for a unary answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from trio_gateway.engines.mock_answer.words import WORD_COUNT, WORDS


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    head: bytes  # the first delta's tool call, encoded
    fragments: tuple[str, ...]


def plan_calls(
    answer_id: str, index: int, seed: int, names: tuple[str, ...]
) -> tuple[tuple[ToolCall, ...], tuple[tuple[int, int], ...]]:
    """Choice `index`'s calls, and its tool steps: (call, fragment; -1: the header) each.

    Ids are derived from the answer's id, so a relay that passes the request id on gets the
    same calls as a direct request.
    """
    calls = []
    steps: list[tuple[int, int]] = []
    for number, name in enumerate(names):
        call_id = (
            "call_"
            + hashlib.blake2b(f"{answer_id}:{index}:{number}".encode(), digest_size=12).hexdigest()
        )
        count = 3 + (seed + number) % 4  # 3 to 6 fragments
        words = [WORDS[(seed + number * 11 + w * 3) % WORD_COUNT] for w in range(count - 2)]
        fragments = ('{"query": "', words[0], *(" " + w for w in words[1:]), '"}')
        head = orjson.dumps(
            {
                "index": number,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
        )
        calls.append(ToolCall(call_id, name, head, fragments))
        steps.append((number, -1))
        steps.extend((number, position) for position in range(len(fragments)))
    return tuple(calls), tuple(steps)


def head_delta(call: ToolCall) -> bytes:
    return b'"delta":{"tool_calls":[' + call.head + b"]}"


def arguments_delta(number: int, fragment: str) -> bytes:
    return (
        b'"delta":{"tool_calls":[{"index":%d,"function":{"arguments":' % number
        + orjson.dumps(fragment)
        + b"}}]}"
    )


def merged_calls(calls: tuple[ToolCall, ...], arguments: list[list[str]]) -> list[dict[str, Any]]:
    """The unary message's `tool_calls`: each call begun, its fragments joined."""
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": "".join(parts)},
        }
        for call, parts in zip(calls, arguments, strict=False)
    ]
