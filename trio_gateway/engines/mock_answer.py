"""The mock engine's answer in the client's wire format, as vLLM's OpenAI server writes it.

The mock is an OpenAI-compatible engine like any other: it hands the gateway finished SSE
events (or, for a unary request, the finished JSON body), and the gateway relays them. The
scheduler decides when each step is due; this decides what the step is and how it looks.

One step is one token of every choice still running (`n` choices advance in lockstep, one
event per choice, as vLLM sends them). A choice's tokens are, in order: `mock.reasoning_tokens`
`reasoning_content` deltas, the content tokens (`mock.tokens`, else the engine's default),
then `mock.tool_calls` calls of the request's `tools` (a header delta with the call's id and
name, then argument fragments, one token each). `max_tokens` caps the whole (finish
"length"); a stop string ends a choice's content (finish "stop"); tool calls finish
"tool_calls". Chat `logprobs`/`top_logprobs` and completions `logprobs` give every content
token deterministic log-probabilities. The unary body is what merging the stream's deltas
gives, usage included.

Shapes are vLLM's (`ChatCompletionStreamResponse` dumped with exclude_unset): each event has
one choice with its `index`; a role event per choice opens a chat stream; the last token's
event carries `finish_reason` and `stop_reason` (the stop string, or null); the usage event
is `choices: []` with `usage` (`prompt_tokens_details.cached_tokens`, and
`completion_tokens_details.reasoning_tokens` when reasoning was asked for).

`render` is pure with respect to what was already sent, and `commit` records a step once
the reader took it: a step the reader's full buffer refused is rendered again later.
The plain path (one choice, content only, no logprobs) is one `orjson.dumps` of the token
between two byte strings built once per request.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from trio_gateway.errors import invalid_request
from trio_gateway.generation import Chunk, GenerationRequest
from trio_gateway.openai import responses

_VOCABULARY = (
    "The quick brown fox jumps over the lazy dog while a patient engine streams tokens "
    "through bounded channels to readers that may be slow or gone and every scope that "
    "starts work also ends it cleanly so nothing is left running after its request"
)
WORDS = tuple(_VOCABULARY.split())
_WORD_COUNT = len(WORDS)
_DISTINCT = tuple(dict.fromkeys(WORDS))  # the alternatives of top logprobs: no repeats

MAX_N = 128
MAX_TOP_LOGPROBS = 20  # chat `top_logprobs` (vLLM's default max_logprobs; OpenAI's bound)
MAX_COMPLETION_LOGPROBS = 5  # completions `logprobs` (OpenAI's bound)

# What one step of one choice is.
_REASONING, _CONTENT, _TOOL_HEAD, _TOOL_ARGS, _EMPTY = range(5)


def prompt_token_count(prompt: str) -> int:
    """OpenAI's rule of thumb (four characters a token): deterministic, tokenizer-free."""
    return max(1, (len(prompt) + 3) // 4)


def token_text(seed: int, index: int) -> str:
    """The content token `index` of the choice seeded `seed` (choice i: the prompt's seed + i)."""
    word = WORDS[(seed + index * 7) % _WORD_COUNT]
    return word if index == 0 else " " + word


def reasoning_text(seed: int, index: int) -> str:
    word = WORDS[(seed + 3 + index * 5) % _WORD_COUNT]
    return word if index == 0 else " " + word


class _Piece(NamedTuple):
    """One choice's share of one step."""

    kind: int
    text: str  # reasoning or content text, or an arguments fragment
    call: int  # the tool call's index
    finish: str | None
    stop_reason: str | None
    logprobs: Any  # chat: one content entry; completions: (token, logprob, top, offset)
    tokens: int


@dataclass(frozen=True, slots=True)
class _Call:
    id: str
    name: str
    head: bytes  # the first delta's tool call, encoded
    fragments: tuple[str, ...]


@dataclass(slots=True)
class _Choice:
    index: int
    seed: int
    steps: int  # every step this choice will take, unless a stop string ends it sooner
    finish_reason: str  # the reason when all `steps` are taken
    calls: tuple[_Call, ...]
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


_ROLE = b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
_OPEN = b',"finish_reason":null}]}\n\n'


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
        self._top = _logprobs_option(request)
        self._reasoning = (mock.reasoning_tokens if mock else None) or 0
        call_count = (mock.tool_calls if mock else None) or 0
        tools = _tool_names(request, call_count)
        if self._reasoning and not self.chat:
            raise invalid_request(
                "Invalid 'mock.reasoning_tokens': reasoning is a chat completions feature.",
                "mock.reasoning_tokens",
                "invalid_value",
            )
        self._content = default_tokens if mock is None or mock.tokens is None else mock.tokens
        self._stop = request.stop
        # A stop string that ends in a new token starts at most this far back in the text.
        self._keep = max((len(stop) for stop in self._stop), default=1) - 1
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
        calls = tuple(tools[number % len(tools)] for number in range(call_count)) if tools else ()
        self._choices = [self._plan(index, seed + index, calls) for index in range(request.n)]
        self._first = self._choices[0]
        self._roles = b"".join(c.head + _ROLE for c in self._choices) if self.chat else b""
        head = self._first.head
        self._content_prefix = head + (b'"delta":{"content":' if self.chat else b'"text":')
        self._content_suffix = (b"}" if self.chat else b"") + b',"logprobs":null' + _OPEN
        self._fast = request.n == 1 and not self._reasoning and not tools and self._top is None
        self._started = False
        self._completion_tokens = 0
        self._reasoning_done = 0
        self._pending: list[tuple[_Choice, _Piece]] | None = None

    # --- the plan -----------------------------------------------------------------------

    def _plan(self, index: int, seed: int, tools: tuple[str, ...]) -> _Choice:
        calls = []
        tool_plan: list[tuple[int, int]] = []
        for number, name in enumerate(tools):
            call_id = (
                "call_"
                + hashlib.blake2b(
                    f"{self._id}:{index}:{number}".encode(), digest_size=12
                ).hexdigest()
            )
            count = 3 + (seed + number) % 4  # 3 to 6 fragments
            words = [WORDS[(seed + number * 11 + w * 3) % _WORD_COUNT] for w in range(count - 2)]
            fragments = ('{"query": "', words[0], *(" " + w for w in words[1:]), '"}')
            head = orjson.dumps(
                {
                    "index": number,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
            )
            calls.append(_Call(call_id, name, head, fragments))
            tool_plan.append((number, -1))
            tool_plan.extend((number, position) for position in range(len(fragments)))
        steps = self._reasoning + self._content + len(tool_plan)
        finish = "tool_calls" if calls else "stop"
        limit = self.request.max_tokens
        if limit is not None and limit <= steps:
            steps, finish = limit, "length"
        head = self._base + b',"choices":[{"index":%d,' % index
        return _Choice(index, seed, steps, finish, tuple(calls), tuple(tool_plan), head)

    def _piece(self, c: _Choice) -> _Piece:
        """What choice `c` says in its next step (pure)."""
        step = c.taken
        if c.steps == 0:
            return _Piece(_EMPTY, "", 0, c.finish_reason, None, None, 0)
        finish = c.finish_reason if step + 1 >= c.steps else None
        if step < self._reasoning:
            return _Piece(_REASONING, reasoning_text(c.seed, step), 0, finish, None, None, 1)
        position = step - self._reasoning
        if position < self._content:
            text = token_text(c.seed, position)
            stop_reason = None
            if self._stop:
                candidate = c.tail + text
                cut = -1
                for stop in self._stop:
                    found = candidate.find(stop)
                    if found >= 0 and (cut < 0 or found < cut):
                        cut, stop_reason = found, stop
                if cut >= 0:
                    text = candidate[len(c.tail) : cut] if cut > len(c.tail) else ""
                    finish = "stop"
            if not text:
                return _Piece(_EMPTY, "", 0, finish, stop_reason, None, 1)
            logprobs = None if self._top is None else self._logprobs(c, position, text)
            return _Piece(_CONTENT, text, 0, finish, stop_reason, logprobs, 1)
        number, fragment = c.tool_plan[position - self._content]
        if fragment < 0:
            return _Piece(_TOOL_HEAD, "", number, finish, None, None, 1)
        text = c.calls[number].fragments[fragment]
        return _Piece(_TOOL_ARGS, text, number, finish, None, None, 1)

    def _logprobs(self, c: _Choice, position: int, token: str) -> Any:
        """Deterministic log-probabilities of a content token: the chosen one ranks first."""
        assert self._top is not None
        base = 0.01 + ((c.seed * 31 + position * 17) % 89) / 100
        chosen = -round(base, 4)
        alternatives: list[tuple[str, float]] = []
        wanted = self._top - 1 if self.chat else self._top
        start = (c.seed + position * 7 + 1) % len(_DISTINCT)
        for offset in range(len(_DISTINCT)):
            if len(alternatives) >= wanted:
                break
            word = _DISTINCT[(start + offset) % len(_DISTINCT)]
            candidate = word if position == 0 else " " + word
            if candidate != token:
                rank = len(alternatives) + 1
                alternatives.append((candidate, -round(base + 0.75 * rank, 4)))
        if not self.chat:  # vLLM: the chosen token and `logprobs` more, as a dict
            top = {token: chosen, **dict(alternatives)}
            return (token, chosen, top, c.chars)
        ranked = [(token, chosen), *alternatives] if self._top else []
        return {
            "token": token,
            "logprob": chosen,
            "bytes": list(token.encode()),
            "top_logprobs": [
                {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked
            ],
        }

    # --- rendering ----------------------------------------------------------------------

    def render(self) -> Chunk:
        """The next step, encoded; nothing advances until `commit`."""
        c = self._first
        step = c.taken
        if self._fast and step + 1 < c.steps:  # the plain path: one content token
            self._pending = None
            text = WORDS[(c.seed + step * 7) % _WORD_COUNT]
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
                c.tail = self._tail(c.tail + chunk.text)
            if not self.stream:
                c.content.append(chunk.text)
            return
        self._pending = None
        for c, piece in pending:
            self._apply(c, piece)

    def _render_step(self) -> Chunk:
        pending: list[tuple[_Choice, _Piece]] = []
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
            piece = self._piece(c)
            pending.append((c, piece))
            tokens += piece.tokens
            if piece.kind == _REASONING:
                reasoning += 1
            if piece.finish is None:
                done = False
            if c.index == 0:
                first_finish = piece.finish
                if piece.kind == _CONTENT:
                    text = piece.text
            if self.stream:
                events.append(self._event(c, piece))
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
            payload = self._body(dict((c.index, p) for c, p in pending), usage)
        return Chunk(text, tokens, first_finish or "stop", self.prompt_tokens, payload)

    def _event(self, c: _Choice, piece: _Piece) -> bytes:
        kind = piece.kind
        if not self.chat:
            delta = b'"text":' + orjson.dumps(piece.text)
        elif kind == _CONTENT:
            delta = b'"delta":{"content":' + orjson.dumps(piece.text) + b"}"
        elif kind == _REASONING:
            delta = b'"delta":{"reasoning_content":' + orjson.dumps(piece.text) + b"}"
        elif kind == _TOOL_HEAD:
            delta = b'"delta":{"tool_calls":[' + c.calls[piece.call].head + b"]}"
        elif kind == _TOOL_ARGS:
            delta = (
                b'"delta":{"tool_calls":[{"index":%d,"function":{"arguments":' % piece.call
                + orjson.dumps(piece.text)
                + b"}}]}"
            )
        else:
            delta = b'"delta":{}'
        logprobs = piece.logprobs
        if logprobs is None:
            encoded = b"null"
        elif self.chat:
            encoded = orjson.dumps({"content": [logprobs]})
        else:
            token, chosen, top, offset = logprobs
            encoded = orjson.dumps(
                {
                    "tokens": [token],
                    "token_logprobs": [chosen],
                    "top_logprobs": [top],
                    "text_offset": [offset],
                }
            )
        if piece.finish is None:
            tail = _OPEN
        else:
            tail = (
                b',"finish_reason":'
                + orjson.dumps(piece.finish)
                + b',"stop_reason":'
                + orjson.dumps(piece.stop_reason)
                + b"}]}\n\n"
            )
        return c.head + delta + b',"logprobs":' + encoded + tail

    def _apply(self, c: _Choice, piece: _Piece) -> None:
        c.taken += 1
        if piece.finish is not None:
            c.finished = True
            c.final_reason = piece.finish
            c.stop_reason = piece.stop_reason
        kind = piece.kind
        keep = not self.stream
        if kind == _CONTENT:
            if self._stop:
                c.tail = self._tail(c.tail + piece.text)
            c.chars += len(piece.text)
            if keep:
                c.content.append(piece.text)
                if piece.logprobs is not None:
                    c.logprobs.append(piece.logprobs)
        elif kind == _REASONING:
            self._reasoning_done += 1
            if keep:
                c.reasoning.append(piece.text)
        elif kind == _TOOL_HEAD:
            c.arguments.append([])
        elif kind == _TOOL_ARGS:
            c.arguments[piece.call].append(piece.text)

    def _tail(self, text: str) -> str:
        return text[-self._keep :] if self._keep else ""

    def _usage(self, completion_tokens: int, reasoning_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = responses.usage(self.prompt_tokens, completion_tokens)
        usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self._reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        return usage

    def _body(self, pending: dict[int, _Piece], usage: dict[str, Any]) -> bytes:
        """The unary answer: every choice's deltas merged, the last step's included."""
        choices = []
        for c in self._choices:
            content = list(c.content)
            reasoning = list(c.reasoning)
            logprobs = list(c.logprobs)
            arguments = [list(a) for a in c.arguments]
            finish, stop_reason = c.final_reason, c.stop_reason
            piece = pending.get(c.index)
            if piece is not None:
                finish, stop_reason = piece.finish, piece.stop_reason
                if piece.kind == _CONTENT:
                    content.append(piece.text)
                    if piece.logprobs is not None:
                        logprobs.append(piece.logprobs)
                elif piece.kind == _REASONING:
                    reasoning.append(piece.text)
                elif piece.kind == _TOOL_HEAD:
                    arguments.append([])
                elif piece.kind == _TOOL_ARGS:
                    arguments[piece.call].append(piece.text)
            text = "".join(content)
            choice: dict[str, Any] = {"index": c.index}
            if self.chat:
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if reasoning:
                    message["reasoning_content"] = "".join(reasoning)
                if arguments:
                    message["content"] = text or None
                    message["tool_calls"] = [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": "".join(parts)},
                        }
                        for call, parts in zip(c.calls, arguments, strict=False)
                    ]
                choice["message"] = message
                choice["logprobs"] = None if self._top is None else {"content": logprobs}
            else:
                choice["text"] = text
                choice["logprobs"] = None if self._top is None else _merged_completion(logprobs)
            choice["finish_reason"] = finish
            choice["stop_reason"] = stop_reason
            choices.append(choice)
        return orjson.dumps(
            {
                "id": self.response_id,
                "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created,
                "model": self.request.model,
                "choices": choices,
                "usage": usage,
            }
        )


def _merged_completion(entries: list[Any]) -> dict[str, Any]:
    return {
        "tokens": [token for token, _, _, _ in entries],
        "token_logprobs": [chosen for _, chosen, _, _ in entries],
        "top_logprobs": [top for _, _, top, _ in entries],
        "text_offset": [offset for _, _, _, offset in entries],
    }


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
