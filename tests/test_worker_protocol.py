"""The worker request plane codec (DESIGN §4): text frame ⇄ dataclass, and its errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from trio_gateway.generation import Chunk, GenerationRequest, MockOptions
from trio_gateway.worker.protocol import (
    PROTOCOL_VERSION,
    Cancel,
    ChunkFrame,
    CloseSession,
    Credit,
    End,
    ErrorFrame,
    Generate,
    Hello,
    Load,
    Message,
    OpenSession,
    ProtocolError,
    SessionReply,
    decode,
    encode,
)


def request(**overrides: Any) -> GenerationRequest:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "endpoint": "chat",
        "model": "mock",
        "prompt": "hello there",
        "stream": True,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)


def frame_of(message: Message) -> dict[str, Any]:
    parsed = orjson.loads(encode(message))
    assert isinstance(parsed, dict)
    return parsed


def dumps(frame: Any) -> str:
    return orjson.dumps(frame).decode()


def generate_frame(**request_overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "request_id": "req-1",
        "endpoint": "chat",
        "model": "mock",
        "prompt": "hi",
        "stream": False,
    }
    raw.update(request_overrides)
    return {"type": "generate", "id": "g1", "request": raw, "window": 8}


# --- round trips ---------------------------------------------------------------------------

ROUND_TRIPS: list[Message] = [
    Hello("worker-a", ("mock", "other"), 16),
    Hello("worker-b", (), 1, protocol=1),
    Hello("w-ü", ("m",), 0),
    ChunkFrame("r1", "hello"),
    ChunkFrame("r1", "", tokens=0),
    ChunkFrame("r1", "two words", tokens=2),
    ChunkFrame("r1", "end", finish_reason="stop"),
    ChunkFrame("r1", "end", tokens=3, finish_reason="length", prompt_tokens=12),
    ChunkFrame("r1", "", finish_reason="stop", prompt_tokens=0),
    ChunkFrame("r1", 'quote " and \n newline and ünïcode ✓'),
    End("r1"),
    SessionReply("s1", "ok"),
    SessionReply("s1", "error", "no such session"),
    Load(0, 0),
    Load(7, 3),
    Generate("req-1", request(), 8),
    Generate("req-1", request(endpoint="completion", stream=False), 1),
    Generate(
        "req-2",
        request(
            request_id="req-2",
            max_tokens=64,
            stop=("\n", "END"),
            mock=MockOptions(tokens=5, itl_ms=1.5, ttft_ms=20.0, error_after=3, stall_after=4),
        ),
        32,
        session_id="sess-9",
    ),
    Generate("req-3", request(request_id="req-3", mock=MockOptions()), 4),
    Generate("req-4", request(request_id="req-4", mock=MockOptions(tokens=0)), 4),
    Generate("req-5", request(request_id="req-5", max_tokens=0), 2, session_id=""),
    Credit("r1", 4),
    Credit("r1", 0),
    Cancel("r1"),
    OpenSession("o1", "sess-1", 30.0),
    OpenSession("o1", "sess-1", 0.25, capacity_of_str_len=4096),
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
        Load,
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
            Hello("w", ("a", "b"), 4),
            {
                "type": "hello",
                "worker_id": "w",
                "models": ["a", "b"],
                "max_inflight": 4,
                "protocol": PROTOCOL_VERSION,
            },
        ),
        (End("r"), {"type": "end", "id": "r"}),
        (Credit("r", 3), {"type": "credit", "id": "r", "n": 3}),
        (Cancel("r"), {"type": "cancel", "id": "r"}),
        (Load(2, 1), {"type": "load", "inflight": 2, "queued": 1}),
        (SessionReply("s", "ok"), {"type": "session", "id": "s", "status": "ok", "message": None}),
        (
            OpenSession("o", "s", 5.0, 10),
            {
                "type": "open_session",
                "id": "o",
                "session_id": "s",
                "timeout": 5.0,
                "capacity_of_str_len": 10,
            },
        ),
        (CloseSession("c", "s"), {"type": "close_session", "id": "c", "session_id": "s"}),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "",
)
def test_wire_shape(message: Message, expected: dict[str, Any]) -> None:
    assert frame_of(message) == expected


def test_protocol_version_is_one() -> None:
    assert PROTOCOL_VERSION == 1
    assert frame_of(Hello("w", (), 1))["protocol"] == 1


# --- the compact chunk encoding -------------------------------------------------------------


def test_plain_chunk_is_compact() -> None:
    assert frame_of(ChunkFrame("r", "tok")) == {"type": "chunk", "id": "r", "text": "tok"}


def test_chunk_tokens_key_only_when_not_one() -> None:
    assert "tokens" not in frame_of(ChunkFrame("r", "a", tokens=1))
    assert frame_of(ChunkFrame("r", "a b", tokens=2))["tokens"] == 2
    assert frame_of(ChunkFrame("r", "", tokens=0))["tokens"] == 0


def test_chunk_finish_reason_key_only_when_set() -> None:
    assert "finish_reason" not in frame_of(ChunkFrame("r", "a"))
    assert frame_of(ChunkFrame("r", "a", finish_reason="stop")) == {
        "type": "chunk",
        "id": "r",
        "text": "a",
        "finish_reason": "stop",
    }
    assert frame_of(ChunkFrame("r", "a", 2, "length", 9)) == {
        "type": "chunk",
        "id": "r",
        "text": "a",
        "tokens": 2,
        "finish_reason": "length",
        "prompt_tokens": 9,
    }


def test_chunk_prompt_tokens_only_travel_with_the_final_chunk() -> None:
    # Current behaviour: prompt_tokens is only encoded alongside finish_reason (the last chunk
    # of a generation carries both), so on a non-final chunk it is dropped on the wire.
    message = ChunkFrame("r", "a", prompt_tokens=5)
    assert "prompt_tokens" not in frame_of(message)
    assert decode(encode(message)) == ChunkFrame("r", "a")


def test_chunk_decodes_defaults_when_keys_absent() -> None:
    decoded = decode('{"type":"chunk","id":"r","text":"x"}')
    assert decoded == ChunkFrame("r", "x", 1, None, None)


def test_chunk_frame_to_chunk() -> None:
    frame = ChunkFrame("r", "done", 3, "stop", 11)
    assert frame.chunk() == Chunk("done", 3, "stop", 11)
    assert ChunkFrame("r", "x").chunk() == Chunk("x", 1, None, None)


def test_chunk_explicit_nulls_decode_as_absent() -> None:
    text = dumps(
        {"type": "chunk", "id": "r", "text": "x", "finish_reason": None, "prompt_tokens": None}
    )
    assert decode(text) == ChunkFrame("r", "x")


# --- what a Generate carries -----------------------------------------------------------------


def test_generate_carries_only_the_codec_fields() -> None:
    original = request(
        max_tokens=7,
        stop=("x",),
        include_usage=True,
        mock=MockOptions(tokens=2),
        session_id="inside-request",
        body={"model": "mock", "messages": [], "secret": "do not forward"},
    )
    frame = frame_of(Generate("req-1", original, 16, session_id="sess"))
    assert frame == {
        "type": "generate",
        "id": "req-1",
        "request": {
            "request_id": "req-1",
            "endpoint": "chat",
            "model": "mock",
            "prompt": "hello there",
            "stream": True,
            "max_tokens": 7,
            "stop": ["x"],
            "mock": {"tokens": 2},
        },
        "window": 16,
        "session_id": "sess",
    }
    assert "body" not in frame["request"]
    assert "include_usage" not in frame["request"]
    assert "do not forward" not in encode(Generate("req-1", original, 16))

    decoded = decode(encode(Generate("req-1", original, 16, session_id="sess")))
    assert isinstance(decoded, Generate)
    assert decoded.id == "req-1"
    assert decoded.window == 16
    assert decoded.session_id == "sess"
    got = decoded.request
    assert got.request_id == "req-1"
    assert got.endpoint == "chat"
    assert got.model == "mock"
    assert got.prompt == "hello there"
    assert got.stream is True
    assert got.max_tokens == 7
    assert got.stop == ("x",)
    assert got.mock == MockOptions(tokens=2)
    # Not carried: they fall back to their defaults on the worker side.
    assert got.include_usage is False
    assert got.body == {}
    assert got.session_id is None
    assert got == request(max_tokens=7, stop=("x",), mock=MockOptions(tokens=2))


def test_generate_omits_unset_optionals() -> None:
    frame = frame_of(Generate("r", request(), 4))
    assert "session_id" not in frame
    assert set(frame["request"]) == {"request_id", "endpoint", "model", "prompt", "stream"}


def test_generate_mock_sends_only_set_options() -> None:
    frame = frame_of(Generate("r", request(mock=MockOptions(itl_ms=2.5, stall_after=1)), 4))
    assert frame["request"]["mock"] == {"itl_ms": 2.5, "stall_after": 1}
    empty = frame_of(Generate("r", request(mock=MockOptions()), 4))
    assert empty["request"]["mock"] == {}


def test_generate_empty_stop_not_sent() -> None:
    assert "stop" not in frame_of(Generate("r", request(stop=()), 4))["request"]


def test_generate_decode_defaults() -> None:
    raw = generate_frame()
    del raw["request"]["stream"]
    decoded = decode(dumps(raw))
    assert isinstance(decoded, Generate)
    assert decoded.request == GenerationRequest("req-1", "chat", "mock", "hi", False)
    assert decoded.session_id is None


def test_open_session_int_timeout_decodes_as_float() -> None:
    decoded = decode('{"type":"open_session","id":"o","session_id":"s","timeout":3}')
    assert decoded == OpenSession("o", "s", 3.0, 0)
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
    ("chunk text missing", {"type": "chunk", "id": "r"}),
    ("chunk text not str", {"type": "chunk", "id": "r", "text": 5}),
    ("chunk finish_reason not str", {"type": "chunk", "id": "r", "text": "", "finish_reason": 1}),
    (
        "chunk prompt_tokens str",
        {"type": "chunk", "id": "r", "text": "", "finish_reason": "stop", "prompt_tokens": "3"},
    ),
    (
        "chunk prompt_tokens bool",
        {"type": "chunk", "id": "r", "text": "", "finish_reason": "stop", "prompt_tokens": True},
    ),
    (
        "chunk prompt_tokens float",
        {"type": "chunk", "id": "r", "text": "", "finish_reason": "stop", "prompt_tokens": 1.5},
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
    (
        "open_session capacity bool",
        {
            "type": "open_session",
            "id": "r",
            "session_id": "s",
            "timeout": 1,
            "capacity_of_str_len": False,
        },
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


def test_bad_field_message_names_frame_and_field() -> None:
    with pytest.raises(ProtocolError, match=r"'credit' frame: bad or missing 'n'"):
        decode('{"type":"credit","id":"r","n":"x"}')


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "end"},
        {"type": "end", "id": 5},
        {"type": "cancel", "id": None},
        {"type": "chunk", "text": "x"},
        {"type": "credit", "n": 1},
        {"type": "error", "message": "m"},
        {"type": "generate", "request": {}, "window": 1},
    ],
)
def test_missing_or_mistyped_id_has_no_request_id(frame: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(dumps(frame))
    assert info.value.request_id is None


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
        {"type": "load", "inflight": 1},
        {"type": "load", "inflight": True, "queued": 0},
        {"type": "load", "inflight": 1, "queued": 0.5},
    ],
)
def test_bad_connection_frames_are_connection_level(frame: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(dumps(frame))
    assert info.value.request_id is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("endpoint", "embeddings"),
        ("endpoint", None),
        ("request_id", 1),
        ("model", None),
        ("prompt", ["hi"]),
        ("max_tokens", "10"),
        ("max_tokens", True),
        ("max_tokens", 1.5),
        ("stop", "\n"),
        ("stop", ["ok", 1]),
        ("stop", [None]),
        ("mock", "fast"),
        ("mock", {"tokens": 1, "speed": 2}),
    ],
)
def test_bad_request_fields_fail_that_generate(field: str, value: Any) -> None:
    with pytest.raises(ProtocolError, match=field) as info:
        decode(dumps(generate_frame(**{field: value})))
    assert info.value.request_id == "g1"


def test_bad_request_field_message_names_generate_frame() -> None:
    with pytest.raises(ProtocolError, match=r"^'generate' frame"):
        decode(dumps(generate_frame(max_tokens="10")))


def test_missing_request_fields_fail_that_generate() -> None:
    for name in ("request_id", "endpoint", "model", "prompt"):
        raw = generate_frame()
        del raw["request"][name]
        with pytest.raises(ProtocolError) as info:
            decode(dumps(raw))
        assert info.value.request_id == "g1", name


def test_unknown_mock_field_message() -> None:
    with pytest.raises(ProtocolError, match=r"unknown field in 'request\.mock'"):
        decode(dumps(generate_frame(mock={"bogus": 1})))


def test_bad_endpoint_message() -> None:
    with pytest.raises(ProtocolError, match=r"bad 'request\.endpoint'"):
        decode(dumps(generate_frame(endpoint="embeddings")))


def test_completion_endpoint_accepted() -> None:
    decoded = decode(dumps(generate_frame(endpoint="completion")))
    assert isinstance(decoded, Generate)
    assert decoded.request.endpoint == "completion"


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
    with pytest.raises(ProtocolError) as info:
        decode('{"type":"chunk","id":"r","text":"x","tokens":"3"}')
    assert info.value.request_id == "r"


def test_chunk_tokens_bool_rejected() -> None:
    with pytest.raises(ProtocolError) as info:
        decode('{"type":"chunk","id":"r","text":"x","tokens":false}')
    assert info.value.request_id == "r"


def test_generate_stream_mistyped_rejected() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(dumps(generate_frame(stream="false")))
    assert info.value.request_id == "g1"


def test_generate_mock_values_mistyped_rejected() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(dumps(generate_frame(mock={"tokens": "5"})))
    assert info.value.request_id == "g1"


def test_chunks_frame_round_trip_and_rejects_bad_items() -> None:
    from trio_gateway.worker.protocol import Chunks, ProtocolError

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
