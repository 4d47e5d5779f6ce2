"""Server-sent-event framing of OpenAI streams, with per-request pre-encoded templates.

hypercorn's per-event cost is the gateway's ceiling (DESIGN §6), so the per-token work here
is one `orjson.dumps` of the text between two byte strings built once per request.
"""

from __future__ import annotations

from collections.abc import Iterable

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
