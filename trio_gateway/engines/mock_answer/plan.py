"""What each choice of the mock's answer says at each step, before anything is encoded.

A choice's tokens are, in order: the reasoning tokens, the content tokens (cut short by a
stop string, finish "stop"), then its tool calls' steps (finish "tool_calls"); `max_tokens`
caps the whole (finish "length"). `Steps.piece` is pure: the answer applies a piece only
once the reader took the step it is part of.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from trio_gateway.engines.mock_answer.logprobs import token_logprobs
from trio_gateway.engines.mock_answer.tools import ToolCall
from trio_gateway.engines.mock_answer.words import reasoning_text, token_text

# What one step of one choice is.
REASONING, CONTENT, TOOL_HEAD, TOOL_ARGS, EMPTY = range(5)


class Piece(NamedTuple):
    """One choice's share of one step."""

    kind: int
    text: str  # reasoning or content text, or an arguments fragment
    call: int  # the tool call's index
    finish: str | None
    stop_reason: str | None
    logprobs: Any  # chat: one content entry; completions: (token, logprob, top, offset)
    tokens: int


@dataclass(slots=True)
class Choice:
    index: int
    seed: int
    steps: int  # every step this choice will take, unless a stop string ends it sooner
    finish_reason: str  # the reason when all `steps` are taken
    calls: tuple[ToolCall, ...]
    tool_plan: tuple[tuple[int, int], ...]  # per tool step: (call, fragment; -1: the header)
    head: bytes  # `data: {...,"choices":[{"index":i,`
    taken: int = 0
    finished: bool = False
    final_reason: str | None = None
    stop_reason: str | None = None
    tail: str = ""  # the content's last characters, as many as a stop string can reach back
    chars: int = 0  # the content's length so far (completions' text_offset)
    # What a unary body is merged from (kept only for unary requests).
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    arguments: list[list[str]] = field(default_factory=list)


class Steps:
    """The steps every choice of one answer takes (their words differ by seed)."""

    __slots__ = ("chat", "content", "keep", "max_tokens", "reasoning", "stop", "top")

    def __init__(
        self,
        *,
        chat: bool,
        reasoning: int,
        content: int,
        stop: tuple[str, ...],
        top: int | None,
        max_tokens: int | None,
    ) -> None:
        self.chat = chat
        self.reasoning = reasoning  # reasoning tokens
        self.content = content  # content tokens, unless a stop string ends them
        self.stop = stop
        self.top = top  # logprobs alternatives; None: no logprobs
        self.max_tokens = max_tokens
        # A stop string that ends in a new token starts at most this far back in the text.
        self.keep = max((len(s) for s in stop), default=1) - 1

    def tail(self, text: str) -> str:
        """What of the content a stop string may still reach back into."""
        return text[-self.keep :] if self.keep else ""

    def choice(
        self,
        index: int,
        seed: int,
        calls: tuple[ToolCall, ...],
        tool_plan: tuple[tuple[int, int], ...],
        head: bytes,
    ) -> Choice:
        steps = self.reasoning + self.content + len(tool_plan)
        finish = "tool_calls" if calls else "stop"
        limit = self.max_tokens
        if limit is not None and limit <= steps:
            steps, finish = limit, "length"
        return Choice(index, seed, steps, finish, calls, tool_plan, head)

    def piece(self, c: Choice) -> Piece:
        """What choice `c` says in its next step (pure)."""
        step = c.taken
        if c.steps == 0:
            return Piece(EMPTY, "", 0, c.finish_reason, None, None, 0)
        finish = c.finish_reason if step + 1 >= c.steps else None
        if step < self.reasoning:
            return Piece(REASONING, reasoning_text(c.seed, step), 0, finish, None, None, 1)
        position = step - self.reasoning
        if position < self.content:
            text = token_text(c.seed, position)
            stop_reason = None
            if self.stop:
                candidate = c.tail + text
                cut = -1
                for stop in self.stop:
                    found = candidate.find(stop)
                    if found >= 0 and (cut < 0 or found < cut):
                        cut, stop_reason = found, stop
                if cut >= 0:
                    text = candidate[len(c.tail) : cut] if cut > len(c.tail) else ""
                    finish = "stop"
            if not text:
                return Piece(EMPTY, "", 0, finish, stop_reason, None, 1)
            logprobs = None
            if self.top is not None:
                logprobs = token_logprobs(self.chat, self.top, c.seed, position, text, c.chars)
            return Piece(CONTENT, text, 0, finish, stop_reason, logprobs, 1)
        number, fragment = c.tool_plan[position - self.content]
        if fragment < 0:
            return Piece(TOOL_HEAD, "", number, finish, None, None, 1)
        text = c.calls[number].fragments[fragment]
        return Piece(TOOL_ARGS, text, number, finish, None, None, 1)
