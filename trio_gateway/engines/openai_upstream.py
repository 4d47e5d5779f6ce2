"""An engine that forwards requests to an OpenAI-compatible server (vLLM, llama.cpp) over httpx.

The upstream is always asked to stream (`stream: true`, usage included), whatever the client
asked: the gateway re-encodes chunks for the client, streaming or unary, so one code path
reads every upstream answer. Each upstream SSE event becomes a `Chunk` awaited into the
caller's channel, so a slow client slows the upstream read and, through TCP flow control,
the upstream itself.

Upstream failures are classified rather than all called "internal" (DESIGN §7): a 4xx stays
the client's error with the upstream's status and message, 502/503/504 and connection
failures are `unavailable` (retryable on another backend while nothing was sent), other 5xx
are `internal`.

Cancellation (the client left) leaves `async with client.stream(...)`, which closes the
upstream connection at once: vLLM and llama.cpp abort the generation when they see it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

import httpx
import orjson
import trio

from trio_gateway.generation import Chunk, GenerationRequest
from trio_gateway.openai.errors import APIError, internal_error, unavailable

log = logging.getLogger("trio_gateway.upstream")

# Request fields only the gateway understands; the upstream would reject or misread them.
GATEWAY_ONLY_FIELDS = ("mock", "session_id")
# How much of an upstream error body is read and quoted.
ERROR_BODY_LIMIT = 64 * 1024
ERROR_MESSAGE_LIMIT = 2000
# A single SSE line longer than this is a broken upstream, not a token.
MAX_LINE_BYTES = 8 * 1024 * 1024
# After the final chunk was handed over, how long to wait for the end of the upstream's body
# (`[DONE]`, then the chunked terminator) so the connection can go back to the pool; a
# normal upstream sends them at once.
DRAIN_TIMEOUT = 1.0
# Closing an abandoned response (shielded: it must happen even when cancelled).
CLEANUP_TIMEOUT = 1.0
# Below the 5 s idle timeout of uvicorn (vLLM) and cpp-httplib (llama.cpp): reusing a
# connection the server is closing at that moment fails the request before any response.
KEEPALIVE_EXPIRY = 4.0
# httpcore 1.0's pool walks all its connections (polling each idle socket) every time a
# request starts or ends, so its cost grows with the square of the streams: at c=256 that
# walk was 30 % of the gateway's CPU and the upstream path ran at a tenth of direct. Streams
# spread over this many clients (pools), least loaded first, keep every walk short.
POOL_SHARDS = 16
# A kept-alive connection the server closes just as it is reused fails before any response
# (the server never saw the request): sent again on another connection, this many times.
STALE_CONNECTION_RETRIES = 2


class _StaleConnection(Exception):
    """The upstream closed a reused connection without answering."""


def _redact(url: str) -> str:
    """The URL without user:password, fit for logs and for the engine's name."""
    parsed = httpx.URL(url)
    if parsed.userinfo:
        parsed = parsed.copy_with(username=None, password=None)
    return str(parsed)


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _error_object(body: Any) -> dict[str, Any] | None:
    """The error fields of an upstream error body, in the shapes servers actually send.

    OpenAI and current vLLM: `{"error": {...}}`; older vLLM: `{"object": "error",
    "message": ...}` at the top level; llama.cpp's in-band `error:` line: the fields bare;
    FastAPI routes: `{"detail": ...}`.
    """
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    if isinstance(body.get("message"), str):
        return body
    detail = body.get("detail")
    if isinstance(detail, str):
        return {"message": detail}
    if detail is not None:
        return {"message": orjson.dumps(detail).decode()}
    return None


def _truncate(text: str) -> str:
    text = text.strip()
    if len(text) > ERROR_MESSAGE_LIMIT:
        return text[:ERROR_MESSAGE_LIMIT] + "…"
    return text


def _error_type_for(status: int) -> str:
    if status == 404:
        return "not_found"
    if status == 429:
        return "overload"
    if 400 <= status < 500:
        return "validation"
    return "internal"


def inband_error(body: Any) -> APIError:
    """An error frame inside a 200 stream (`data: {"error": {...}}` or llama.cpp's `error:`).

    The status is the frame's numeric code when it is one (vLLM and llama.cpp send the HTTP
    status there), else 500. A 4xx code keeps the client's classification (llama.cpp reports
    an over-long prompt this way, after it has answered 200): counting it as an engine
    failure would trip the backend's breaker on the client's mistakes (DESIGN §7).
    """
    fields = _error_object(body) or {}
    code = fields.get("code")
    numeric = _as_int(code)
    status = numeric if numeric is not None and 400 <= numeric <= 599 else 500
    message = _as_str(fields.get("message")) or "The upstream reported an error mid-stream."
    return APIError(
        status=status,
        message=_truncate(message),
        type=_as_str(fields.get("type")) or "internal_error",
        param=_as_str(fields.get("param")),
        code=code if isinstance(code, str | int) and not isinstance(code, bool) else None,
        error_type=_error_type_for(status),
    )


def _choice_delta(event: dict[str, Any], chat: bool) -> tuple[str, str | None]:
    """The text and finish_reason of the event's first choice ("" and None if it has none)."""
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices:
        return "", None
    choice = choices[0]
    if not isinstance(choice, dict):
        return "", None
    if chat:
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
    else:
        text = choice.get("text")
    return (text if isinstance(text, str) else ""), _as_str(choice.get("finish_reason"))


class _Body:
    """`async with _Body(response) as chunks`: `response.aiter_bytes()`, left without
    abandoning httpx's generators half-way.

    `aiter_bytes` is a stack of five async generators (httpx, then httpcore); closing the
    outer one leaves the inner ones suspended, and trio warns when the garbage collector
    finds them (httpx#3686). So on the way out the response is closed first (the upstream
    sees the connection close: it stops generating), then the stack is resumed: its read on
    the closed connection fails and every generator in it finishes.

    A class, not `@asynccontextmanager`: on Python 3.11 an `APIError` (a frozen dataclass
    with slots) cannot cross a generator-based context manager (see `generate`).
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes())

    async def __aenter__(self) -> AsyncGenerator[bytes, None]:
        return self.chunks

    async def __aexit__(self, *exc_info: object) -> None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
            await self.response.aclose()
            with contextlib.suppress(Exception):
                while True:  # what h11 had buffered, then the failed read
                    await self.chunks.__anext__()


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    """Up to `limit` bytes of a body that may be anything (an error page, a stream)."""
    data = bytearray()
    async with _Body(response) as chunks:
        async for chunk in chunks:
            data += chunk
            if len(data) >= limit:
                break
    return bytes(data[:limit])


class OpenAIUpstream:
    """An OpenAI-compatible server behind `base_url` (e.g. `http://127.0.0.1:8001/v1`).

    `available` turns True once `GET {base}/models` answers and False while it does not (or
    a request could not connect); `models` follows that list unless `models` were given.
    """

    capacity: int | None = None  # the upstream queues for itself

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        name: str | None = None,
        models: tuple[str, ...] = (),
        connect_timeout: float = 5.0,
        refresh_interval: float = 30.0,
        retry_initial: float = 0.5,
        retry_max: float = 15.0,
        probe_timeout: float = 10.0,
    ) -> None:
        # Called when the upstream answers again: the router lets queued requests look again.
        self.on_available: Callable[[], None] | None = None
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"an upstream URL must be http(s)://host[:port]/..., got {url}")
        self.base_url = base_url.rstrip("/")
        self.name = name if name is not None else _redact(self.base_url)
        self.models = tuple(models)
        self.available = False
        self.connect_timeout = connect_timeout
        self.refresh_interval = refresh_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.probe_timeout = probe_timeout
        self.probes = 0  # /models probes finished, whatever their outcome
        self._explicit_models = bool(models)
        self._api_key = api_key
        self._clients: list[httpx.AsyncClient] = []
        self._client_streams: list[int] = []  # streams open on each client
        self._probed = trio.Event()
        self._sleep: trio.CancelScope | None = None
        self._last_problem: str | None = None

    def __repr__(self) -> str:  # never the key
        return f"OpenAIUpstream({self.name!r}, available={self.available})"

    @property
    def running(self) -> bool:
        return bool(self._clients) and not self._clients[0].is_closed

    def _headers(self) -> dict[str, str]:
        if self._api_key:
            return {"Authorization": f"Bearer {self._api_key}"}
        return {}

    # -- background work -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the HTTP clients, and keep `available`/`models` current from `GET /models`."""
        tls = httpx.create_ssl_context(trust_env=False)  # the CA bundle, loaded once
        try:
            async with contextlib.AsyncExitStack() as clients:
                for _ in range(POOL_SHARDS):
                    client = httpx.AsyncClient(
                        timeout=httpx.Timeout(
                            connect=self.connect_timeout, read=None, write=30.0, pool=None
                        ),
                        limits=httpx.Limits(
                            max_connections=None,
                            max_keepalive_connections=64,
                            keepalive_expiry=KEEPALIVE_EXPIRY,
                        ),
                        verify=tls,
                        # Proxy variables meant for the outside world must not capture the
                        # hop to a local inference server (and buffer its streams).
                        trust_env=False,
                    )
                    self._clients.append(await clients.enter_async_context(client))
                    self._client_streams.append(0)
                task_status.started()
                await self._probe_loop(self._clients[0])
        finally:
            self._clients, self._client_streams = [], []
            self.available = False

    async def _probe_loop(self, client: httpx.AsyncClient) -> None:
        delay = self.retry_initial
        while True:
            ok = await self._probe(client)
            self.probes += 1
            self._probed.set()
            self._probed = trio.Event()
            if ok:
                delay, wait = self.retry_initial, self.refresh_interval
            else:
                wait, delay = delay, min(delay * 2, self.retry_max)
            with trio.move_on_after(wait) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None

    async def wait_probes(self, count: int) -> None:
        """Wait until at least `count` `/models` probes have finished (tests, readiness)."""
        while self.probes < count:
            await self._probed.wait()

    async def _probe(self, client: httpx.AsyncClient) -> bool:
        try:
            response = await client.get(
                f"{self.base_url}/models",
                headers=self._headers(),
                timeout=httpx.Timeout(self.probe_timeout, connect=self.connect_timeout),
            )
        except httpx.HTTPError as error:
            self._went_down(f"GET /models failed: {type(error).__name__}: {error}")
            return False
        if response.status_code != 200:
            self._went_down(f"GET /models answered HTTP {response.status_code}")
            return False
        listed: tuple[str, ...] | None = None
        try:
            data = orjson.loads(response.content).get("data")
            if isinstance(data, list):
                listed = tuple(
                    m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)
                )
        except (orjson.JSONDecodeError, AttributeError):
            pass
        if listed is None and not self._explicit_models:
            self._went_down("GET /models answered something that is not a model list")
            return False
        if listed is not None and not self._explicit_models:
            self.models = listed
        came_back = not self.available
        self.available = True
        self._last_problem = None
        if came_back:
            log.info("upstream %s is available, serving %s", self.name, ", ".join(self.models))
            if self.on_available is not None:
                self.on_available()
        return True

    def _went_down(self, problem: str) -> None:
        if self.available or problem != self._last_problem:
            log.warning("upstream %s is unavailable: %s", self.name, problem)
        self.available = False
        self._last_problem = problem

    def _connection_lost(self, problem: str) -> None:
        """A request could not connect: stop being picked, and probe now, not in 30 s."""
        was_available = self.available
        self._went_down(problem)
        if was_available and self._sleep is not None:
            self._sleep.cancel()

    # -- requests ------------------------------------------------------------------------

    def _payload(self, request: GenerationRequest) -> bytes:
        body = dict(request.body)
        for name in GATEWAY_ONLY_FIELDS:
            body.pop(name, None)
        body["stream"] = True
        options = body.get("stream_options")
        body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
        return orjson.dumps(body)

    async def open_session(self, session_id: str, idle_timeout_s: float) -> None:
        raise APIError(
            400,
            "Sessions need a trio-gateway worker; an OpenAI-compatible upstream has none.",
            "invalid_request_error",
            "session_id",
            "sessions_unsupported",
            "validation",
        )

    async def close_session(self, session_id: str) -> None:
        return None

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        if not self.running:
            raise unavailable(f"The upstream {self.name} is not running.", retryable=True)
        streams = self._client_streams
        shard = streams.index(min(streams))
        client = self._clients[shard]
        streams[shard] += 1
        try:
            for attempt in range(STALE_CONNECTION_RETRIES + 1):
                try:
                    await self._generate_with(client, request, send)
                    return
                except _StaleConnection as stale:
                    if attempt == STALE_CONNECTION_RETRIES:
                        raise unavailable(
                            f"The connection to the upstream {self.name} failed ({stale}).",
                            retryable=True,
                        ) from None
                    log.info("upstream %s closed a reused connection; sending again", self.name)
        finally:
            if streams is self._client_streams:  # not after `run` has ended
                streams[shard] -= 1

    async def _generate_with(
        self,
        client: httpx.AsyncClient,
        request: GenerationRequest,
        send: trio.MemorySendChannel[Chunk],
    ) -> None:
        path = "/chat/completions" if request.endpoint == "chat" else "/completions"
        headers = {
            **self._headers(),
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            # Compression would make a proxy or the server buffer the stream.
            "Accept-Encoding": "identity",
            "X-Request-Id": request.trace_id or request.request_id,
        }
        relay = _Relay(self.name, request.endpoint == "chat", send)
        failure: APIError | None = None
        answered = False
        try:
            async with client.stream(
                "POST", self.base_url + path, content=self._payload(request), headers=headers
            ) as response:
                answered = True
                # The failure is raised once the upstream response is closed, outside
                # httpx's context manager and the transport-error handling below.
                try:
                    if response.status_code != 200:
                        failure = await self._status_error(response)
                    elif response.headers.get("content-type", "").startswith("application/json"):
                        await relay.unary(response)
                    else:
                        await relay.stream(response)
                except APIError as error:
                    failure = error
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            self._connection_lost(f"{type(error).__name__}: {error}")
            raise unavailable(
                f"Could not connect to the upstream {self.name}.", retryable=relay.sent == 0
            ) from None
        except httpx.RemoteProtocolError as error:
            if not answered:  # closed without a response: it never handled this request
                raise _StaleConnection(f"{type(error).__name__}: {error}") from None
            raise unavailable(
                f"The connection to the upstream {self.name} failed "
                f"({type(error).__name__}: {error}).",
                retryable=relay.sent == 0,
            ) from None
        except httpx.TransportError as error:
            raise unavailable(
                f"The connection to the upstream {self.name} failed "
                f"({type(error).__name__}: {error}).",
                retryable=relay.sent == 0,
            ) from None
        except httpx.HTTPError as error:  # a body it cannot decode, and the like
            raise internal_error(
                f"The upstream {self.name} sent a response that could not be read "
                f"({type(error).__name__})."
            ) from None
        if failure is not None:
            raise failure

    async def _status_error(self, response: httpx.Response) -> APIError:
        """The `APIError` for an upstream that answered with an error status."""
        status = response.status_code
        try:
            raw = await _read_limited(response, ERROR_BODY_LIMIT)
        except httpx.HTTPError:
            raw = b""
        fields: dict[str, Any] | None = None
        with contextlib.suppress(orjson.JSONDecodeError):
            fields = _error_object(orjson.loads(raw))
        if fields is not None and isinstance(fields.get("message"), str):
            message = _truncate(fields["message"])
        else:
            message = _truncate(raw.decode("utf-8", "replace"))
        fields = fields or {}
        code = fields.get("code")
        code = code if isinstance(code, str | int) and not isinstance(code, bool) else None
        upstream_type = _as_str(fields.get("type"))
        param = _as_str(fields.get("param"))
        message = message or f"The upstream {self.name} answered HTTP {status}."
        if status in (401, 403):
            # Not the client's fault: the gateway's own upstream key is wrong. Its message is
            # not quoted (it could echo the key); another backend may do better.
            log.warning("upstream %s rejected the gateway's credentials (%d)", self.name, status)
            return dataclasses.replace(
                internal_error(
                    f"The upstream {self.name} rejected the gateway's credentials (HTTP {status})."
                ),
                retryable=True,
            )
        if status == 429:
            return APIError(
                429, message, upstream_type or "overload", param, code, "overload", True
            )
        if 400 <= status < 500:
            return APIError(
                status,
                message,
                upstream_type or "invalid_request_error",
                param,
                code,
                "not_found" if status == 404 else "validation",
            )
        if status in (502, 503, 504):
            return unavailable(
                f"The upstream {self.name} is unavailable (HTTP {status}): {message}",
                retryable=True,
            )
        if status >= 500:
            return internal_error(message)
        return internal_error(f"The upstream {self.name} answered HTTP {status}.")


class _Relay:
    """One request's upstream answer, turned into chunks sent into the caller's channel."""

    def __init__(self, name: str, chat: bool, send: trio.MemorySendChannel[Chunk]) -> None:
        self.name = name
        self.chat = chat
        self.send = send
        self.sent = 0  # chunks handed to the caller
        self.tokens = 0  # tokens in them

    async def _emit(self, chunk: Chunk) -> None:
        # No checkpoint while there is room: every token of one upstream read reaches the
        # response writer before it wakes, as one write (the read itself checkpoints).
        try:
            self.send.send_nowait(chunk)
        except trio.WouldBlock:
            await self.send.send(chunk)
        self.sent += 1
        self.tokens += chunk.tokens

    def _final(
        self, final: Chunk, prompt_tokens: int | None, completion_tokens: int | None
    ) -> Chunk:
        final.prompt_tokens = prompt_tokens
        if completion_tokens is not None:
            # A delta may hold several tokens (detokenizer hold-back, speculative decoding):
            # the upstream's count wins, the difference rides on the last chunk.
            final.tokens = max(completion_tokens - self.tokens, 1 if final.text else 0)
        return final

    async def stream(self, response: httpx.Response) -> None:
        final: Chunk | None = None
        ended = False  # `[DONE]`, or the finish and the usage after it: the body should end
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        async with contextlib.aclosing(_sse_lines(response)) as lines:
            async for field, payload in lines:
                if field == b"error":  # llama.cpp: `error: {...}` instead of a data line
                    raise inband_error(_loads(payload, self.name))
                if payload.strip() == b"[DONE]":
                    ended = True
                    break
                event = _loads(payload, self.name)
                if not isinstance(event, dict):
                    raise internal_error(f"The upstream {self.name} sent a malformed event.")
                if "error" in event or event.get("object") == "error":
                    raise inband_error(event)
                text, finish_reason = _choice_delta(event, self.chat)
                if final is None and finish_reason is not None:
                    final = Chunk(text, tokens=1 if text else 0, finish_reason=finish_reason)
                elif final is None and text:
                    await self._emit(Chunk(text, 1))
                usage = event.get("usage")
                if isinstance(usage, dict) and final is not None:
                    prompt_tokens = _as_int(usage.get("prompt_tokens"))
                    completion_tokens = _as_int(usage.get("completion_tokens"))
                    ended = True
                    break
            if final is None:
                raise internal_error("upstream ended the stream without a finish_reason")
            await self._emit(self._final(final, prompt_tokens, completion_tokens))
            if ended:
                # Read the body to its end so the connection can be reused. The outcome is
                # settled: nothing found here changes it.
                with (
                    trio.move_on_after(DRAIN_TIMEOUT),
                    contextlib.suppress(httpx.HTTPError, APIError),
                ):
                    async for _ in lines:
                        pass

    async def unary(self, response: httpx.Response) -> None:
        """An upstream that ignored `stream: true` and answered one JSON object."""
        body = _loads(await response.aread(), self.name)
        if not isinstance(body, dict):
            raise internal_error(f"The upstream {self.name} sent a malformed response.")
        if "error" in body or body.get("object") == "error":
            raise inband_error(body)
        choices = body.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else {}
        if not isinstance(choice, dict):
            choice = {}
        if self.chat:
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
        text = text if isinstance(text, str) else ""
        finish_reason = _as_str(choice.get("finish_reason"))
        if finish_reason is None:
            raise internal_error("upstream ended the stream without a finish_reason")
        usage = body.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        final = Chunk(text, tokens=1 if text else 0, finish_reason=finish_reason)
        await self._emit(
            self._final(
                final,
                _as_int(usage.get("prompt_tokens")),
                _as_int(usage.get("completion_tokens")),
            )
        )


def _loads(payload: bytes, name: str) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise internal_error(f"The upstream {name} sent an event that is not JSON.") from None


async def _sse_lines(response: httpx.Response) -> AsyncGenerator[tuple[bytes, bytes], None]:
    """(field, value) for each `data:` and `error:` line of an SSE body, as bytes.

    Lines are split on b"\\n" here rather than with `aiter_lines()`: httpx splits like
    `str.splitlines`, which also breaks on U+2028, U+0085, \\x1c… — characters a token may
    contain and that servers write raw inside their JSON. SSE ends lines at \\n (or \\r\\n).
    Every `data:` line is taken as one event: OpenAI-compatible servers put one JSON object
    per line.
    """
    buffer = bytearray()
    async with _Body(response) as chunks:
        async for chunk in chunks:
            buffer += chunk
            start = 0
            while (end := buffer.find(b"\n", start)) >= 0:
                line = bytes(buffer[start:end])
                start = end + 1
                field = _field(line)
                if field is not None:
                    yield field
            del buffer[:start]
            if len(buffer) > MAX_LINE_BYTES:
                raise internal_error("The upstream sent an over-long stream line.")
    if buffer:
        field = _field(bytes(buffer))
        if field is not None:
            yield field


def _field(line: bytes) -> tuple[bytes, bytes] | None:
    if line.endswith(b"\r"):
        line = line[:-1]
    name, colon, value = line.partition(b":")
    if not colon or name not in (b"data", b"error"):
        return None  # blank lines, `: comments`, `event:`, `id:`, `retry:`
    return name, value[1:] if value.startswith(b" ") else value
