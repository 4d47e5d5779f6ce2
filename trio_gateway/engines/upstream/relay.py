"""An upstream's answer read as the gateway needs it, its bytes passed on untouched (no I/O).

The client gets the upstream's own events: every field an engine sends (reasoning, tool-call
deltas, logprobs, all `n` choices, usage details, fields nobody here knows) arrives as it
was written, with no decode and re-encode per token. The gateway reads only what it needs:
whether an event finished a choice, usage, an in-band error, and a token count. Most events
are plain deltas, recognised by byte scans; only events that may hold one of those facts
are parsed as JSON (a scan can only send an event to the parser, never decide a fact).

The byte scans are a fast path beside the general decoder (`openai/sse.py`'s `SSEDecoder`),
never a second parser: `plain_deltas` takes a read whole only when the decoder is between
events and the read is nothing but `data: {...}` lines each ended by a blank line, with \n
line ends only, where the decoder would find exactly those events with nothing to read in
them. Every other read (the role event, a finish, usage, an error, an event split across
reads, \r\n line ends, comments) goes through the decoder, and its events through the
same scans before any is parsed.

What the relay changes: the model's name, when the client asked for an alias (the
`"model":"..."` member of each event, a byte replace: model_alias.py); it drops the
upstream's `data: [DONE]` (the gateway writes its own, after an error event when the stream
failed) and the usage-only event when the gateway asked for usage on its own account (the
client did not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from trio_gateway.engines.upstream.errors import inband_error, malformed
from trio_gateway.errors import GatewayError
from trio_gateway.generation import Chunk
from trio_gateway.openai.sse import SSEDecodeError, SSEDecoder

DONE_VALUE = b"[DONE]"
# Delta fields that are output: each makes its choice's event count as a token.
_OUTPUT_FIELDS = ("content", "reasoning_content", "reasoning", "tool_calls", "function_call")


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def plain_deltas(data: bytes) -> int:
    """How many events `data` holds if it is nothing but whole `data: {...}` events with
    no fact the gateway reads (the common read: one or more token deltas), else 0.

    A raw newline cannot occur inside JSON, so newlines frame the events exactly: each
    event is one `data: ` line and a blank line (a \r anywhere is a line end to the
    decoder: such a read is left to it). Then the markers `_needs_parse` looks for
    are counted over the whole read at once, in C, instead of event by event.
    """
    events = data.count(b"\n\n")
    if (
        not events
        or not data.endswith(b"\n\n")
        or not data.startswith(b"data: {")
        or data.count(b"\n") != 2 * events
        or data.count(b"\n\ndata: {") != events - 1
        or 0x0D in data  # an int: one memchr
        or _needs_parse(data)
    ):
        return 0
    return events


def _needs_parse(value: bytes) -> bool:
    """Whether an event may carry a fact the gateway reads (else it is a plain delta).

    A JSON string cannot hold an unescaped quote, so a key like `"usage"` cannot appear
    inside token text; it can appear as a value (a logprobs token), which only costs a parse.
    """
    if b'"usage"' in value or b'"error"' in value or b'"role"' in value:
        return True
    finishes = value.count(b'"finish_reason"')
    return finishes != value.count(b'"finish_reason":null') + value.count(b'"finish_reason": null')


class StreamRelay:
    """One upstream SSE body: `feed` each read, `final` once it ends."""

    def __init__(
        self, name: str, *, forward_usage: bool, rename: Callable[[bytes], bytes] | None = None
    ) -> None:
        self.name = name
        self.forward_usage = forward_usage
        # The served model name put back into the events (model_alias.py), when aliased.
        self.rename = rename
        self.done = False  # `[DONE]` seen: nothing after it counts
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.tokens = 0  # counted so far, in the chunks handed out
        # The stream's failure (an in-band error, a broken event), raised by `check` once
        # the events before it in the same read were handed on: the client gets those.
        self.failure: GatewayError | None = None
        self._decoder = SSEDecoder()

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def feed(self, data: bytes) -> Chunk | None:
        """The client's bytes and the facts in one read; None when it holds no event.

        After a failure (see `check`) or `[DONE]`, nothing more is read.
        """
        if self.done or self.failure is not None:
            return None
        if self._decoder.idle and (plain := plain_deltas(data)):
            self.tokens += plain
            return Chunk(tokens=plain, payload=data if self.rename is None else self.rename(data))
        try:
            events = self._decoder.feed(data)
        except SSEDecodeError as error:
            self.failure = malformed(self.name, str(error))
            return None
        if not events:
            return None
        kept: list[bytes] = []
        tokens = 0
        for event in events:
            value = event.value
            try:
                if event.field == b"error":  # llama.cpp's `error: {...}`
                    raise inband_error(self._loads(value))
                if value == DONE_VALUE:
                    self.done = True
                    break
                if not _needs_parse(value):
                    tokens += 1
                    kept.append(event.raw)
                    continue
                counted, keep = self._read_event(self._loads(value))
            except GatewayError as error:
                self.failure = error
                break
            tokens += counted
            if keep:
                kept.append(event.raw)
        self.tokens += tokens
        payload = kept[0] if len(kept) == 1 else b"".join(kept)
        if not payload and not tokens:
            return None
        if self.rename is not None:
            payload = self.rename(payload)
        return Chunk(tokens=tokens, payload=payload)

    def final(self) -> Chunk:
        """The last chunk, once the body ended (with or without `[DONE]`)."""
        if self.finish_reason is None:
            raise malformed(self.name, "a stream that ended without a finish_reason")
        extra = 0
        if self.completion_tokens is not None:
            # A delta may hold several tokens (detokenizer hold-back, speculative decoding):
            # the upstream's own count wins, the difference rides on the last chunk.
            extra = max(self.completion_tokens - self.tokens, 0)
        self.tokens += extra
        return Chunk(
            tokens=extra, finish_reason=self.finish_reason, prompt_tokens=self.prompt_tokens
        )

    def _loads(self, value: bytes) -> Any:
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise malformed(self.name, "an event that is not JSON") from None

    def _read_event(self, event: Any) -> tuple[int, bool]:
        """(tokens in it, whether the client gets it) for an event that was parsed."""
        if not isinstance(event, dict):
            raise malformed(self.name, "an event that is not a JSON object")
        if "error" in event or event.get("object") == "error":
            raise inband_error(event)
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = _as_int(usage.get("prompt_tokens"))
            self.completion_tokens = _as_int(usage.get("completion_tokens"))
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices:
            # Usage alone: the gateway asked for it; the client only if it did too.
            return 0, self.forward_usage or not isinstance(usage, dict)
        tokens = 0
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and (
                self.finish_reason is None or choice.get("index", 0) == 0
            ):
                self.finish_reason = reason
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if any(delta.get(name) for name in _OUTPUT_FIELDS):
                    tokens += 1
            elif choice.get("text"):
                tokens += 1
        return tokens, True


def _answer_object(name: str, body: bytes) -> dict[str, Any]:
    """A whole answer's JSON object; an error the upstream answered with 200 is raised."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed(name, "a response that is not JSON") from None
    if not isinstance(document, dict):
        raise malformed(name, "a response that is not a JSON object")
    if "error" in document or document.get("object") == "error":
        raise inband_error(document)
    return document


def unary_chunk(name: str, body: bytes) -> Chunk:
    """An upstream's unary answer as the one chunk that carries it whole."""
    document = _answer_object(name, body)
    choices = document.get("choices")
    reasons = [
        choice.get("finish_reason")
        for choice in (choices if isinstance(choices, list) else ())
        if isinstance(choice, dict)
    ]
    finish_reason = next((reason for reason in reasons if isinstance(reason, str)), None)
    if finish_reason is None:
        raise malformed(name, "an answer without a finish_reason")
    usage = document.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    completion_tokens = _as_int(usage.get("completion_tokens"))
    return Chunk(
        tokens=completion_tokens if completion_tokens is not None else len(reasons),
        finish_reason=finish_reason,
        prompt_tokens=_as_int(usage.get("prompt_tokens")),
        payload=body,
    )


def whole_answer_chunk(name: str, body: bytes) -> Chunk:
    """An upstream's answer to a request that generates nothing (embeddings, vLLM's
    (de)tokenizing) as the one chunk that ends the request: its bytes untouched, and what
    the gateway counts: the prompt's tokens where the answer says them (`usage`, or
    `/tokenize`'s `count`), no output tokens."""
    document = _answer_object(name, body)
    usage = document.get("usage")
    prompt_tokens = _as_int(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
    if prompt_tokens is None:
        prompt_tokens = _as_int(document.get("count"))
    return Chunk(tokens=0, finish_reason="stop", prompt_tokens=prompt_tokens, payload=body)
