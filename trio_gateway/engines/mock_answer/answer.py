"""The mock engine's answer in the client's wire format, as vLLM's OpenAI server writes it.

The mock is an OpenAI-compatible engine like any other: it hands the gateway finished SSE
events (or, for a unary request, the finished JSON body), and the gateway relays them. The
scheduler decides when each step is due; `MockAnswer` decides what the step is (`plan.py`)
and encodes it (`stream.py`, `unary.py`, with `logprobs.py` and `tools.py` for their parts).

One step is one token of every choice still running (`n` choices advance in lockstep, one
event per choice, as vLLM sends them). The usage event is `choices: []` with `usage`
(`prompt_tokens_details.cached_tokens`, and `completion_tokens_details.reasoning_tokens`
when reasoning was asked for). The unary body is what merging the stream's deltas gives,
usage included.

`render` is pure with respect to what was already sent, and `commit` records a step once
the reader took it: a step the reader's full buffer refused is rendered again later.
The plain path (one choice, content only, no logprobs) is one `orjson.dumps` of the token
between two byte strings built once per request.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import orjson

from trio_gateway.engines.mock_answer.options import answer_options
from trio_gateway.engines.mock_answer.plan import (
    CONTENT,
    REASONING,
    TOOL_ARGS,
    TOOL_HEAD,
    Choice,
    Piece,
    Steps,
)
from trio_gateway.engines.mock_answer.stream import OPEN, ROLE, choice_event
from trio_gateway.engines.mock_answer.tools import plan_calls
from trio_gateway.engines.mock_answer.unary import unary_body
from trio_gateway.engines.mock_answer.words import WORD_COUNT, WORDS, prompt_token_count
from trio_gateway.generation import Chunk, GenerationRequest
from trio_gateway.openai import responses


class MockAnswer:
    def __init__(
        self,
        request: GenerationRequest,
        default_tokens: int = 100,
        created: int | None = None,
    ) -> None:
        """Raises `GatewayError` (validation) for what the mock cannot answer, before anything
        starts."""
        self.request = request
        self.chat = request.endpoint == "chat"
        self.stream = request.stream
        self.created = int(time.time()) if created is None else created
        # Like vLLM, the response id is the X-Request-Id when there is one: a relay that
        # passes it on gets the same answer as a direct call.
        self._id = request.trace_id or request.request_id
        self.response_id = responses.response_id(request.endpoint, self._id)
        self.prompt_tokens = prompt_token_count(request.prompt)
        self.cached_tokens = 0  # of prompt_tokens: the engine's prefix cache says
        options = answer_options(request, default_tokens)
        self._top = options.top
        self._reasoning = options.reasoning
        self._stop = request.stop
        self._steps = Steps(
            chat=self.chat,
            reasoning=options.reasoning,
            content=options.content,
            stop=request.stop,
            top=options.top,
            max_tokens=request.max_tokens,
        )
        self._base = (
            b"data: "
            + orjson.dumps(
                {
                    "id": self.response_id,
                    "object": "chat.completion.chunk" if self.chat else "text_completion",
                    "created": self.created,
                    "model": request.model,
                }
            )[:-1]  # drop the closing brace: the choices follow
        )
        seed = zlib.crc32(request.prompt.encode())
        self._choices = [
            self._plan(index, seed + index, options.calls) for index in range(request.n)
        ]
        self._first = self._choices[0]
        self._roles = b"".join(c.head + ROLE for c in self._choices) if self.chat else b""
        head = self._first.head
        self._content_prefix = head + (b'"delta":{"content":' if self.chat else b'"text":')
        self._content_suffix = (b"}" if self.chat else b"") + b',"logprobs":null' + OPEN
        self._fast = (
            request.n == 1 and not self._reasoning and not options.calls and self._top is None
        )
        self._started = False
        self._completion_tokens = 0
        self._reasoning_done = 0
        self._pending: list[tuple[Choice, Piece]] | None = None

    def _plan(self, index: int, seed: int, names: tuple[str, ...]) -> Choice:
        calls, tool_plan = plan_calls(self._id, index, seed, names)
        head = self._base + b',"choices":[{"index":%d,' % index
        return self._steps.choice(index, seed, calls, tool_plan, head)

    # --- rendering ----------------------------------------------------------------------

    def render(self) -> Chunk:
        """The next step, encoded; nothing advances until `commit`."""
        c = self._first
        step = c.taken
        if self._fast and step + 1 < c.steps:  # the plain path: one content token
            self._pending = None
            text = WORDS[(c.seed + step * 7) % WORD_COUNT]
            if step:
                text = " " + text
            if self._stop:
                candidate = c.tail + text
                for stop in self._stop:
                    if stop in candidate:
                        return self._render_step()  # this token ends the answer
            if not self.stream:
                return Chunk(text, 1, None, None, b"")
            payload = self._content_prefix + orjson.dumps(text) + self._content_suffix
            return Chunk(text, 1, None, None, self._roles + payload if not step else payload)
        return self._render_step()

    def commit(self, chunk: Chunk) -> None:
        """The reader took `chunk` (the last `render`): the answer moves on."""
        self._started = True
        self._completion_tokens += chunk.tokens
        pending = self._pending
        if pending is None:
            c = self._first
            c.taken += 1
            if self._stop:
                c.tail = self._steps.tail(c.tail + chunk.text)
            if not self.stream:
                c.content.append(chunk.text)
            return
        self._pending = None
        for c, piece in pending:
            self._apply(c, piece)

    def _render_step(self) -> Chunk:
        pending: list[tuple[Choice, Piece]] = []
        events: list[bytes] = []
        if self.stream and not self._started:
            events.append(self._roles)
        text = ""
        tokens = 0
        reasoning = 0
        done = True
        first_finish = self._first.final_reason
        for c in self._choices:
            if c.finished:
                continue
            piece = self._steps.piece(c)
            pending.append((c, piece))
            tokens += piece.tokens
            if piece.kind == REASONING:
                reasoning += 1
            if piece.finish is None:
                done = False
            if c.index == 0:
                first_finish = piece.finish
                if piece.kind == CONTENT:
                    text = piece.text
            if self.stream:
                events.append(choice_event(self.chat, c, piece))
        self._pending = pending
        if not done:
            return Chunk(text, tokens, None, None, b"".join(events))
        usage = self._usage(self._completion_tokens + tokens, self._reasoning_done + reasoning)
        if self.stream:
            if self.request.include_usage:
                events.append(
                    self._base + b',"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n"
                )
            payload = b"".join(events)
        else:
            payload = unary_body(
                response_id=self.response_id,
                chat=self.chat,
                created=self.created,
                model=self.request.model,
                top=self._top,
                choices=self._choices,
                pending={c.index: p for c, p in pending},
                usage=usage,
            )
        return Chunk(text, tokens, first_finish or "stop", self.prompt_tokens, payload)

    def _apply(self, c: Choice, piece: Piece) -> None:
        c.taken += 1
        if piece.finish is not None:
            c.finished = True
            c.final_reason = piece.finish
            c.stop_reason = piece.stop_reason
        kind = piece.kind
        keep = not self.stream
        if kind == CONTENT:
            if self._stop:
                c.tail = self._steps.tail(c.tail + piece.text)
            c.chars += len(piece.text)
            if keep:
                c.content.append(piece.text)
                if piece.logprobs is not None:
                    c.logprobs.append(piece.logprobs)
        elif kind == REASONING:
            self._reasoning_done += 1
            if keep:
                c.reasoning.append(piece.text)
        elif kind == TOOL_HEAD:
            c.arguments.append([])
        elif kind == TOOL_ARGS:
            c.arguments[piece.call].append(piece.text)

    def _usage(self, completion_tokens: int, reasoning_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = responses.usage(self.prompt_tokens, completion_tokens)
        usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self._reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        return usage
