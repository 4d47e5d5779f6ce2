"""Server-sent events of OpenAI streams: the gateway's own frames (`[DONE]`, the error
event) and a decoder for relays, which keeps each event's own bytes so a relay passes them
on without re-encoding. (The mock encodes its events itself: `engines/mock_answer.py`.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from trio_gateway.errors import GatewayError
from trio_gateway.openai.errors import stream_error_body

DONE = b"data: [DONE]\n\n"


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    """The in-band error of a stream whose headers are gone; `[DONE]` must follow it."""
    return frame(orjson.dumps(stream_error_body(error)))


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
