"""The ASGI application: lifespan, the inference fast path, and quart for the rest."""

from __future__ import annotations

import logging
import uuid
from logging import DEBUG
from urllib.parse import quote

import trio
from quart_trio import QuartTrio

from trio_gateway.config import GatewayConfig, load_config
from trio_gateway.errors import GatewayError, invalid_request
from trio_gateway.gateway import Gateway
from trio_gateway.http.asgi import (
    ClientGone,
    Message,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_json,
)
from trio_gateway.http.auth import app_path, canonical_path, refusal
from trio_gateway.http.control import create_control_app
from trio_gateway.http.inference import INFERENCE_ROUTES, handle_inference
from trio_gateway.openai.errors import encode_error, http_status

log = logging.getLogger("trio_gateway")


class GatewayApp:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.control: QuartTrio = create_control_app(gateway)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if _framed_twice(scope):
                await _refuse_framing(receive, send, self.gateway.config.max_body_bytes)
                return
            path = canonical_path(scope["path"])
            if path != scope["path"]:  # auth and both routers read the same path
                scope = {**scope, "path": path, "raw_path": quote(path).encode()}
            # As the control app would route it, or `//v1/completions` would reach its
            # placeholder for that path there; auth judges the same spelling.
            routed = app_path(scope)
            # Auth, decided here once for both route sets (see `_refuse`).
            config = self.gateway.config
            refused = refusal(scope, routed, self.gateway.api_keys, config.admin_token)
            endpoint = INFERENCE_ROUTES.get(routed)
            if endpoint is not None and scope["method"] == "POST":
                await handle_inference(
                    self.gateway, endpoint, scope, receive, send, refused=refused
                )
                return
            if refused is not None:
                await _refuse(scope, send, refused)
                return
            receive, send = _keep_alive_safe(receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.control(scope, receive, send)  # type: ignore[arg-type]

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """The gateway's nursery lives exactly as long as the ASGI lifespan."""
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with trio.open_nursery() as nursery:
            try:
                await self.gateway.start(nursery)
                self.control.nursery = nursery
                await self.control.startup()
            except Exception as error:
                # One line (the CLI adds nothing to it); the traceback at debug level.
                log.error(
                    "startup failed: %s",
                    str(error) or repr(error),
                    exc_info=log.isEnabledFor(DEBUG),
                )
                await send(
                    {"type": "lifespan.startup.failed", "message": str(error) or repr(error)}
                )
                nursery.cancel_scope.cancel()
                return
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            # Under `trio-gateway serve` the drain is over by now; under a bare hypercorn it
            # runs here, after hypercorn's own graceful timeout (see the README).
            self.gateway.shutdown.request_stop("ASGI lifespan shutdown")
            await self.gateway.shutdown.wait_stopped()
            self.gateway.stop()
            await self.control.shutdown()
            nursery.cancel_scope.cancel()
        await send({"type": "lifespan.shutdown.complete"})


CONFLICTING_FRAMING = encode_error(
    invalid_request(
        "A request must not have both Content-Length and Transfer-Encoding (RFC 9112 "
        "section 6.1); send one of them.",
        None,
        "conflicting_framing",
    )
)


def _framed_twice(scope: Scope) -> bool:
    """Both `Content-Length` and `Transfer-Encoding`: h11 reads the body as chunked and would
    keep the connection, so whatever follows the chunks (a smuggled request) would be
    served. RFC 9112 §6.1: the server must close the connection after such a request; the
    `connection: close` of the answer makes h11 and hypercorn close it."""
    length = encoding = False
    for name, _ in scope["headers"]:
        name = name.lower()  # lower already, unless hypercorn passes raw headers
        if name == b"content-length":
            length = True
        elif name == b"transfer-encoding":
            encoding = True
    return length and encoding


async def _refuse_framing(receive: Receive, send: Send, limit: int) -> None:
    """400, and the connection closed after it. The body is read first (up to `limit`):
    closing on unread bytes would reset the connection, and the client could lose the
    answer."""
    try:
        await read_body(receive, limit)
    except ClientGone:
        return
    except GatewayError:  # past the limit: answer now, unread bytes or not
        pass
    headers = ((b"content-length", b"%d" % len(CONFLICTING_FRAMING)), (b"connection", b"close"))
    await send_json(send, 400, CONFLICTING_FRAMING, headers)


async def _refuse(scope: Scope, send: Send, error: GatewayError) -> None:
    """A control route's auth refusal, answered before quart sees the request.

    Auth is one decision made in `GatewayApp.__call__`, in front of both route sets, rather
    than an ASGI middleware wrapped around them or a quart `before_request` hook: the
    inference routes answer a refusal through their own refusal path (counted in the
    request metrics, an end log line), which a wrapper would bypass, and a quart hook would
    guard the control routes only. A route added to either set is guarded by its path
    alone. The answer is quart's would-be one: the error body and an `x-request-id`.
    """
    body = encode_error(error)
    request_id = header(scope, b"x-request-id") or uuid.uuid4().hex.encode()
    headers = ((b"content-length", b"%d" % len(body)), (b"x-request-id", request_id))
    await send_json(send, http_status(error), body, headers)


def _keep_alive_safe(receive: Receive, send: Send) -> tuple[Receive, Send]:
    """Work around the quart-trio + hypercorn keep-alive bug (docs/architecture.md §7).

    hypercorn queues `http.disconnect` once a response completes; quart-trio then cancels
    its request nursery while hypercorn, inside our final `send`, starts the connection's
    keep-alive idle timer, which dies with it. Hiding a disconnect that follows the final
    body frame keeps the timer alive; quart ends the request itself right after.
    """
    final_sent = False

    async def guarded_send(message: Message) -> None:
        nonlocal final_sent
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            final_sent = True
        await send(message)

    async def guarded_receive() -> Message:
        message = await receive()
        if final_sent and message["type"] == "http.disconnect":
            await trio.sleep_forever()
        return message

    return guarded_receive, guarded_send


def create_app(config: GatewayConfig | None = None) -> GatewayApp:
    return GatewayApp(Gateway(config or load_config()))
