"""The gateway's own SSE frames: `[DONE]`, `frame`, and a failed stream's error event."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from trio_gateway.errors import ErrorKind, GatewayError, internal_error, response_timeout
from trio_gateway.openai.sse import DONE, error_event, frame


def events(blob: bytes) -> list[dict[str, Any]]:
    """Split a body into SSE events and parse each as JSON."""
    assert blob.endswith(b"\n\n")
    parsed = []
    for event in blob.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: ")
        assert b"\n" not in event  # one line per event: the JSON never carries a raw newline
        parsed.append(orjson.loads(event[len(b"data: ") :]))
    return parsed


def one_event(blob: bytes) -> dict[str, Any]:
    [event] = events(blob)
    return event


def test_done_constant() -> None:
    assert DONE == b"data: [DONE]\n\n"


def test_frame() -> None:
    assert frame(b'{"a":1}') == b'data: {"a":1}\n\n'


@pytest.mark.parametrize(
    ("error", "type_", "code"),
    [
        (internal_error('boom "quoted"\nnext'), "internal_error", "internal_error"),
        (response_timeout(2.5), "response_timeout", "response_timeout"),
        (
            GatewayError(ErrorKind.INTERNAL, "n/a", param="param-is-dropped", code=17),
            "internal_error",
            17,
        ),
    ],
)
def test_error_event(error: GatewayError, type_: str, code: str | int) -> None:
    event = one_event(error_event(error))
    assert event == {"error": {"message": error.message, "type": type_, "code": code}}
    assert "param" not in event["error"]


def test_error_event_values() -> None:
    event = one_event(error_event(response_timeout(2.5)))
    assert event == {
        "error": {
            "message": "The engine produced no output for 2.5 s; the request was cancelled.",
            "type": "response_timeout",
            "code": "response_timeout",
        }
    }
