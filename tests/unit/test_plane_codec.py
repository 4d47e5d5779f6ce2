"""The worker request plane codec (docs/architecture.md §3): text frame ⇄ msgspec struct,
and its classified errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from trio_gateway.generation import Chunk, GenerationRequest, MockOptions
from trio_gateway.openai.schemas import parse_generation_request
from trio_gateway.plane.codec import ProtocolError, decode, encode
from trio_gateway.plane.frames import (
    PROTOCOL_VERSION,
    Cancel,
    ChunkFrame,
    Chunks,
    CloseSession,
    Credit,
    End,
    ErrorFrame,
    Generate,
    Hello,
    Message,
    OpenSession,
    SessionReply,
)

# A client's chat body as the gateway validated it: tools, logprobs, n=2, six stop strings
# and every mock option. Everything in it must reach the worker as it is.
CHAT_BODY: dict[str, Any] = {
    "model": "mock",
    "messages": [
        {"role": "system", "content": 'You are terse. Answer in "quotes".\nAlways.'},
        {"role": "user", "content": [{"type": "text", "text": "Wetter in Zürich? ☀\u2028"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21.5}'},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ],
    "tool_choice": "auto",
    "logprobs": True,
    "top_logprobs": 3,
    "n": 2,
    "stop": ["\n\n", "END", "###", "</s>", "Observation:", "\u2028"],
    "max_tokens": 64,
    "temperature": 0.7,
    "top_p": 0.95,
    "seed": 1234,
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "ü-user",
    "mock": {
        "tokens": 5,
        "itl_ms": 1.5,
        "ttft_ms": 20.0,
        "error_after": 3,
        "stall_after": 4,
        "reasoning_tokens": 2,
        "tool_calls": 1,
    },
}
SIMPLE_CHAT_BODY: dict[str, Any] = {
    "model": "mock",
    "messages": [{"role": "user", "content": "hello there"}],
    "stream": True,
}
COMPLETION_BODY: dict[str, Any] = {"model": "mock", "prompt": "Once upon", "max_tokens": 16}


def request(
    body: dict[str, Any] | None = None,
    endpoint: Any = "chat",
    request_id: str = "req-1",
    trace_id: str = "",
) -> GenerationRequest:
    """A request as the gateway builds it: `parse_generation_request` of a client body."""
    parsed = parse_generation_request(
        SIMPLE_CHAT_BODY if body is None else body, endpoint, request_id
    )
    return dataclasses.replace(parsed, trace_id=trace_id)


def frame_of(message: Message) -> dict[str, Any]:
    parsed = orjson.loads(encode(message))
    assert isinstance(parsed, dict)
    return parsed


def dumps(frame: Any) -> str:
    return orjson.dumps(frame).decode()


def generate_frame(body: dict[str, Any] | None = None, **request_overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "request_id": "req-1",
        "endpoint": "chat",
        "body": {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
        if body is None
        else body,
    }
    raw.update(request_overrides)
    return {"type": "generate", "id": "g1", "request": raw, "window": 8}


SSE_EVENT = (
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk",'
    '"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
)
UNARY_BODY = dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
)
# Quotes, backslashes, newlines, U+2028/U+2029 (legal in JSON, not in JS), non-ASCII, an
# astral character and a control character: what the wire must carry exactly.
TRICKY_PAYLOAD = (
    'data: {"choices":[{"delta":{"content":"say \\"hi\\"\\n\\\\ ünïcödé ✓ 日本 🎉"}}]}\n\n'
    'data: {"choices":[{"delta":{"content":"\u2028\u2029\t\x01 «»"}}]}\n\n'
    "raw: \"q\" 'q' \\ \n\r\n\u2028\u2029 ü 🎉\n\n"
)


# --- round trips ---------------------------------------------------------------------------

ROUND_TRIPS: list[Message] = [
    Hello("worker-a", ("mock", "other"), 16, 2),
    Hello("worker-b", (), 1, protocol=1),
    Hello("w-ü", ("m",), 0, 2),
    Hello("worker-c", ("mock",), 8, 2, streams_unary=False),
    Hello("worker-d", ("mock", "llama"), 4, 2, context_lengths={"mock": 4096, "llama": 131072}),
    Hello("worker-e", ("m",), 2, 2, streams_unary=False, context_lengths={"m": 0}),
    ChunkFrame("r1", SSE_EVENT),
    ChunkFrame("r1", "", tokens=0),
    ChunkFrame("r1", SSE_EVENT + SSE_EVENT, tokens=2),
    ChunkFrame("r1", SSE_EVENT, finish_reason="stop"),
    ChunkFrame("r1", SSE_EVENT, tokens=3, finish_reason="length", prompt_tokens=12),
    ChunkFrame("r1", UNARY_BODY, tokens=0, finish_reason="stop", prompt_tokens=3),
    ChunkFrame("r1", "", finish_reason="stop", prompt_tokens=0),
    ChunkFrame("r1", TRICKY_PAYLOAD),
    End("r1"),
    SessionReply("s1", "ok"),
    SessionReply("s1", "error", "no such session"),
    Generate("req-1", request(), 8),
    Generate("req-1", request(COMPLETION_BODY, "completion"), 1),
    Generate("req-2", request(CHAT_BODY, request_id="req-2", trace_id="trace-9"), 32, "sess-9"),
    Generate("req-3", request(SIMPLE_CHAT_BODY | {"mock": {}}, request_id="req-3"), 4),
    Generate("req-4", request(SIMPLE_CHAT_BODY | {"mock": {"tokens": 0}}, request_id="req-4"), 4),
    Generate("req-5", request(SIMPLE_CHAT_BODY | {"n": 3}, request_id="req-5"), 2, session_id=""),
    Credit("r1", 4),
    Credit("r1", 0),
    Cancel("r1"),
    OpenSession("o1", "sess-1", 30.0),
    OpenSession("o1", "sess-1", 0.25),
    CloseSession("c1", "sess-1"),
]


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    text = encode(message)
    assert isinstance(text, str)
    decoded = decode(text)
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=lambda m: type(m).__name__)
def test_round_trip_from_bytes(message: Message) -> None:
    assert decode(encode(message).encode()) == message


ERROR_FRAMES: list[ErrorFrame] = [
    ErrorFrame("r1", "boom"),
    ErrorFrame("r1", "bad", type="invalid_request_error", code="model_not_found", status=404),
    ErrorFrame("r1", "busy", type="overload", code=429, status=429),
    ErrorFrame("r1", "edge", status=400),
    ErrorFrame("r1", "edge", status=599),
]


@pytest.mark.parametrize("message", ERROR_FRAMES, ids=lambda m: m.message)
def test_error_frame_round_trip(message: ErrorFrame) -> None:
    assert decode(encode(message)) == message
    assert decode(encode(message).encode()) == message


def test_error_frame_wire_type_is_error() -> None:
    # The error's own type travels as `error_type`: `type` names the frame.
    frame = frame_of(ErrorFrame("r", "m", type="overload", code="c", status=429))
    assert frame == {
        "type": "error",
        "id": "r",
        "message": "m",
        "error_type": "overload",
        "code": "c",
        "status": 429,
        "backend_fault": True,
    }


def test_error_frame_type_is_read_from_error_type_only() -> None:
    decoded = decode('{"type":"error","id":"r","message":"m","error_type":"overload"}')
    assert decoded == ErrorFrame("r", "m", "overload", None, 500)


def test_error_frame_mistyped_error_type_fails_that_request() -> None:
    with pytest.raises(ProtocolError, match="error_type") as info:
        decode('{"type":"error","id":"r","message":"m","error_type":3}')
    assert info.value.request_id == "r"


def test_error_frame_defaults() -> None:
    assert decode('{"type":"error","id":"r","message":"m"}') == ErrorFrame(
        "r", "m", "internal_error", None, 500
    )


def test_error_frame_decodes_fields() -> None:
    decoded = decode('{"type":"error","id":"r","message":"m","code":"c","status":404}')
    assert isinstance(decoded, ErrorFrame)
    assert (decoded.id, decoded.message, decoded.code, decoded.status) == ("r", "m", "c", 404)


def test_every_message_type_is_covered() -> None:
    kinds = {type(m) for m in [*ROUND_TRIPS, *ERROR_FRAMES]}
    assert kinds == {
        Hello,
        ChunkFrame,
        End,
        ErrorFrame,
        SessionReply,
        Generate,
        Credit,
        Cancel,
        OpenSession,
        CloseSession,
    }


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            Hello("w", ("a", "b"), 4, PROTOCOL_VERSION),
            {
                "type": "hello",
                "worker_id": "w",
                "models": ["a", "b"],
                "max_inflight": 4,
                "protocol": PROTOCOL_VERSION,
                "streams_unary": True,
                "context_lengths": {},
                "keeps_session_history": False,
                "endpoints": ["chat", "completion"],  # a worker that does not say: the default
            },
        ),
        (
            Hello(
                "w",
                ("a",),
                4,
                PROTOCOL_VERSION,
                streams_unary=False,
                context_lengths={"a": 8192},
                keeps_session_history=True,
                endpoints=("chat", "completion", "embeddings", "tokenize", "detokenize"),
            ),
            {
                "type": "hello",
                "worker_id": "w",
                "models": ["a"],
                "max_inflight": 4,
                "protocol": PROTOCOL_VERSION,
                "streams_unary": False,
                "context_lengths": {"a": 8192},
                "keeps_session_history": True,
                "endpoints": ["chat", "completion", "embeddings", "tokenize", "detokenize"],
            },
        ),
        (End("r"), {"type": "end", "id": "r"}),
        (Credit("r", 3), {"type": "credit", "id": "r", "n": 3}),
        (Cancel("r"), {"type": "cancel", "id": "r"}),
        (SessionReply("s", "ok"), {"type": "session", "id": "s", "status": "ok", "message": None}),
        (
            OpenSession("o", "s", 5.0),
            {"type": "open_session", "id": "o", "session_id": "s", "timeout": 5.0},
        ),
        (CloseSession("c", "s"), {"type": "close_session", "id": "c", "session_id": "s"}),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "",
)
def test_wire_shape(message: Message, expected: dict[str, Any]) -> None:
    assert frame_of(message) == expected


def test_protocol_version_is_three() -> None:
    # 3: no `load` frame, no `capacity_of_str_len` (see PROTOCOL_VERSION).
    assert PROTOCOL_VERSION == 3
    assert frame_of(Hello("w", (), 1, PROTOCOL_VERSION))["protocol"] == 3


def test_load_frame_is_gone() -> None:
    # It was sent every second and never read. A v2 worker, which sends it, is refused at
    # the handshake; a stray one is an unknown frame, not silently ignored.
    with pytest.raises(ProtocolError, match="unknown frame type 'load'") as info:
        decode('{"type":"load","inflight":1,"queued":0}')
    assert info.value.request_id is None


# --- hello: what the worker's engine says of itself -----------------------------------------


def test_hello_absent_engine_keys_decode_to_defaults() -> None:
    decoded = decode(
        '{"type":"hello","worker_id":"w","models":["m"],"max_inflight":2,"protocol":2}'
    )
    assert decoded == Hello("w", ("m",), 2, 2, streams_unary=True, context_lengths={})
    assert isinstance(decoded, Hello) and decoded.keeps_session_history is False  # as before


def test_hello_engine_keys_decode() -> None:
    text = dumps(
        {
            "type": "hello",
            "worker_id": "w",
            "models": ["a", "b"],
            "max_inflight": 2,
            "protocol": 2,
            "streams_unary": False,
            "context_lengths": {"a": 4096, "b": 32768},
            "keeps_session_history": True,
        }
    )
    decoded = decode(text)
    assert isinstance(decoded, Hello)
    assert decoded.streams_unary is False
    assert decoded.keeps_session_history is True
    assert decoded.context_lengths == {"a": 4096, "b": 32768}


def test_hello_context_lengths_need_not_name_every_model() -> None:
    # "Where known": a model without a context length is simply absent.
    message = Hello("w", ("a", "b"), 2, 2, context_lengths={"a": 2048})
    assert decode(encode(message)) == message


# --- the compact chunk encoding -------------------------------------------------------------


def test_plain_chunk_is_compact() -> None:
    assert frame_of(ChunkFrame("r", SSE_EVENT)) == {
        "type": "chunk",
        "id": "r",
        "payload": SSE_EVENT,
    }


def test_chunk_payload_is_one_json_string_not_a_nested_object() -> None:
    # The engine's bytes travel as they are: the SSE event stays a string, not re-parsed JSON.
    frame = frame_of(ChunkFrame("r", UNARY_BODY, finish_reason="stop"))
    assert frame["payload"] == UNARY_BODY
    assert "text" not in frame


def test_chunk_tokens_key_only_when_not_one() -> None:
    assert "tokens" not in frame_of(ChunkFrame("r", "a", tokens=1))
    assert frame_of(ChunkFrame("r", "a b", tokens=2))["tokens"] == 2
    assert frame_of(ChunkFrame("r", "", tokens=0))["tokens"] == 0


def test_chunk_finish_reason_key_only_when_set() -> None:
    assert "finish_reason" not in frame_of(ChunkFrame("r", "a"))
    assert frame_of(ChunkFrame("r", "a", finish_reason="stop")) == {
        "type": "chunk",
        "id": "r",
        "payload": "a",
        "finish_reason": "stop",
    }
    assert frame_of(ChunkFrame("r", "a", 2, "length", 9)) == {
        "type": "chunk",
        "id": "r",
        "payload": "a",
        "tokens": 2,
        "finish_reason": "length",
        "prompt_tokens": 9,
    }


def test_chunk_prompt_tokens_travel_when_set() -> None:
    # Engines set it on the last chunk only (with finish_reason); the frame carries what it
    # is given, and a v2 peer reads it either way.
    message = ChunkFrame("r", "a", prompt_tokens=5)
    assert frame_of(message)["prompt_tokens"] == 5
    assert decode(encode(message)) == message


def test_chunk_decodes_defaults_when_keys_absent() -> None:
    decoded = decode('{"type":"chunk","id":"r","payload":"x"}')
    assert decoded == ChunkFrame("r", "x", 1, None, None)


def test_chunk_frame_to_chunk() -> None:
    frame = ChunkFrame("r", SSE_EVENT, 3, "stop", 11)
    assert frame.chunk() == Chunk("", 3, "stop", 11, SSE_EVENT.encode())
    assert ChunkFrame("r", "x").chunk() == Chunk("", 1, None, None, b"x")
    assert ChunkFrame("r", "").chunk() == Chunk("", 1, None, None, b"")


def test_chunk_frame_to_chunk_payload_is_utf8() -> None:
    chunk = ChunkFrame("r", "ü✓🎉\u2028").chunk()
    assert chunk.payload == b"\xc3\xbc\xe2\x9c\x93\xf0\x9f\x8e\x89\xe2\x80\xa8"
    assert chunk.text == ""


def test_chunk_explicit_nulls_decode_as_absent() -> None:
    text = dumps(
        {"type": "chunk", "id": "r", "payload": "x", "finish_reason": None, "prompt_tokens": None}
    )
    assert decode(text) == ChunkFrame("r", "x")


def test_v1_chunk_with_text_is_refused() -> None:
    with pytest.raises(ProtocolError, match="payload") as info:
        decode('{"type":"chunk","id":"r","text":"hello"}')
    assert info.value.request_id == "r"


@pytest.mark.parametrize(
    "payload",
    [TRICKY_PAYLOAD, UNARY_BODY, "\u2028", "\u2029", '"', "\\", "\n", "\x00", "🎉", "日本語"],
)
def test_payload_survives_exactly(payload: str) -> None:
    message = ChunkFrame("r", payload, 2, "stop", 7)
    text = encode(message)
    for wire in (text, text.encode()):
        decoded = decode(wire)
        assert isinstance(decoded, ChunkFrame)
        assert decoded.payload == payload
        assert decoded.chunk().payload == payload.encode("utf-8")
    batched = decode(encode(Chunks((message, ChunkFrame("s", payload)))))
    assert isinstance(batched, Chunks)
    assert [item.payload for item in batched.items] == [payload, payload]


def test_payload_of_engine_bytes_round_trips_to_the_same_bytes() -> None:
    # What the worker does (bytes -> str), what the gateway gets back (str -> bytes).
    engine_bytes = TRICKY_PAYLOAD.encode()
    decoded = decode(encode(ChunkFrame("r", engine_bytes.decode())))
    assert isinstance(decoded, ChunkFrame)
    assert decoded.chunk().payload == engine_bytes


# --- what a Generate carries -----------------------------------------------------------------


def test_generate_wire_shape_carries_the_body() -> None:
    original = request(CHAT_BODY, trace_id="trace-7")
    frame = frame_of(Generate("req-1", original, 16, session_id="sess"))
    assert frame == {
        "type": "generate",
        "id": "req-1",
        "request": {
            "request_id": "req-1",
            "endpoint": "chat",
            "body": CHAT_BODY,
            "trace_id": "trace-7",
        },
        "window": 16,
        "session_id": "sess",
    }
    # No v1 keys: everything the worker needs is inside the body.
    for legacy in ("model", "prompt", "stream", "max_tokens", "stop", "mock"):
        assert legacy not in frame["request"]


def test_generate_round_trip_keeps_the_body_byte_for_byte() -> None:
    original = request(CHAT_BODY, trace_id="trace-7")
    text = encode(Generate("req-1", original, 16, session_id="sess"))
    assert orjson.dumps(CHAT_BODY).decode() in text  # the body is sent verbatim
    decoded = decode(text)
    assert isinstance(decoded, Generate)
    assert orjson.dumps(decoded.request.body) == orjson.dumps(CHAT_BODY)
    assert decoded.request.body == CHAT_BODY
    assert list(decoded.request.body) == list(CHAT_BODY)  # key order too


def test_generate_round_trip_keeps_the_parsed_fields() -> None:
    original = request(CHAT_BODY, trace_id="trace-7")
    decoded = decode(encode(Generate("req-1", original, 16, session_id="sess")))
    assert isinstance(decoded, Generate)
    assert (decoded.id, decoded.window, decoded.session_id) == ("req-1", 16, "sess")
    got = decoded.request
    assert got.request_id == "req-1"
    assert got.endpoint == "chat"
    assert got.model == "mock"
    assert got.prompt == original.prompt
    assert got.prompt.startswith("system: You are terse.")
    assert "user: Wetter in Zürich? ☀\u2028" in got.prompt
    assert got.stream is True
    assert got.include_usage is True
    assert got.max_tokens == 64
    assert got.n == 2
    assert got.stop == ("\n\n", "END", "###", "</s>", "Observation:", "\u2028")
    assert got.mock == MockOptions(
        tokens=5,
        itl_ms=1.5,
        ttft_ms=20.0,
        error_after=3,
        stall_after=4,
        reasoning_tokens=2,
        tool_calls=1,
    )
    assert got.trace_id == "trace-7"
    assert got.session_id is None
    # Fields the gateway does not read still reach the worker's engine.
    assert got.body["tools"] == CHAT_BODY["tools"]
    assert got.body["tool_choice"] == "auto"
    assert (got.body["logprobs"], got.body["top_logprobs"]) == (True, 3)
    assert got.body["messages"][2]["tool_calls"] == CHAT_BODY["messages"][2]["tool_calls"]
    # The worker parses as the gateway did.
    assert got == original
    assert got == dataclasses.replace(
        parse_generation_request(CHAT_BODY, "chat", "req-1"), trace_id="trace-7", session_id=None
    )


def test_generate_session_travels_as_the_frame_session_id() -> None:
    body = SIMPLE_CHAT_BODY | {"session_id": "in-body", "session_timeout": 30}
    original = parse_generation_request(body, "chat", "req-1")
    assert original.session_id == "in-body"
    decoded = decode(encode(Generate("req-1", original, 4, session_id="in-body")))
    assert isinstance(decoded, Generate)
    assert decoded.session_id == "in-body"
    assert decoded.request.session_id is None
    assert decoded.request.session_timeout == 30.0
    assert decoded.request.body == body
    assert decoded.request == dataclasses.replace(original, session_id=None)

    from_header = parse_generation_request(SIMPLE_CHAT_BODY, "chat", "r", session_header="hdr")
    decoded = decode(encode(Generate("r", from_header, 4)))
    assert isinstance(decoded, Generate)
    assert decoded.session_id is None
    assert decoded.request.session_id is None


def test_generate_omits_unset_optionals() -> None:
    frame = frame_of(Generate("r", request(), 4))
    assert "session_id" not in frame
    assert set(frame["request"]) == {"request_id", "endpoint", "body"}


def test_generate_empty_trace_id_decodes_as_empty() -> None:
    decoded = decode(dumps(generate_frame(trace_id=None)))
    assert isinstance(decoded, Generate)
    assert decoded.request.trace_id == ""


def test_generate_decode_defaults() -> None:
    body = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
    decoded = decode(dumps(generate_frame(body)))
    assert isinstance(decoded, Generate)
    assert decoded.request == GenerationRequest(
        "req-1", "chat", "mock", "user: hi", False, body=body
    )
    assert decoded.session_id is None


def test_completion_endpoint_accepted() -> None:
    original = request(COMPLETION_BODY, "completion")
    decoded = decode(encode(Generate("req-1", original, 2)))
    assert isinstance(decoded, Generate)
    assert decoded.request.endpoint == "completion"
    assert decoded.request.prompt == "Once upon"
    assert decoded.request.stream is False
    assert decoded.request == original


def test_open_session_int_timeout_decodes_as_float() -> None:
    decoded = decode('{"type":"open_session","id":"o","session_id":"s","timeout":3}')
    assert decoded == OpenSession("o", "s", 3.0)
    assert isinstance(decoded, OpenSession)
    assert isinstance(decoded.timeout, float)


# --- connection-level errors (framing lost: no request id) ----------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "not json", "{", '{"type": "chunk"', "[1, 2", "\x00"],
)
def test_non_json_is_connection_level(text: str) -> None:
    with pytest.raises(ProtocolError, match="not JSON") as info:
        decode(text)
    assert info.value.request_id is None


def test_invalid_utf8_bytes_is_connection_level() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(b'{"type":"end","id":"\xff"}')
    assert info.value.request_id is None


@pytest.mark.parametrize("text", ["[]", '["end"]', "1", '"end"', "null", "true"])
def test_non_object_is_connection_level(text: str) -> None:
    with pytest.raises(ProtocolError, match="not a JSON object") as info:
        decode(text)
    assert info.value.request_id is None


def test_unknown_type_without_id() -> None:
    with pytest.raises(ProtocolError, match="unknown frame type 'nope'") as info:
        decode('{"type":"nope"}')
    assert info.value.request_id is None


def test_missing_type_without_id() -> None:
    with pytest.raises(ProtocolError, match="unknown frame type None") as info:
        decode("{}")
    assert info.value.request_id is None


def test_unknown_type_with_id_fails_that_request() -> None:
    with pytest.raises(ProtocolError, match="unknown frame type 'nope'") as info:
        decode('{"type":"nope","id":"req-7"}')
    assert info.value.request_id == "req-7"


def test_non_string_id_is_not_a_request_id() -> None:
    with pytest.raises(ProtocolError) as info:
        decode('{"type":"nope","id":7}')
    assert info.value.request_id is None


def test_protocol_error_is_an_exception_with_message() -> None:
    error = ProtocolError("why", "rid")
    assert str(error) == "why"
    assert error.request_id == "rid"
    assert ProtocolError("why").request_id is None


# --- per-request errors: missing or mistyped fields -----------------------------------------

PER_REQUEST_BAD: list[tuple[str, dict[str, Any]]] = [
    ("chunk payload missing", {"type": "chunk", "id": "r"}),
    ("chunk payload not str", {"type": "chunk", "id": "r", "payload": 5}),
    ("chunk payload object", {"type": "chunk", "id": "r", "payload": {"choices": []}}),
    (
        "chunk finish_reason not str",
        {"type": "chunk", "id": "r", "payload": "", "finish_reason": 1},
    ),
    (
        "chunk prompt_tokens str",
        {"type": "chunk", "id": "r", "payload": "", "finish_reason": "stop", "prompt_tokens": "3"},
    ),
    (
        "chunk prompt_tokens bool",
        {"type": "chunk", "id": "r", "payload": "", "finish_reason": "stop", "prompt_tokens": True},
    ),
    (
        "chunk prompt_tokens float",
        {"type": "chunk", "id": "r", "payload": "", "finish_reason": "stop", "prompt_tokens": 1.5},
    ),
    ("credit n missing", {"type": "credit", "id": "r"}),
    ("credit n str", {"type": "credit", "id": "r", "n": "4"}),
    ("credit n bool", {"type": "credit", "id": "r", "n": True}),
    ("credit n float", {"type": "credit", "id": "r", "n": 1.0}),
    ("error message missing", {"type": "error", "id": "r"}),
    ("error message not str", {"type": "error", "id": "r", "message": ["m"]}),
    ("session status missing", {"type": "session", "id": "r"}),
    ("session message not str", {"type": "session", "id": "r", "status": "ok", "message": 1}),
    ("open_session session_id missing", {"type": "open_session", "id": "r", "timeout": 1}),
    (
        "open_session timeout str",
        {"type": "open_session", "id": "r", "session_id": "s", "timeout": "1"},
    ),
    (
        "open_session timeout bool",
        {"type": "open_session", "id": "r", "session_id": "s", "timeout": True},
    ),
    ("close_session session_id int", {"type": "close_session", "id": "r", "session_id": 1}),
    ("generate request missing", {"type": "generate", "id": "r", "window": 4}),
    ("generate request not object", {"type": "generate", "id": "r", "request": [], "window": 4}),
    ("generate window missing", {k: v for k, v in generate_frame().items() if k != "window"}),
    ("generate window bool", generate_frame() | {"window": True}),
    ("generate window str", generate_frame() | {"window": "8"}),
    ("generate session_id int", generate_frame() | {"session_id": 3}),
]


@pytest.mark.parametrize(("label", "frame"), PER_REQUEST_BAD, ids=[b[0] for b in PER_REQUEST_BAD])
def test_bad_field_fails_only_that_request(label: str, frame: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(dumps(frame))
    assert info.value.request_id == frame["id"]


def test_bad_field_message_names_frame_field_and_why() -> None:
    with pytest.raises(
        ProtocolError, match=r"^'credit' frame: bad 'n': Expected `int`, got `str`$"
    ):
        decode('{"type":"credit","id":"r","n":"x"}')
    with pytest.raises(ProtocolError, match=r"^'credit' frame: missing 'n'$"):
        decode('{"type":"credit","id":"r"}')
    with pytest.raises(ProtocolError, match=r"^'generate' frame: missing 'request\.request_id'$"):
        decode(dumps({"type": "generate", "id": "g", "request": {}, "window": 1}))
    with pytest.raises(ProtocolError, match=r"^'chunks' frame: bad 'items\[1\]\.tokens'"):
        decode(
            dumps(
                {
                    "type": "chunks",
                    "items": [
                        {"id": "a", "payload": ""},
                        {"id": "b", "payload": "", "tokens": "2"},
                    ],
                }
            )
        )


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "end"},
        {"type": "end", "id": 5},
        {"type": "cancel", "id": None},
        {"type": "chunk", "payload": "x"},
        {"type": "credit", "n": 1},
        {"type": "error", "message": "m"},
        {"type": "generate", "request": {}, "window": 1},
    ],
)
def test_missing_or_mistyped_id_has_no_request_id(frame: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(dumps(frame))
    assert info.value.request_id is None


HELLO: dict[str, Any] = {
    "type": "hello",
    "worker_id": "w",
    "models": ["m"],
    "max_inflight": 1,
    "protocol": 2,
}


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "hello", "models": ["m"], "max_inflight": 1, "protocol": 1},
        {"type": "hello", "worker_id": "w", "max_inflight": 1, "protocol": 1},
        {"type": "hello", "worker_id": "w", "models": "m", "max_inflight": 1, "protocol": 1},
        {"type": "hello", "worker_id": "w", "models": ["m", 2], "max_inflight": 1, "protocol": 1},
        {"type": "hello", "worker_id": "w", "models": [], "max_inflight": True, "protocol": 1},
        {"type": "hello", "worker_id": "w", "models": [], "max_inflight": "1", "protocol": 1},
        {"type": "hello", "worker_id": "w", "models": [], "max_inflight": 1},
        {"type": "hello", "worker_id": "w", "models": [], "max_inflight": 1, "protocol": True},
    ],
)
def test_bad_connection_frames_are_connection_level(frame: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(dumps(frame))
    assert info.value.request_id is None


@pytest.mark.parametrize(
    "lengths",
    [
        {"m": "4096"},
        {"m": 4096.0},
        {"m": 1.5},
        {"m": True},
        {"m": None},
        {"m": [4096]},
        {"m": {"max_model_len": 4096}},
        {"a": 4096, "b": "8192"},
        [["m", 4096]],
        [4096],
        "m=4096",
        4096,
        True,
    ],
    ids=repr,
)
def test_hello_bad_context_lengths_is_connection_level(lengths: Any) -> None:
    with pytest.raises(ProtocolError, match="context_lengths") as info:
        decode(dumps(HELLO | {"context_lengths": lengths}))
    assert info.value.request_id is None


def test_hello_empty_list_context_lengths_is_connection_level() -> None:
    # A list is not a mapping, empty or not.
    with pytest.raises(ProtocolError, match="context_lengths") as info:
        decode(dumps(HELLO | {"context_lengths": []}))
    assert info.value.request_id is None


def test_hello_bad_context_lengths_has_no_request_id_even_with_an_id() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(dumps(HELLO | {"id": "req-1", "context_lengths": {"m": "x"}}))
    assert info.value.request_id is None


@pytest.mark.parametrize("value", ["true", 1, 0, None, [], {}], ids=repr)
def test_hello_bad_streams_unary_is_connection_level(value: Any) -> None:
    with pytest.raises(ProtocolError, match="streams_unary") as info:
        decode(dumps(HELLO | {"streams_unary": value}))
    assert info.value.request_id is None


@pytest.mark.parametrize("value", ["true", 1, 0, None, [], {}], ids=repr)
def test_hello_bad_keeps_session_history_is_connection_level(value: Any) -> None:
    with pytest.raises(ProtocolError, match="keeps_session_history") as info:
        decode(dumps(HELLO | {"keeps_session_history": value}))
    assert info.value.request_id is None


# --- per-request errors of a generate --------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("endpoint", "rerank"),  # not one of the gateway's
        ("endpoint", None),
        ("endpoint", 1),
        ("request_id", 1),
        ("request_id", None),
        ("body", None),
        ("body", []),
        ("body", '{"model": "mock"}'),
        ("trace_id", 7),
    ],
)
def test_bad_request_fields_fail_that_generate(field: str, value: Any) -> None:
    frame = generate_frame()
    frame["request"][field] = value
    with pytest.raises(ProtocolError, match=field) as info:
        decode(dumps(frame))
    assert info.value.request_id == "g1"


def test_missing_request_fields_fail_that_generate() -> None:
    for name in ("request_id", "endpoint", "body"):
        raw = generate_frame()
        del raw["request"][name]
        with pytest.raises(ProtocolError, match=name) as info:
            decode(dumps(raw))
        assert info.value.request_id == "g1", name


def test_v1_request_without_body_fails_that_generate() -> None:
    v1 = {"request_id": "req-1", "endpoint": "chat", "model": "mock", "prompt": "hi"}
    frame = {"type": "generate", "id": "g1", "request": v1, "window": 8}
    with pytest.raises(ProtocolError, match="body") as info:
        decode(dumps(frame))
    assert info.value.request_id == "g1"


BAD_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("missing model", {"messages": [{"role": "user", "content": "hi"}]}),
    ("n zero", SIMPLE_CHAT_BODY | {"n": 0}),
    ("n str", SIMPLE_CHAT_BODY | {"n": "2"}),
    ("model empty", SIMPLE_CHAT_BODY | {"model": ""}),
    ("model int", SIMPLE_CHAT_BODY | {"model": 3}),
    ("messages missing", {"model": "mock"}),
    ("messages empty", {"model": "mock", "messages": []}),
    ("bad role", {"model": "mock", "messages": [{"role": "robot", "content": "hi"}]}),
    ("stream str", SIMPLE_CHAT_BODY | {"stream": "false"}),
    ("max_tokens zero", SIMPLE_CHAT_BODY | {"max_tokens": 0}),
    ("max_tokens float", SIMPLE_CHAT_BODY | {"max_tokens": 1.5}),
    ("stop int", SIMPLE_CHAT_BODY | {"stop": 5}),
    ("stop mixed", SIMPLE_CHAT_BODY | {"stop": ["ok", 1]}),
    ("mock str", SIMPLE_CHAT_BODY | {"mock": "fast"}),
    ("mock unknown field", SIMPLE_CHAT_BODY | {"mock": {"tokens": 1, "speed": 2}}),
    ("mock tokens str", SIMPLE_CHAT_BODY | {"mock": {"tokens": "5"}}),
    ("mock tool_calls too many", SIMPLE_CHAT_BODY | {"mock": {"tool_calls": 10_000}}),
    ("stream_options unary", SIMPLE_CHAT_BODY | {"stream": False, "stream_options": {}}),
    ("top_p too big", SIMPLE_CHAT_BODY | {"top_p": 2}),
    ("session_id empty", SIMPLE_CHAT_BODY | {"session_id": ""}),
    ("chat body on completion", SIMPLE_CHAT_BODY),
]


@pytest.mark.parametrize(("label", "body"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_body_failing_validation_fails_only_that_generate(label: str, body: dict[str, Any]) -> None:
    endpoint = "completion" if label == "chat body on completion" else "chat"
    with pytest.raises(ProtocolError, match="should have refused") as info:
        decode(dumps(generate_frame(body, endpoint=endpoint)))
    assert info.value.request_id == "g1"


def test_body_failing_validation_message_says_why() -> None:
    with pytest.raises(ProtocolError, match=r"^'generate' frame.*'model'") as info:
        decode(dumps(generate_frame({"messages": [{"role": "user", "content": "hi"}]})))
    assert info.value.request_id == "g1"
    with pytest.raises(ProtocolError, match=r"Invalid 'n'.*got 0") as info:
        decode(dumps(generate_frame(SIMPLE_CHAT_BODY | {"n": 0})))
    assert info.value.request_id == "g1"


def test_bad_request_field_message_names_generate_frame() -> None:
    with pytest.raises(ProtocolError, match=r"^'generate' frame"):
        decode(dumps(generate_frame(body=[])))


def test_bad_endpoint_message() -> None:
    with pytest.raises(ProtocolError, match=r"bad 'request\.endpoint'"):
        decode(dumps(generate_frame(endpoint="rerank")))


# --- error frame status and code ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, 400),
        (404, 404),
        (429, 429),
        (599, 599),
        (399, 500),
        (600, 500),
        (200, 500),
        (0, 500),
        (-404, 500),
        ("404", 500),
        (404.0, 500),
        (None, 500),
        (True, 500),
    ],
)
def test_error_status_outside_client_and_server_errors_is_500(status: Any, expected: int) -> None:
    frame = {"type": "error", "id": "r", "message": "m", "status": status}
    decoded = decode(dumps(frame))
    assert isinstance(decoded, ErrorFrame)
    assert decoded.status == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [("model_not_found", "model_not_found"), (429, 429), (None, None), ([1], None), (1.5, None)],
)
def test_error_code_str_or_int_else_none(code: Any, expected: str | int | None) -> None:
    decoded = decode(dumps({"type": "error", "id": "r", "message": "m", "code": code}))
    assert isinstance(decoded, ErrorFrame)
    assert decoded.code == expected


# --- known gaps (bugs): mistyped fields accepted silently -----------------------------------


def test_chunk_tokens_mistyped_rejected() -> None:
    with pytest.raises(ProtocolError, match="tokens") as info:
        decode('{"type":"chunk","id":"r","payload":"x","tokens":"3"}')
    assert info.value.request_id == "r"


def test_chunk_tokens_bool_rejected() -> None:
    with pytest.raises(ProtocolError, match="tokens") as info:
        decode('{"type":"chunk","id":"r","payload":"x","tokens":false}')
    assert info.value.request_id == "r"


def test_generate_stream_mistyped_rejected() -> None:
    with pytest.raises(ProtocolError, match="stream") as info:
        decode(dumps(generate_frame(SIMPLE_CHAT_BODY | {"stream": "false"})))
    assert info.value.request_id == "g1"


def test_generate_mock_values_mistyped_rejected() -> None:
    with pytest.raises(ProtocolError, match=r"mock\.tokens") as info:
        decode(dumps(generate_frame(SIMPLE_CHAT_BODY | {"mock": {"tokens": "5"}})))
    assert info.value.request_id == "g1"


def test_chunks_frame_round_trip_and_rejects_bad_items() -> None:
    message = Chunks(
        (ChunkFrame("a", "x"), ChunkFrame("b", "y", 2, "stop", 3), ChunkFrame("a", "", 0))
    )
    assert decode(encode(message)) == message
    with pytest.raises(ProtocolError) as caught:
        decode('{"type": "chunks", "items": [{"id": "a"}]}')
    assert caught.value.request_id is None  # the frame's other items would be lost
    with pytest.raises(ProtocolError) as caught:
        decode('{"type": "chunks", "items": "nope"}')
    assert caught.value.request_id is None


def test_error_frame_says_whether_it_counts_against_the_worker() -> None:
    frame = ErrorFrame("r", "injected", backend_fault=False)
    assert decode(encode(frame)) == frame
    assert decode('{"type":"error","id":"r","message":"m"}') == ErrorFrame("r", "m")
    assert ErrorFrame("r", "m").backend_fault is True  # absent: counts, as a lost engine does
