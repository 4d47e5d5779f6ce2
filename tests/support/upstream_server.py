"""A small OpenAI-compatible upstream (think vLLM, llama.cpp) for tests: raw ASGI on hypercorn.

    async with running_upstream() as upstream:
        engine = OpenAIUpstream(upstream.url)   # "http://127.0.0.1:PORT/v1"

It serves `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions`, streaming
(SSE) or unary, with deterministic text: token i is `f"t{i} "`, `max_tokens` of them (4 by
default; finish "length" when `max_tokens` was given, else "stop"), and `prompt_tokens` is
the number of words in the prompt. The request's model selects a behaviour:

    fail-NNN            answer HTTP NNN with an OpenAI error body (fail-400-text: plain text)
    fail-400-vllm-old   400 with vLLM's old top-level `{"object": "error", ...}` body
    inband-error        2 tokens, then `data: {"error": {... code 500}}`, then [DONE]
    inband-error-400    the same with code 400 (vLLM's BadRequestError mid-stream)
    llamacpp-error      1 token, then llama.cpp's `error: {...}` line, then [DONE]
    usage-with-finish   the usage rides on the finish chunk (default: a chunk of its own after)
    continuous-usage    every token chunk carries a running usage too (vLLM's
                        `continuous_usage_stats`), then the usage chunk after the finish
    finish-with-text    the last token carries the finish_reason
    no-usage            never sends usage, even when asked
    no-finish           tokens, then [DONE] without any finish_reason
    no-done             finish and usage, then the body ends without [DONE]
    multi-token         every delta holds 2 tokens; usage counts them all
    odd-newlines        tokens containing U+2028, U+0085 and \\x1c, written raw in the JSON
    slow                a token every 50 ms (up to max_tokens, default 200)
    flood               64 KiB tokens, no pacing (up to max_tokens, default 400)
    drop                2 tokens, then the connection closes mid-body (no chunk terminator)
    drop-early          response headers, then the connection closes before any event
    stall               2 tokens, then silence (an hour) with the connection open
    malformed           1 token, then an event that is not JSON
    slow-headers        any answer's headers only after SLOW_HEADERS_S (2 s), then as usual
    unary               a JSON completion although a stream was asked for
    held                1 token, then holds the stream until the test sets `release_held`

`generating` counts the generation requests being answered at once, `most_generating` the
most there ever were (what the engine's own waiting queue would hold beyond its batch).

Every request is recorded (`requests`: method, path, headers, JSON body), with how many
events it was sent, whether it finished, and whether the client disconnected mid-stream: a
watcher task waits on ASGI `receive()` for `http.disconnect`, as hypercorn reports a gone
client nowhere else.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SLOW_INTERVAL = 0.05
SLOW_HEADERS_S = 2.0
STALL_S = 3600.0
FLOOD_TOKEN = "x" * (64 * 1024)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any = None
    client_port: int | None = None  # the same port twice: a reused connection
    events_sent: int = 0  # SSE events written (role chunk, tokens, finish, usage, [DONE])
    finished: bool = False  # the whole response was written
    disconnected: bool = False  # the client left before it was
    answer: bytes = b""  # a unary answer's body, as sent


@dataclass
class MockUpstream:
    models: list[str] = field(default_factory=lambda: ["up-a", "up-b"])
    context_lengths: dict[str, int] = field(default_factory=dict)  # vLLM's max_model_len
    api_key: str | None = None
    models_status: int = 200  # what GET /v1/models answers
    # POST path -> the JSON it answers with 200 (embeddings, vLLM's /tokenize...): as set.
    whole_answers: dict[str, Any] = field(default_factory=dict)
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    generating: int = 0
    most_generating: int = 0
    release_held: trio.Event = field(default_factory=trio.Event)
    _changed: trio.Event = field(default_factory=trio.Event)

    # -- for tests -----------------------------------------------------------------------

    @property
    def generations(self) -> list[Recorded]:
        return [r for r in self.requests if r.path != "/v1/models"]

    @property
    def model_probes(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/models"]

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait (unbounded: wrap it in `trio.fail_after`) until `condition()` holds."""
        while not condition():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        raw = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope["headers"]}
        client = scope.get("client")
        record = Recorded(scope["method"], scope["path"], headers)
        record.client_port = client[1] if client else None
        try:
            record.body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            record.body = raw.decode("utf-8", "replace")
        self.requests.append(record)
        self._notify()

        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            await _json(send, 401, {"error": {"message": "Unauthorized", "type": "auth_error"}})
            return
        if scope["path"] == "/v1/models" and scope["method"] == "GET":
            if self.models_status != 200:
                await _json(send, self.models_status, {"error": {"message": "not ready"}})
                return
            data = [{"id": m, "object": "model", "owned_by": "mock"} for m in self.models]
            for model in data:
                if model["id"] in self.context_lengths:
                    model["max_model_len"] = self.context_lengths[model["id"]]
            await _json(send, 200, {"object": "list", "data": data})
            return
        if scope["method"] == "POST" and scope["path"] in (
            "/v1/chat/completions",
            "/v1/completions",
        ):
            self.generating += 1
            self.most_generating = max(self.most_generating, self.generating)
            self._notify()
            try:
                await self._generate(record, scope["path"] == "/v1/chat/completions", receive, send)
            finally:
                self.generating -= 1
                self._notify()
            return
        if scope["method"] == "POST" and scope["path"] in self.whole_answers:
            await _json(send, 200, self.whole_answers[scope["path"]], record)
            return
        await _json(send, 404, {"detail": "Not Found"})

    async def _generate(self, record: Recorded, chat: bool, receive: Receive, send: Send) -> None:
        body = record.body if isinstance(record.body, dict) else {}
        model = str(body.get("model", ""))
        if model.startswith("fail-"):
            await _fail(send, model)
            return
        if model == "slow-headers":
            await trio.sleep(SLOW_HEADERS_S)
        if not body.get("stream"):
            await _json(send, 200, _unary(body, chat), record)
            return
        if model == "unary":
            await _json(send, 200, _unary(body, chat))
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, record, receive, nursery.cancel_scope)
            for event in _events(body, chat):
                if event is _HOLD:
                    await self.release_held.wait()
                    continue
                if event is _DROP:
                    nursery.cancel_scope.cancel()
                    return  # leaving mid-body: hypercorn closes the connection
                if isinstance(event, float):
                    await trio.sleep(event)
                    continue
                await send({"type": "http.response.body", "body": event, "more_body": True})
                record.events_sent += 1
                self._notify()
            # Finished before the last write: hypercorn reports `http.disconnect` as soon as
            # a response is complete, maybe before this task runs again.
            record.finished = True
            self._notify()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()

    async def _watch_disconnect(
        self, record: Recorded, receive: Receive, scope: trio.CancelScope
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not record.finished:
                    record.disconnected = True
                    self._notify()
                scope.cancel()
                return


_DROP = object()
_HOLD = object()


async def _json(send: Send, status: int, body: Any, record: Recorded | None = None) -> None:
    payload = orjson.dumps(body)
    if record is not None:
        record.answer = payload  # before it is sent: the client may look at once
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _fail(send: Send, model: str) -> None:
    if model == "fail-400-text":
        payload = b"plain text problem from upstream"
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        return
    if model == "fail-400-vllm-old":
        old = {
            "object": "error",
            "message": "old vLLM says no",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
        await _json(send, 400, old)
        return
    status = int(model.removeprefix("fail-"))
    error = {
        "message": f"upstream says {status}",
        "type": "BadRequestError" if status < 500 else "InternalServerError",
        "param": "temperature" if status == 400 else None,
        "code": status,
    }
    await _json(send, status, {"error": error})


def _prompt_tokens(body: dict[str, Any], chat: bool) -> int:
    if chat:
        text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
    else:
        text = str(body.get("prompt", ""))
    return len(text.split())


def _plan(body: dict[str, Any]) -> tuple[int, str]:
    model = body.get("model")
    default = {"slow": 200, "flood": 400}.get(str(model), 4)
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int):
        return max_tokens, "length"
    return default, "stop"


def token_text(i: int, model: str = "") -> str:
    if model == "flood":
        return FLOOD_TOKEN
    if model == "multi-token":
        return f"t{i} u{i} "
    if model == "odd-newlines":
        return f"t{i}\u2028\x85\x1c "
    return f"t{i} "


def expected_text(n: int, model: str = "") -> str:
    return "".join(token_text(i, model) for i in range(n))


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chunk(body: dict[str, Any], chat: bool, text: str | None, finish: str | None) -> Any:
    if chat:
        delta: dict[str, Any] = {} if text is None else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
        kind = "text_completion"
    return {
        "id": "up-1",
        "object": kind,
        "created": 0,
        "model": body.get("model"),
        "choices": [choice],
    }


def _events(body: dict[str, Any], chat: bool) -> list[Any]:
    """The body writes (bytes), pauses (float seconds), _HOLD and _DROP of a streamed answer."""
    model = str(body.get("model", ""))
    n, finish = _plan(body)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    per_token = 2 if model == "multi-token" else 1
    usage = {
        "prompt_tokens": _prompt_tokens(body, chat),
        "completion_tokens": n * per_token,
        "total_tokens": _prompt_tokens(body, chat) + n * per_token,
    }
    out: list[Any] = []
    if model == "drop-early":
        return [_DROP]
    if chat:
        first = _chunk(body, chat, "", None)
        first["choices"][0]["delta"]["role"] = "assistant"
        out.append(_sse(first))
    for i in range(n):
        if model == "slow" and i:
            out.append(SLOW_INTERVAL)
        if model == "inband-error" and i == 2:
            frame = {"message": "out of KV cache", "type": "InternalServerError", "code": 500}
            return [*out, _sse({"error": {**frame, "param": None}}), b"data: [DONE]\n\n"]
        if model == "inband-error-400" and i == 2:
            frame = {"message": "bad logit bias", "type": "BadRequestError", "code": 400}
            return [*out, _sse({"error": {**frame, "param": "logit_bias"}}), b"data: [DONE]\n\n"]
        if model == "llamacpp-error" and i == 1:
            frame = {
                "code": 400,
                "message": "the request exceeds the available context size",
                "type": "exceed_context_size_error",
            }
            return [*out, b"error: " + orjson.dumps(frame) + b"\n\n", b"data: [DONE]\n\n"]
        if model == "drop" and i == 2:
            return [*out, _DROP]
        if model == "stall" and i == 2:
            return [*out, STALL_S]
        if model == "held" and i == 1:
            out.append(_HOLD)
        if model == "malformed" and i == 1:
            return [*out, b'data: {"id": "up-1", "choices": [oops\n\n', b"data: [DONE]\n\n"]
        last = i == n - 1
        if model == "finish-with-text" and last:
            out.append(_sse(_chunk(body, chat, token_text(i, model), finish)))
        else:
            event = _chunk(body, chat, token_text(i, model), None)
            if model == "continuous-usage" and include_usage:
                done = (i + 1) * per_token
                event["usage"] = {**usage, "completion_tokens": done}
            out.append(_sse(event))
    if model == "no-finish":
        return [*out, b"data: [DONE]\n\n"]
    if model != "finish-with-text":
        final = _chunk(body, chat, None, finish)
        if model == "usage-with-finish" and include_usage:
            final["usage"] = usage
        out.append(_sse(final))
    if include_usage and model not in ("usage-with-finish", "no-usage"):
        out.append(_sse({"id": "up-1", "object": "chunk", "choices": [], "usage": usage}))
    if model != "no-done":
        out.append(b"data: [DONE]\n\n")
    return out


def _unary(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    n, finish = _plan(body)
    text = expected_text(n)
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    prompt_tokens = _prompt_tokens(body, chat)
    return {
        "id": "up-1",
        "object": "chat.completion" if chat else "text_completion",
        "model": body.get("model"),
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n,
            "total_tokens": prompt_tokens + n,
        },
    }


@asynccontextmanager
async def running_upstream(
    *,
    graceful_timeout: float = 2.0,
    certfile: str | None = None,
    keyfile: str | None = None,
    client_ca: str | None = None,
    **settings: Any,
) -> AsyncIterator[MockUpstream]:
    """A `MockUpstream` on an ephemeral loopback port, stopped on exit.

    hypercorn's stop waits up to `graceful_timeout` for open connections, idle keep-alive
    ones included: a test that stops it under a running engine should make that short.
    With `certfile` and `keyfile` it serves https (its `url` says so); with `client_ca` too,
    it requires a client certificate signed by that CA.
    """
    upstream = MockUpstream(**settings)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = 5.0
    config.accesslog = None
    if certfile is not None:
        config.certfile, config.keyfile = certfile, keyfile
        if client_ca is not None:
            config.ca_certs = client_ca
            config.verify_mode = ssl.CERT_REQUIRED
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(serve, upstream, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        )
        upstream.url = binds[0] + "/v1"
        try:
            yield upstream
        finally:
            stop.set()
