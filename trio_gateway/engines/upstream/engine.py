"""An engine that forwards requests to an OpenAI-compatible server (vLLM, SGLang, llama.cpp).

The client's request goes upstream as it came (the gateway's own fields removed; a stream
asks for usage, which the gateway needs for its metrics), and the answer comes back as the
upstream wrote it: a stream's events are relayed untouched (`relay.StreamRelay`), a unary
answer whole (`relay.unary_chunk`; embeddings and vLLM's (de)tokenizing likewise,
`relay.whole_answer_chunk`, at the paths `paths.endpoint_path` gives). Relaying the unary
answer rather than merging streamed deltas keeps it equal to the upstream's own, fields
nobody here knows included; the price is that a unary request shows no progress until it
is done, so it is timed as a whole (`streams_unary` is False).

The upstream's capacity is bounded (`max_inflight`, `--upstream-max-inflight`: vLLM's
`--max-num-seqs`), so that a burst past what the engine runs at once waits in the gateway's
queue, where it is timed out and refused with 429, rather than in the engine's own waiting
queue, which has no bound and which nobody can see from here. vLLM's `/v1/models` says
`max_model_len` but not `max_num_seqs`, so the figure is the operator's to give.

Each read of the upstream body becomes one chunk in the caller's channel, so a slow client
slows the upstream read and, through TCP flow control, the upstream itself. Cancellation
(the client left) closes the upstream connection at once, which makes vLLM and llama.cpp
abort the generation.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

import orjson
import trio

from trio_gateway.backend_urls import redact
from trio_gateway.backends_config import served_names
from trio_gateway.engines.upstream.client import (
    KEEPALIVE_EXPIRY,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
)
from trio_gateway.engines.upstream.errors import connection_failed, malformed, status_error
from trio_gateway.engines.upstream.model_alias import AnswerRename
from trio_gateway.engines.upstream.paths import endpoint_path
from trio_gateway.engines.upstream.relay import StreamRelay, unary_chunk, whole_answer_chunk
from trio_gateway.errors import GatewayError, unavailable
from trio_gateway.generation import GENERATION_ENDPOINTS, Chunk, GenerationRequest

log = logging.getLogger("trio_gateway.upstream")

# The gateway's own routing fields, consumed here. (`mock` goes on: a trio-gateway upstream
# honours it, vLLM and llama.cpp ignore it.)
GATEWAY_ONLY_FIELDS = ("session_id", "session_timeout")
# Idle connections kept: one per stream in flight at the concurrency served.
MAX_IDLE_CONNECTIONS = 1024
# How much of an upstream error body is read and quoted, and of a unary answer at most.
ERROR_BODY_LIMIT = 64 * 1024
UNARY_BODY_LIMIT = 64 * 1024 * 1024
MODELS_BODY_LIMIT = 4 * 1024 * 1024
# After `[DONE]`, how long to wait for the end of the body (the chunked terminator) so the
# connection can go back to the pool; a normal upstream sends both in one write.
DRAIN_TIMEOUT = 1.0

# vLLM's default `--max-num-seqs` on most GPUs: more in flight would only wait in the
# engine's own queue, unbounded, where the gateway can neither time it out nor answer 429.
UPSTREAM_MAX_INFLIGHT = 256


def _context_lengths(models: list[object]) -> dict[str, int]:
    """vLLM and SGLang list each model's `max_model_len`; others say nothing."""
    lengths: dict[str, int] = {}
    for model in models:
        if isinstance(model, dict) and isinstance(model.get("id"), str):
            length = model.get("max_model_len")
            if isinstance(length, int) and not isinstance(length, bool) and length > 0:
                lengths[model["id"]] = length
    return lengths


class OpenAIUpstream:
    """An OpenAI-compatible server behind `base_url` (e.g. `http://127.0.0.1:8001/v1`).

    `available` turns True once `GET {base}/models` answers and False while it does not (or
    a request could not connect); `models` follows that list unless `models` were given.
    """

    streams_unary = False
    keeps_session_history = False

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
        ssl_context: ssl.SSLContext | None = None,
        max_inflight: int = UPSTREAM_MAX_INFLIGHT,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        # Called when the upstream answers again: the router lets queued requests look again.
        self.on_available: Callable[[], None] | None = None
        parts = urlsplit(base_url)
        try:
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError:
            raise ValueError(f"an upstream URL needs a numeric port, got {base_url}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an upstream URL must be http(s)://host[:port]/..., got {base_url}")
        if max_inflight < 1:
            raise ValueError(f"an upstream's max_inflight must be at least 1, got {max_inflight}")
        # The router's slots on this upstream, unless `--max-inflight` overrides every backend.
        self.capacity: int | None = max_inflight
        self.base_url = base_url.rstrip("/")
        self.url = redact(self.base_url)
        self.name = name if name is not None else self.url
        self._origin = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], "", "", ""))
        self._path = parts.path.rstrip("/")
        # served name -> the upstream's name (backends_config.py): the request is renamed
        # once, the answer's bytes back (model_alias.py), `models` lists served names.
        self._aliases = dict(aliases or {})
        self.models = served_names(models, self._aliases)
        self.context_lengths: dict[str, int] = {}
        self.available = False
        self.connect_timeout = connect_timeout
        self.refresh_interval = refresh_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.probe_timeout = probe_timeout
        self.probes = 0  # /models probes finished, whatever their outcome
        self._explicit_models = bool(models)
        self._api_key = api_key
        self._ssl_context = ssl_context
        self._pool: UpstreamPool | None = None
        self._probed = trio.Event()
        self._sleep: trio.CancelScope | None = None
        self._last_problem: str | None = None

    def __repr__(self) -> str:  # never the key
        return f"OpenAIUpstream({self.name!r}, available={self.available})"

    @property
    def running(self) -> bool:
        return self._pool is not None

    def _headers(self, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        headers = list(extra)
        if self._api_key:
            headers.append((b"authorization", b"Bearer " + self._api_key.encode()))
        return headers

    # -- background work -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connection pool, and keep `available`/`models` current from `GET /models`."""
        context = self._ssl_context
        if context is None and self._origin.startswith("https"):
            context = ssl.create_default_context()
        pool = UpstreamPool(
            self._origin,
            connect_timeout=self.connect_timeout,
            keepalive_expiry=KEEPALIVE_EXPIRY,
            max_idle=MAX_IDLE_CONNECTIONS,
            ssl_context=context,
        )
        try:
            self._pool = pool
            task_status.started()
            await self._probe_loop(pool)
        finally:
            self._pool = None
            self.available = False
            with trio.CancelScope(shield=True):
                await pool.aclose()

    async def _probe_loop(self, pool: UpstreamPool) -> None:
        delay = self.retry_initial
        while True:
            ok = await self._probe(pool)
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

    async def _probe(self, pool: UpstreamPool) -> bool:
        status, raw = 0, b""
        with trio.move_on_after(self.probe_timeout) as waited:
            try:
                async with pool.stream(
                    "GET", self._path + "/models", self._headers([]), b""
                ) as response:
                    status = response.status
                    raw = await response.read(MODELS_BODY_LIMIT)
            except (UpstreamConnectError, UpstreamDisconnected, UpstreamProtocolError) as error:
                self._went_down(f"GET /models failed: {error}")
                return False
        if waited.cancelled_caught:
            self._went_down(f"GET /models did not answer within {self.probe_timeout:g} s")
            return False
        if status != 200:
            self._went_down(f"GET /models answered HTTP {status}")
            return False
        data: object = None
        try:
            document = orjson.loads(raw)
            data = document.get("data") if isinstance(document, dict) else None
        except orjson.JSONDecodeError:
            pass
        listed = None
        if isinstance(data, list):
            listed = tuple(
                m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)
            )
            self.context_lengths = self._served_lengths(_context_lengths(data))
        if listed is None and not self._explicit_models:
            self._went_down("GET /models answered something that is not a model list")
            return False
        if listed is not None and not self._explicit_models:
            self.models = served_names(listed, self._aliases)
        came_back = not self.available
        self.available = True
        self._last_problem = None
        if came_back:
            log.info("upstream %s is available, serving %s", self.name, ", ".join(self.models))
            if self.on_available is not None:
                self.on_available()
        return True

    def _served_lengths(self, lengths: dict[str, int]) -> dict[str, int]:
        """The upstream's context lengths under the names clients use."""
        if not self._aliases:
            return lengths
        served = {name: length for name, length in lengths.items() if name not in self._targets}
        for alias, target in self._aliases.items():
            if target in lengths:
                served[alias] = lengths[target]
        return served

    @property
    def _targets(self) -> set[str]:
        return set(self._aliases.values())

    def _rename(self, request: GenerationRequest) -> AnswerRename | None:
        """How this request's answer gets its served name back; None: no alias."""
        target = self._aliases.get(request.model)
        if target is None or target == request.model:
            return None
        return AnswerRename(target, request.model)

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

    # -- sessions ------------------------------------------------------------------------

    async def open_session(self, session_id: str, idle_timeout_s: float) -> None:
        """Nothing to set up: an OpenAI server keeps no session state. A session here is
        sticky routing, which is what keeps its prefix in one engine's KV cache."""

    async def close_session(self, session_id: str) -> None:
        return None

    # -- requests ------------------------------------------------------------------------

    def _payload(self, request: GenerationRequest) -> bytes:
        body = dict(request.body)
        for name in GATEWAY_ONLY_FIELDS:
            body.pop(name, None)
        if request.model in self._aliases:
            body["model"] = self._aliases[request.model]
        if request.endpoint not in GENERATION_ENDPOINTS:
            return orjson.dumps(body)  # nothing to stream: the body as sent
        body["stream"] = request.stream
        if request.stream:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        return orjson.dumps(body)

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        pool = self._pool
        if pool is None:
            raise unavailable(f"The upstream {self.name} is not running.", retryable=True)
        path = endpoint_path(self._path, request.endpoint)
        generates = request.endpoint in GENERATION_ENDPOINTS
        headers = self._headers(
            [
                (b"content-type", b"application/json"),
                (b"accept", b"text/event-stream" if request.stream else b"application/json"),
                (b"x-request-id", (request.trace_id or request.request_id).encode("latin-1")),
            ]
        )
        if request.traceparent is not None:  # checked where it came in: ASCII, no CR/LF
            headers.append((b"traceparent", request.traceparent.encode()))
            if request.tracestate is not None:
                headers.append((b"tracestate", request.tracestate.encode()))
        relayed = _Emitter(send)
        failure: GatewayError | None = None
        try:
            async with pool.stream("POST", path, headers, self._payload(request)) as response:
                # A failure read whole is raised once the response is left, so that its
                # connection, read to the end, goes back to the pool.
                try:
                    if response.status != 200:
                        raw = await response.read(ERROR_BODY_LIMIT)
                        failure = status_error(self.name, response.status, raw)
                    elif request.stream:
                        await self._relay_stream(request, response, relayed)
                    else:
                        body = await self._read_whole(response)
                        read = unary_chunk if generates else whole_answer_chunk
                        chunk = read(self.name, body)
                        if (rename := self._rename(request)) is not None:
                            chunk.payload = rename(chunk.payload)
                        await relayed.emit(chunk)
                except GatewayError as error:
                    failure = error
        except UpstreamConnectError as error:
            self._connection_lost(str(error))
            raise unavailable(
                f"Could not connect to the upstream {self.name}.", retryable=relayed.sent == 0
            ) from None
        except UpstreamDisconnected as error:
            raise connection_failed(self.name, str(error), retryable=relayed.sent == 0) from None
        except UpstreamProtocolError as error:
            raise malformed(self.name, f"a response that could not be read ({error})") from None
        if failure is not None:
            raise failure

    async def _read_whole(self, response: UpstreamResponse) -> bytes:
        body = await response.read(UNARY_BODY_LIMIT + 1)
        if len(body) > UNARY_BODY_LIMIT:
            raise malformed(self.name, f"an answer over {UNARY_BODY_LIMIT} bytes")
        return body

    async def _relay_stream(
        self, request: GenerationRequest, response: UpstreamResponse, relayed: _Emitter
    ) -> None:
        content_type = response.header(b"content-type") or b""
        if content_type.startswith(b"application/json"):
            # An answer that is not a stream: an error, or a server that ignored `stream`.
            unary_chunk(self.name, await self._read_whole(response))  # raises its error
            raise malformed(self.name, "a unary answer to a streaming request")
        relay = StreamRelay(
            self.name, forward_usage=request.include_usage, rename=self._rename(request)
        )
        while data := await response.receive_some():
            chunk = relay.feed(data)
            if chunk is not None:
                await relayed.emit(chunk)
            relay.check()
            if relay.done:
                # Read the body to its end so the connection can be reused; the outcome is
                # settled, nothing found there changes it.
                with trio.move_on_after(DRAIN_TIMEOUT), contextlib.suppress(UpstreamError):
                    while await response.receive_some():
                        pass
                break
        await relayed.emit(relay.final())


class _Emitter:
    """Chunks into the caller's channel, counted (a failure after one is not retryable)."""

    def __init__(self, send: trio.MemorySendChannel[Chunk]) -> None:
        self.send = send
        self.sent = 0

    async def emit(self, chunk: Chunk) -> None:
        # No checkpoint while there is room: the response writer wakes once per read.
        try:
            self.send.send_nowait(chunk)
        except trio.WouldBlock:
            await self.send.send(chunk)
        self.sent += 1
