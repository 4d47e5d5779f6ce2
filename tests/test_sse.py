"""SSE framing: every event is `data: <json>\\n\\n` with OpenAI's chunk shapes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from trio_gateway.generation import Chunk, Endpoint
from trio_gateway.openai.errors import APIError, internal_error, response_timeout
from trio_gateway.openai.sse import DONE, StreamEncoder, error_event, frame

CREATED = 1_700_000_000
TRICKY = [
    "plain",
    'a "quoted" word',
    "line one\nline two\r\n",
    "tab\tback\\slash",
    "ünïcødé — 日本語 🚀",
    "</script>{}[],:",
    "\u0000\u001f control",
    "data: [DONE]\n\n",
    " ",
]


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


def encoder(endpoint: Endpoint = "chat", model: str = "mock") -> StreamEncoder:
    return StreamEncoder(endpoint, "chatcmpl-abc", model, CREATED)


def assert_head(event: dict[str, Any], endpoint: Endpoint, model: str = "mock") -> None:
    assert event["id"] == "chatcmpl-abc"
    assert event["object"] == ("chat.completion.chunk" if endpoint == "chat" else "text_completion")
    assert event["created"] == CREATED
    assert isinstance(event["created"], int)
    assert event["model"] == model


def test_done_constant() -> None:
    assert DONE == b"data: [DONE]\n\n"


def test_frame() -> None:
    assert frame(b'{"a":1}') == b'data: {"a":1}\n\n'


def test_chat_role_event() -> None:
    event = one_event(encoder("chat").role())
    assert_head(event, "chat")
    assert list(event) == ["id", "object", "created", "model", "choices"]
    assert event["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]


def test_completion_has_no_role_event() -> None:
    assert encoder("completion").role() == b""


@pytest.mark.parametrize("text", TRICKY)
def test_chat_content_event(text: str) -> None:
    blob = encoder("chat").content(text)
    event = one_event(blob)
    assert_head(event, "chat")
    assert event["choices"] == [
        {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    ]


@pytest.mark.parametrize("text", TRICKY)
def test_completion_content_event(text: str) -> None:
    event = one_event(encoder("completion").content(text))
    assert_head(event, "completion")
    assert event["choices"] == [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]
    assert "delta" not in event["choices"][0]


@pytest.mark.parametrize("model", ['we"ird', "mødel/ü", "a\nb", "org/model:tag"])
@pytest.mark.parametrize("endpoint", ["chat", "completion"])
def test_tricky_model_and_id_are_escaped(model: str, endpoint: Endpoint) -> None:
    enc = StreamEncoder(endpoint, 'id"\n', model, 7)
    for blob in (enc.content("x"), enc.finish("stop"), enc.usage(1, 2)):
        event = one_event(blob)
        assert event["model"] == model
        assert event["id"] == 'id"\n'
        assert event["created"] == 7


@pytest.mark.parametrize("reason", ["stop", "length", 'we"ird'])
def test_chat_finish_event(reason: str) -> None:
    event = one_event(encoder("chat").finish(reason))
    assert_head(event, "chat")
    assert event["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}
    ]


@pytest.mark.parametrize("reason", ["stop", "length"])
def test_completion_finish_event(reason: str) -> None:
    event = one_event(encoder("completion").finish(reason))
    assert_head(event, "completion")
    assert event["choices"] == [{"index": 0, "text": "", "logprobs": None, "finish_reason": reason}]


@pytest.mark.parametrize("endpoint", ["chat", "completion"])
def test_usage_event(endpoint: Endpoint) -> None:
    event = one_event(encoder(endpoint).usage(11, 31))
    assert_head(event, endpoint)
    assert event["choices"] == []
    assert event["usage"] == {"prompt_tokens": 11, "completion_tokens": 31, "total_tokens": 42}


def test_usage_event_zero() -> None:
    usage = one_event(encoder().usage(0, 0))["usage"]
    assert usage == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_chunks_batches_several_into_one_blob() -> None:
    enc = encoder("chat")
    blob = enc.chunks([Chunk("The"), Chunk(' "quick"'), Chunk("\nfox", 1, "length", 4)])
    assert blob == enc.content("The") + enc.content(' "quick"') + enc.content("\nfox") + (
        enc.finish("length")
    )
    parsed = events(blob)
    assert [e["choices"][0]["delta"] for e in parsed] == [
        {"content": "The"},
        {"content": ' "quick"'},
        {"content": "\nfox"},
        {},
    ]
    assert [e["choices"][0]["finish_reason"] for e in parsed] == [None, None, None, "length"]
    for event in parsed:
        assert_head(event, "chat")


def test_chunks_completion() -> None:
    enc = encoder("completion")
    parsed = events(enc.chunks([Chunk("a"), Chunk("b", 1, "stop")]))
    assert [(e["choices"][0]["text"], e["choices"][0]["finish_reason"]) for e in parsed] == [
        ("a", None),
        ("b", None),
        ("", "stop"),
    ]


def test_chunks_empty_text_with_finish_is_only_the_finish_event() -> None:
    enc = encoder("chat")
    assert enc.chunks([Chunk("", 0, "stop", 3)]) == enc.finish("stop")


def test_chunks_empty_text_without_finish_writes_nothing() -> None:
    enc = encoder("chat")
    assert enc.chunks([Chunk("", 0)]) == b""
    assert enc.chunks([]) == b""


def test_chunks_accepts_any_iterable() -> None:
    enc = encoder("chat")
    generated = (Chunk(t) for t in ("x", "y"))
    assert enc.chunks(generated) == enc.content("x") + enc.content("y")


@pytest.mark.parametrize(
    "error",
    [
        internal_error('boom "quoted"\nnext'),
        response_timeout(2.5),
        APIError(500, "n/a", "internal_error", "param-is-dropped", 17),
    ],
)
def test_error_event(error: APIError) -> None:
    event = one_event(error_event(error))
    assert event == {"error": {"message": error.message, "type": error.type, "code": error.code}}
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


def test_full_chat_stream_parses() -> None:
    enc = encoder("chat")
    body = (
        enc.role()
        + enc.chunks([Chunk("Hi"), Chunk(" there", 1, "stop", 2)])
        + enc.usage(2, 2)
        + DONE
    )
    raw_events = body.split(b"\n\n")[:-1]
    assert raw_events[-1] == b"data: [DONE]"
    parsed = events(b"\n\n".join(raw_events[:-1]) + b"\n\n")
    assert len(parsed) == 5
    assert parsed[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in parsed[:-1])
    assert text == "Hi there"
    assert parsed[-1]["usage"]["total_tokens"] == 4
