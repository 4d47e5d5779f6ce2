"""Drive the ASGI app in-process, without sockets, so lifecycle tests can run on MockClock.

It speaks to the app the way hypercorn does: the body first, `http.disconnect` when the
client goes (or, as hypercorn does, after the response completed).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import trio

from trio_gateway.config import GatewayConfig
from trio_gateway.discovery.resolver import Resolver
from trio_gateway.engines.protocol import Engine
from trio_gateway.fleet import EngineFactory
from trio_gateway.gateway import Gateway
from trio_gateway.http.application import GatewayApp
from trio_gateway.http.asgi import Message

if TYPE_CHECKING:  # OpenTelemetry stays unimported in tests that do not trace
    from trio_gateway.tracing import RequestTracing


@dataclass
class Exchange:
    """One HTTP request/response as the app saw it."""

    status: int | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    writes: list[bytes] = field(default_factory=list)
    complete: bool = False
    finished: trio.Event = field(default_factory=trio.Event)
    _changed: trio.Event = field(default_factory=trio.Event)
    _inbox: Any = None

    def disconnect(self) -> None:
        self._inbox.send_nowait({"type": "http.disconnect"})

    async def wait_until(self, condition: Callable[[Exchange], bool]) -> None:
        while not condition(self):
            if self.finished.is_set():
                raise AssertionError("the exchange finished before the condition held")
            await self._changed.wait()

    def json(self) -> Any:
        return orjson.loads(bytes(self.body))

    def events(self) -> list[str]:
        """The `data:` payloads of an SSE body, in order."""
        out = []
        for block in bytes(self.body).decode().split("\n\n"):
            if block.startswith("data: "):
                out.append(block[len("data: ") :])
        return out

    def tokens(self) -> list[str]:
        texts = []
        for event in self.events():
            if event == "[DONE]":
                continue
            data = orjson.loads(event)
            for choice in data.get("choices", []):
                text = choice.get("delta", {}).get("content") or choice.get("text")
                if text:
                    texts.append(text)
        return texts

    def _record(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k: v for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            self.writes.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self.complete = True
        changed, self._changed = self._changed, trio.Event()
        changed.set()


@dataclass
class Harness:
    app: GatewayApp
    gateway: Gateway
    nursery: trio.Nursery

    def start(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        client: tuple[str, int] = ("127.0.0.1", 50000),
        root_path: str = "",
    ) -> Exchange:
        """Start a request in the background; the returned exchange fills in as it runs.
        `root_path`: as hypercorn's `--root-path` sets it."""
        if body is None:
            body = orjson.dumps(json) if json is not None else b""
        header_list = [(b"content-type", b"application/json")]
        for name, value in (headers or {}).items():
            header_list = [(k, v) for k, v in header_list if k != name.lower().encode()]
            header_list.append((name.lower().encode(), value.encode()))
        path, _, query = path.partition("?")
        scope = {
            "type": "http",
            "http_version": "1.1",
            "asgi": {"spec_version": "2.1", "version": "3.0"},
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": root_path,
            "headers": header_list,
            "client": client,
            "server": ("127.0.0.1", 8000),
            "state": {},
            "extensions": {},
        }
        inbox_send, inbox = trio.open_memory_channel[Message](math.inf)
        inbox_send.send_nowait({"type": "http.request", "body": body, "more_body": False})
        exchange = Exchange(_inbox=inbox_send)

        async def send(message: Message) -> None:
            exchange._record(message)
            if exchange.complete:
                # hypercorn tells the app the stream closed once the response is complete.
                inbox_send.send_nowait({"type": "http.disconnect"})

        async def run() -> None:
            try:
                await self.app(scope, inbox.receive, send)
            finally:
                exchange.finished.set()
                exchange._record({"type": "app.finished"})

        self.nursery.start_soon(run)
        return exchange

    async def request(self, method: str, path: str, json: Any = None, **kwargs: Any) -> Exchange:
        exchange = self.start(method, path, json, **kwargs)
        await exchange.finished.wait()
        return exchange

    def metric(self, name: str, **labels: str) -> float:
        value = self.gateway.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@asynccontextmanager
async def running_gateway(
    config: GatewayConfig | None = None,
    engines: list[Engine] | None = None,
    tracing: RequestTracing | None = None,
    engine_factory: EngineFactory | None = None,
    resolver: Resolver | None = None,
) -> AsyncIterator[Harness]:
    gateway = Gateway(
        config or GatewayConfig(),
        engines,
        tracing,
        engine_factory=engine_factory,
        resolver=resolver,
    )
    app = GatewayApp(gateway)
    lifespan_send, lifespan_inbox = trio.open_memory_channel[Message](math.inf)
    replies_send, replies = trio.open_memory_channel[Message](math.inf)

    async def reply(message: Message) -> None:
        replies_send.send_nowait(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, {"type": "lifespan"}, lifespan_inbox.receive, reply)
        lifespan_send.send_nowait({"type": "lifespan.startup"})
        assert (await replies.receive())["type"] == "lifespan.startup.complete"
        async with trio.open_nursery() as requests:
            yield Harness(app, gateway, requests)
            requests.cancel_scope.cancel()
        lifespan_send.send_nowait({"type": "lifespan.shutdown"})
        assert (await replies.receive())["type"] == "lifespan.shutdown.complete"
