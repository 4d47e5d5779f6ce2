"""Server-sent events of OpenAI streams: an encoder (the mock's) and a decoder (for relays).

hypercorn's per-event cost is the gateway's ceiling (DESIGN §6), so the encoder's per-token
work is one `orjson.dumps` of the text between two byte strings built once per request, and
the decoder keeps each event's own bytes so a relay passes them on without re-encoding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson

from trio_gateway.generation import Chunk, Endpoint
from trio_gateway.openai.errors import APIError

DONE = b"data: [DONE]\n\n"


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


class StreamEncoder:
    """Encodes one stream's chunks as SSE events (`chat.completion.chunk` or `text_completion`)."""

    def __init__(self, endpoint: Endpoint, response_id: str, model: str, created: int) -> None:
        self.endpoint = endpoint
        head = orjson.dumps(
            {
                "id": response_id,
                "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
                "created": created,
                "model": model,
            }
        )[:-1]  # drop the closing brace: the choices follow
        self._head = b"data: " + head
        if endpoint == "chat":
            self._content_prefix = self._head + b',"choices":[{"index":0,"delta":{"content":'
            self._content_suffix = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._content_prefix = self._head + b',"choices":[{"index":0,"text":'
            self._content_suffix = b',"logprobs":null,"finish_reason":null}]}\n\n'

    def role(self) -> bytes:
        """The opening chat event that announces the assistant role (as OpenAI and vLLM send)."""
        if self.endpoint != "chat":
            return b""
        return self._head + (
            b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def content(self, text: str) -> bytes:
        return self._content_prefix + orjson.dumps(text) + self._content_suffix

    def finish(self, reason: str) -> bytes:
        choice = b'{"index":0,"delta":{}' if self.endpoint == "chat" else b'{"index":0,"text":""'
        return (
            self._head
            + b',"choices":['
            + choice
            + b',"logprobs":null,"finish_reason":'
            + orjson.dumps(reason)
            + b"}]}\n\n"
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        usage = orjson.dumps(
            {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        )
        return self._head + b',"choices":[],"usage":' + usage + b"}\n\n"

    def chunks(self, chunks: Iterable[Chunk]) -> bytes:
        """All events for a batch of chunks, as one body write."""
        out = []
        for chunk in chunks:
            if chunk.text:
                out.append(self.content(chunk.text))
            if chunk.finish_reason is not None:
                out.append(self.finish(chunk.finish_reason))
        return b"".join(out)


def error_event(error: APIError) -> bytes:
    """The in-band error of a stream whose headers are gone; `[DONE]` must follow it."""
    return frame(orjson.dumps(error.stream_frame_body()))


class SSEEvent(NamedTuple):
    raw: bytes  # the event's bytes as received, its blank line included: what a relay sends
    field: bytes  # b"data", or b"error" (llama.cpp's server writes `error: {...}` lines)
    value: bytes  # the field's value (several `data:` lines joined by b"\n")


class SSEDecodeError(Exception):
    pass


class SSEDecoder:
    """Splits an SSE byte stream into events, fed bytes as they arrive (no I/O here).

    Servers end lines with \n (vLLM, SGLang, llama.cpp's C++ server) or \r\n (Python's
    sse-starlette, as llama-cpp-python uses); the first line end says which. Lines are split
    on those bytes only: U+2028 and friends are text inside tokens. Events with neither a
    `data` nor an `error` field (`: ping` comments, `retry:`) are dropped.
    """

    def __init__(self, max_event_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_event_bytes = max_event_bytes
        self._buffer = b""
        self._line_end: bytes | None = None
        self._event_end = b"\n\n"

    @property
    def idle(self) -> bool:
        """Between events, with \n line ends: the next bytes start an event of their own."""
        return not self._buffer and self._line_end == b"\n"

    def feed(self, data: bytes) -> list[SSEEvent]:
        buffer = self._buffer + data if self._buffer else data
        if self._line_end is None:
            newline = buffer.find(b"\n")
            if newline < 0:
                self._keep(buffer)
                return []
            self._line_end = b"\r\n" if newline > 0 and buffer[newline - 1] == 13 else b"\n"
            self._event_end = self._line_end * 2
        events: list[SSEEvent] = []
        end_marker = self._event_end
        start = 0
        while (end := buffer.find(end_marker, start)) >= 0:
            stop = end + len(end_marker)
            event = self._event(buffer[start:stop], buffer, start, end)
            if event is not None:
                events.append(event)
            start = stop
        self._keep(buffer[start:] if start else buffer)
        return events

    def _keep(self, rest: bytes) -> None:
        if len(rest) > self.max_event_bytes:
            raise SSEDecodeError(f"an SSE event over {self.max_event_bytes} bytes")
        self._buffer = rest

    def _event(self, raw: bytes, buffer: bytes, start: int, end: int) -> SSEEvent | None:
        line_end = self._line_end or b"\n"
        if raw.startswith(b"data: ") and buffer.find(line_end, start, end) < 0:
            return SSEEvent(raw, b"data", buffer[start + 6 : end])  # the usual one-line event
        data: list[bytes] = []
        error: bytes | None = None
        for line in buffer[start:end].split(line_end):
            name, colon, value = line.partition(b":")
            if not colon:
                continue
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"error":
                error = value
        if error is not None:
            return SSEEvent(raw, b"error", error)
        if data:
            return SSEEvent(raw, b"data", b"\n".join(data))
        return None


def completion_text(payload: bytes) -> str:
    """The first choice's content in an engine's payload (SSE events or a unary body), for
    `--log-prompts`: the one place the gateway decodes tokens, and only when asked."""
    if not payload:
        return ""
    try:
        if not payload.startswith(b"data:"):
            return _choice_text(orjson.loads(payload), "message")
        return "".join(
            _choice_text(orjson.loads(event.value), "delta")
            for event in SSEDecoder().feed(payload)
            if event.field == b"data" and event.value != b"[DONE]"
        )
    except (orjson.JSONDecodeError, SSEDecodeError):
        return ""


def _choice_text(document: Any, key: str) -> str:
    choices = document.get("choices") if isinstance(document, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            part = choice.get(key)
            text = part.get("content") if isinstance(part, dict) else choice.get("text")
            return text if isinstance(text, str) else ""
    return ""
