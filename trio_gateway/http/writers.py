"""The two response writers: a stream relays the engine's events as they come and ends with
`[DONE]` (after an error event when it failed); a unary answer is the engine's whole body.
Both only move bytes the engine rendered (docs/architecture.md §1.7)."""

from __future__ import annotations

from trio_gateway.errors import ErrorKind, GatewayError, internal_error
from trio_gateway.generation import GenerationRequest
from trio_gateway.http.asgi import Send, send_error
from trio_gateway.lifecycle.flight import Flight
from trio_gateway.lifecycle.reader import ChunkReader
from trio_gateway.openai.errors import http_status
from trio_gateway.openai.sse import DONE, error_event

RETRY_AFTER_S = b"5"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def response_headers(
    error: GatewayError | None, id_header: tuple[bytes, bytes], flight: Flight | None
) -> list[tuple[bytes, bytes]]:
    """x-request-id always, x-worker-id once routed, retry-after on 429 and 503."""
    headers = [id_header]
    if flight is not None and flight.worker is not None:
        headers.append((b"x-worker-id", flight.worker.encode()))
    if error is not None and http_status(error) in (429, 503):
        headers.append((b"retry-after", RETRY_AFTER_S))
    return headers


async def write_stream(
    send: Send,
    request: GenerationRequest,
    flight: Flight,
    reader: ChunkReader,
    id_header: tuple[bytes, bytes],
) -> tuple[GatewayError | None, int | None]:
    """The engine's events as they come, then `[DONE]` (after an error event if it failed);
    returns how it ended and the status the client got (None: no response).

    Headers go out with the first chunk, so a request that fails before producing anything
    still gets a real HTTP status (and the SDK's matching exception)."""
    started = False

    async def start() -> None:
        nonlocal started
        started = True
        headers = [*SSE_HEADERS, *response_headers(None, id_header, flight)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    while True:
        batch = await reader.batch()
        payload = batch[0].payload if len(batch) == 1 else b"".join(c.payload for c in batch)
        if reader.ended:
            break
        if not payload:
            continue
        if not started:
            await start()
        await send({"type": "http.response.body", "body": payload, "more_body": True})

    error = flight.outcome(reader.finish_reason)
    if error is not None and error.kind is ErrorKind.CANCELLED:
        return error, 200 if started else None  # nobody is listening
    if not started:
        if error is not None and not payload:  # nothing produced: a plain HTTP error
            await send_error(send, error, response_headers(error, id_header, flight))
            return error, http_status(error)
        await start()  # what was produced goes out, then the error event
    tail = DONE if error is None else error_event(error) + DONE
    await send({"type": "http.response.body", "body": payload + tail, "more_body": False})
    return error, 200


async def write_unary(
    send: Send,
    request: GenerationRequest,
    flight: Flight,
    reader: ChunkReader,
    id_header: tuple[bytes, bytes],
) -> tuple[GatewayError | None, int | None]:
    """The engine's whole answer: the payload of its last chunk; returns how it ended and
    the status the client got (None: no response)."""
    body = b""
    while not reader.ended:
        for chunk in await reader.batch():
            if chunk.finish_reason is not None:
                body = chunk.payload
    error = flight.outcome(reader.finish_reason)
    if error is None and not body:
        error = internal_error("The engine finished without an answer.")
    if error is not None:
        if error.kind is ErrorKind.CANCELLED:
            return error, None
        await send_error(send, error, response_headers(error, id_header, flight))
        return error, http_status(error)
    headers = [(b"content-type", b"application/json"), *response_headers(None, id_header, flight)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
    return None, 200
