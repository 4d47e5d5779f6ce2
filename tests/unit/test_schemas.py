"""Validation of OpenAI bodies into `GenerationRequest`s, and every 400 it can answer."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from trio_gateway.errors import GatewayError
from trio_gateway.generation import Endpoint, GenerationRequest, MockOptions
from trio_gateway.openai.errors import encode_error, error_body, http_status, openai_type
from trio_gateway.openai.schemas import (
    CHAT_ROLES,
    MOCK_MAX_MS,
    MOCK_MAX_TOOL_CALLS,
    check_max_tokens,
    parse_generation_request,
    parse_json_body,
)

MAX_MODEL_LEN = 1000


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "mock", "messages": [{"role": "user", "content": "hi"}], **extra}


def completion_body(**extra: Any) -> dict[str, Any]:
    return {"model": "mock", "prompt": "once upon a time", **extra}


def parse(
    body: dict[str, Any],
    endpoint: Endpoint = "chat",
    *,
    session_header: str | None = None,
) -> GenerationRequest:
    return parse_generation_request(body, endpoint, "req-1", session_header=session_header)


def reject(
    body: dict[str, Any],
    param: str | None,
    code: str | None,
    endpoint: Endpoint = "chat",
    *,
    session_header: str | None = None,
) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse(body, endpoint, session_header=session_header)
    error = caught.value
    assert_400(error, param, code)
    return error


def assert_400(error: GatewayError, param: str | None, code: str | None) -> None:
    assert http_status(error) == 400
    assert openai_type(error) == "invalid_request_error"
    assert error.kind.value == "validation"
    assert error.param == param
    assert error.code == code
    body = error_body(error)
    assert body == {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert orjson.loads(encode_error(error)) == body


# --- parse_json_body ------------------------------------------------------------------------


def test_json_body_object_is_returned() -> None:
    assert parse_json_body(b'{"model": "mock", "n": 1, "x": [1, 2]}') == {
        "model": "mock",
        "n": 1,
        "x": [1, 2],
    }


@pytest.mark.parametrize(
    "raw",
    [b"{", b"", b"not json", b'{"a": 1} trailing', b'{"a": NaN}', b"\xff\xfe", b'{"a": 1e400}'],
)
def test_json_body_malformed_is_400(raw: bytes) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_json_body(raw)
    assert_400(caught.value, None, None)
    assert "could not parse the JSON body" in caught.value.message


@pytest.mark.parametrize("raw", [b"[]", b'[{"model": "mock"}]', b"null", b"1", b'"text"', b"true"])
def test_json_body_not_an_object_is_400(raw: bytes) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_json_body(raw)
    assert_400(caught.value, None, None)
    assert caught.value.message == "The request body must be a JSON object."


def test_json_body_malformed_error_has_no_cause() -> None:
    with pytest.raises(GatewayError) as caught:
        parse_json_body(b"{")
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ is True


# --- valid chat bodies ----------------------------------------------------------------------


def test_minimal_chat_body_defaults() -> None:
    body = chat_body()
    request = parse(body)
    assert request.request_id == "req-1"
    assert request.endpoint == "chat"
    assert request.model == "mock"
    assert request.prompt == "user: hi"
    assert request.stream is False
    assert request.max_tokens is None
    assert request.stop == ()
    assert request.include_usage is False
    assert request.mock is None
    assert request.session_id is None
    assert request.body is body


def test_chat_prompt_flattens_roles_one_line_each() -> None:
    body = chat_body(
        messages=[
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": 'say "hi"\nplease'},
            {"role": "assistant", "content": None},
            {"role": "tool", "content": "ünïcødé ✓"},
        ]
    )
    assert parse(body).prompt == (
        'system: be terse\nuser: say "hi"\nplease\nassistant: \ntool: ünïcødé ✓'
    )


def test_chat_content_parts_keep_text_and_skip_other_parts() -> None:
    content = [
        {"type": "text", "text": "look at "},
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
        {"type": "text", "text": "this"},
    ]
    body = chat_body(messages=[{"role": "user", "content": content}])
    assert parse(body).prompt == "user: look at this"


def test_chat_missing_content_is_empty_text() -> None:
    assert parse(chat_body(messages=[{"role": "assistant"}])).prompt == "assistant: "


@pytest.mark.parametrize("role", sorted(CHAT_ROLES))
def test_every_chat_role_is_accepted(role: str) -> None:
    assert parse(chat_body(messages=[{"role": role, "content": "x"}])).prompt == f"{role}: x"


def test_chat_roles_are_the_openai_ones() -> None:
    assert frozenset({"system", "developer", "user", "assistant", "tool", "function"}) == CHAT_ROLES


# --- valid completion bodies ----------------------------------------------------------------


def test_completion_prompt_string() -> None:
    request = parse(completion_body(), "completion")
    assert request.endpoint == "completion"
    assert request.prompt == "once upon a time"


def test_completion_prompt_single_element_list() -> None:
    assert parse(completion_body(prompt=["only one"]), "completion").prompt == "only one"


def test_completion_prompt_token_ids_are_joined() -> None:
    assert parse(completion_body(prompt=[101, 7, 3]), "completion").prompt == "101 7 3"


def test_completion_prompt_empty_string_is_allowed() -> None:
    assert parse(completion_body(prompt=""), "completion").prompt == ""


def test_completion_ignores_messages_and_chat_ignores_prompt() -> None:
    body = {"model": "mock", "prompt": "p", "messages": [{"role": "user", "content": "m"}]}
    assert parse(body, "completion").prompt == "p"
    assert parse(body, "chat").prompt == "user: m"


# --- max_tokens -----------------------------------------------------------------------------


def test_max_tokens() -> None:
    assert parse(chat_body(max_tokens=17)).max_tokens == 17


def test_max_completion_tokens() -> None:
    assert parse(chat_body(max_completion_tokens=9)).max_tokens == 9


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert parse(chat_body(max_tokens=50, max_completion_tokens=9)).max_tokens == 9
    assert parse(chat_body(max_tokens=9, max_completion_tokens=50)).max_tokens == 50


def test_max_tokens_null_is_unset() -> None:
    assert parse(chat_body(max_tokens=None, max_completion_tokens=None)).max_tokens is None


def test_max_tokens_at_model_len_is_allowed() -> None:
    assert parse(chat_body(max_tokens=MAX_MODEL_LEN)).max_tokens == MAX_MODEL_LEN
    assert parse(chat_body(max_tokens=1)).max_tokens == 1


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -1, -1000])
def test_max_tokens_below_one_is_400(name: str, value: int) -> None:
    error = reject(chat_body(**{name: value}), name, "integer_below_min_value")
    assert str(value) in error.message


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [MAX_MODEL_LEN + 1, 10**12])
def test_max_tokens_above_the_context_length_is_400(name: str, value: int) -> None:
    request = parse(chat_body(**{name: value}))
    with pytest.raises(GatewayError) as caught:
        check_max_tokens(request, MAX_MODEL_LEN)
    assert_400(caught.value, name, "integer_above_max_value")
    assert str(MAX_MODEL_LEN) in caught.value.message


def test_max_tokens_at_the_context_length_or_unknown_length_passes() -> None:
    check_max_tokens(parse(chat_body(max_tokens=5000)), 5000)
    check_max_tokens(parse(chat_body(max_tokens=10**9)), None)  # the engine judges
    check_max_tokens(parse(chat_body()), 1)


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [True, False, 1.5, 10.0, "10", [10], {"n": 1}])
def test_max_tokens_wrong_type_is_400(name: str, value: Any) -> None:
    error = reject(chat_body(**{name: value}), name, "invalid_type")
    assert "expected an integer" in error.message


def test_max_tokens_both_are_validated() -> None:
    reject(
        chat_body(max_completion_tokens=10, max_tokens=0), "max_tokens", "integer_below_min_value"
    )


# --- stop -----------------------------------------------------------------------------------


def test_stop_string() -> None:
    assert parse(chat_body(stop="END")).stop == ("END",)


def test_stop_empty_string_is_no_stop() -> None:
    assert parse(chat_body(stop="")).stop == ()


def test_stop_list_keeps_order_and_drops_empties() -> None:
    assert parse(chat_body(stop=["b", "", "a"])).stop == ("b", "a")


def test_stop_empty_list_and_null() -> None:
    assert parse(chat_body(stop=[])).stop == ()
    assert parse(chat_body(stop=None)).stop == ()


def test_more_stop_sequences_than_openai_allows_pass_through() -> None:
    stops = [f"s{i}" for i in range(12)]  # vLLM takes any number
    assert parse(chat_body(stop=stops)).stop == tuple(stops)


@pytest.mark.parametrize("value", [5, True, ["ok", 3], [None], {"a": "b"}, [["x"]]])
def test_stop_wrong_type_is_400(value: Any) -> None:
    reject(chat_body(stop=value), "stop", "invalid_type")


# --- stream and stream_options --------------------------------------------------------------


def test_stream_true() -> None:
    request = parse(chat_body(stream=True))
    assert request.stream is True
    assert request.include_usage is False


def test_stream_null_is_false() -> None:
    assert parse(chat_body(stream=None)).stream is False


@pytest.mark.parametrize("value", [1, 0, "true", [True]])
def test_stream_wrong_type_is_400(value: Any) -> None:
    reject(chat_body(stream=value), "stream", "invalid_type")


def test_stream_options_include_usage() -> None:
    request = parse(chat_body(stream=True, stream_options={"include_usage": True}))
    assert request.include_usage is True


def test_stream_options_include_usage_false_or_absent() -> None:
    assert (
        parse(chat_body(stream=True, stream_options={"include_usage": False})).include_usage
        is False
    )
    assert parse(chat_body(stream=True, stream_options={})).include_usage is False


def test_stream_options_null_without_stream_is_fine() -> None:
    assert parse(chat_body(stream_options=None)).include_usage is False


@pytest.mark.parametrize("stream", [False, None, "absent"])
def test_stream_options_without_stream_is_400(stream: Any) -> None:
    body = chat_body(stream_options={"include_usage": True})
    if stream != "absent":
        body["stream"] = stream
    error = reject(body, "stream_options", "invalid_value")
    assert "only allowed when 'stream' is enabled" in error.message


@pytest.mark.parametrize("value", [True, "yes", [1]])
def test_stream_options_wrong_type_is_400(value: Any) -> None:
    reject(chat_body(stream=True, stream_options=value), "stream_options", "invalid_type")


def test_completion_stream_options() -> None:
    body = completion_body(stream=True, stream_options={"include_usage": True})
    request = parse(body, "completion")
    assert (request.stream, request.include_usage) == (True, True)


# --- n and sampling numbers -----------------------------------------------------------------


def test_n_defaults_to_one_and_any_positive_n_passes() -> None:
    assert parse(chat_body()).n == 1
    assert parse(chat_body(n=None)).n == 1
    assert parse(chat_body(n=2)).n == 2
    assert parse(chat_body(n=128)).n == 128


@pytest.mark.parametrize("value", [0, -1])
def test_n_below_one_is_400(value: int) -> None:
    error = reject(chat_body(n=value), "n", "integer_below_min_value")
    assert str(value) in error.message


@pytest.mark.parametrize("value", [True, False, 1.0, "1", [1]])
def test_n_wrong_type_is_400(value: Any) -> None:
    reject(chat_body(n=value), "n", "invalid_type")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", 0),
        ("temperature", 2),
        ("temperature", 0.7),
        ("temperature", 2.5),  # above OpenAI's 2: vLLM serves it
        ("top_p", 0.0),
        ("top_p", 1),
        ("presence_penalty", -2),
        ("presence_penalty", 2.0),
        ("frequency_penalty", -1.5),
        ("temperature", None),
    ],
)
def test_sampling_numbers_in_range(name: str, value: Any) -> None:
    assert parse(chat_body(**{name: value})).prompt == "user: hi"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", -0.1),
        ("top_p", 1.5),
        ("top_p", -0.01),
        ("presence_penalty", -2.5),
        ("presence_penalty", 3),
        ("frequency_penalty", 2.1),
        ("frequency_penalty", -100),
    ],
)
def test_sampling_numbers_out_of_range_are_400(name: str, value: float) -> None:
    error = reject(chat_body(**{name: value}), name, "invalid_value")
    assert f"Invalid '{name}'" in error.message
    assert "is not between" in error.message or "is not at least" in error.message


@pytest.mark.parametrize("name", ["temperature", "top_p", "presence_penalty", "frequency_penalty"])
@pytest.mark.parametrize("value", [True, "0.5", [0.5], {"v": 1}])
def test_sampling_numbers_wrong_type_are_400(name: str, value: Any) -> None:
    error = reject(chat_body(**{name: value}), name, "invalid_type")
    assert "expected a number" in error.message


def test_temperature_out_of_range_via_json() -> None:
    body = parse_json_body(
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":-3}'
    )
    reject(body, "temperature", "invalid_value")


def test_parameters_the_gateway_does_not_know_pass_through() -> None:
    extra = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto",
        "logprobs": True,
        "top_logprobs": 5,
        "response_format": {"type": "json_object"},
        "chat_template_kwargs": {"enable_thinking": True},
        "min_p": 0.1,
    }
    request = parse(chat_body(**extra))
    assert {name: request.body[name] for name in extra} == extra


# --- model, messages, prompt ----------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["chat", "completion"])
def test_missing_model_is_400(endpoint: Endpoint) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}], "prompt": "x"}
    error = reject(body, "model", "missing_required_parameter", endpoint)
    assert error.message == "Missing required parameter: 'model'."


def test_null_model_counts_as_missing() -> None:
    reject(chat_body(model=None), "model", "missing_required_parameter")


@pytest.mark.parametrize("value", ["", 5, True, ["mock"], {"name": "mock"}])
def test_model_wrong_type_or_empty_is_400(value: Any) -> None:
    reject(chat_body(model=value), "model", "invalid_type")


def test_model_is_checked_before_messages() -> None:
    reject({}, "model", "missing_required_parameter")


def test_missing_messages_is_400() -> None:
    error = reject({"model": "mock"}, "messages", "missing_required_parameter")
    assert error.message == "Missing required parameter: 'messages'."


def test_empty_messages_is_400() -> None:
    reject(chat_body(messages=[]), "messages", "empty_array")


@pytest.mark.parametrize("value", [None, "hi", {"role": "user"}, 3])
def test_messages_wrong_type_is_400(value: Any) -> None:
    error = reject(chat_body(messages=value), "messages", "invalid_type")
    assert "expected an array" in error.message


def test_message_not_an_object_is_400() -> None:
    messages = [{"role": "user", "content": "ok"}, "not a message"]
    reject(chat_body(messages=messages), "messages[1]", "invalid_type")


@pytest.mark.parametrize("role", ["bot", "USER", "", None, 1])
def test_bad_role_is_400(role: Any) -> None:
    messages = [{"role": "user", "content": "ok"}, {"role": role, "content": "x"}]
    error = reject(chat_body(messages=messages), "messages[1].role", "invalid_value")
    assert "assistant, developer, function, system, tool, user" in error.message


def test_missing_role_is_400() -> None:
    reject(chat_body(messages=[{"content": "x"}]), "messages[0].role", "invalid_value")


@pytest.mark.parametrize("content", [5, True, {"type": "text", "text": "x"}])
def test_message_content_wrong_type_is_400(content: Any) -> None:
    messages = [{"role": "user", "content": content}]
    reject(chat_body(messages=messages), "messages[0].content", "invalid_type")


@pytest.mark.parametrize("part", ["text", {"text": "no type"}, {"type": 3}, None])
def test_message_content_bad_part_is_400(part: Any) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "ok"}, part]}]
    reject(chat_body(messages=messages), "messages[0].content", "invalid_type")


@pytest.mark.parametrize("text", [None, 5, ["a"]])
def test_message_content_text_part_without_string_is_400(text: Any) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    reject(chat_body(messages=messages), "messages[0].content.text", "invalid_type")


def test_missing_prompt_is_400() -> None:
    error = reject({"model": "mock"}, "prompt", "missing_required_parameter", "completion")
    assert error.message == "Missing required parameter: 'prompt'."


@pytest.mark.parametrize("prompt", [["a", "b"], ["one", "two", "three"]])
def test_batched_prompts_are_400(prompt: list[str]) -> None:
    error = reject(completion_body(prompt=prompt), "prompt", "unsupported_value", "completion")
    assert "Batched prompts are not supported" in error.message


@pytest.mark.parametrize(
    "prompt", [None, 5, True, [], [1, "a"], [[1, 2], [3]], [True, 1], {"text": "x"}, [None]]
)
def test_completion_prompt_wrong_type_is_400(prompt: Any) -> None:
    reject(completion_body(prompt=prompt), "prompt", "invalid_type", "completion")


# --- mock options ---------------------------------------------------------------------------


def test_mock_options_all_fields() -> None:
    mock = {
        "tokens": 3,
        "itl_ms": 2.5,
        "ttft_ms": 0,
        "error_after": 1,
        "stall_after": 0,
        "reasoning_tokens": 4,
        "tool_calls": 2,
    }
    assert parse(chat_body(mock=mock)).mock == MockOptions(
        tokens=3,
        itl_ms=2.5,
        ttft_ms=0,
        error_after=1,
        stall_after=0,
        reasoning_tokens=4,
        tool_calls=2,
    )


def test_mock_options_empty_object() -> None:
    assert parse(chat_body(mock={})).mock == MockOptions()


def test_mock_options_null_is_none() -> None:
    assert parse(chat_body(mock=None)).mock is None


def test_mock_unknown_fields_are_400_and_listed_sorted() -> None:
    error = reject(
        chat_body(mock={"tokens": 1, "zeta": 1, "alpha": 2}), "mock", "unknown_parameter"
    )
    assert error.message == "Unknown field(s) in 'mock': alpha, zeta."


@pytest.mark.parametrize("value", ["tokens=3", 3, [1], True])
def test_mock_not_an_object_is_400(value: Any) -> None:
    reject(chat_body(mock=value), "mock", "invalid_type")


INTEGER_MOCK_FIELDS = ["tokens", "error_after", "stall_after", "reasoning_tokens", "tool_calls"]


@pytest.mark.parametrize("name", INTEGER_MOCK_FIELDS)
@pytest.mark.parametrize("value", [True, 1.5, "3"])
def test_mock_integer_fields_are_checked(name: str, value: Any) -> None:
    error = reject(chat_body(mock={name: value}), f"mock.{name}", "invalid_type")
    assert "an integer" in error.message


@pytest.mark.parametrize("name", ["itl_ms", "ttft_ms"])
@pytest.mark.parametrize("value", [True, "5", [5], float("nan")])
def test_mock_number_fields_are_checked(name: str, value: Any) -> None:
    error = reject(chat_body(mock={name: value}), f"mock.{name}", "invalid_type")
    assert "a number" in error.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("tokens", -1),
        ("tokens", 10**7),
        ("itl_ms", -0.5),
        ("ttft_ms", 2147483648),
        ("itl_ms", 1e308),
        ("tool_calls", MOCK_MAX_TOOL_CALLS + 1),
        ("reasoning_tokens", -3),
    ],
)
def test_mock_fields_out_of_bounds_are_400(name: str, value: float) -> None:
    error = reject(chat_body(mock={name: value}), f"mock.{name}", "invalid_value")
    assert "is not between 0 and" in error.message


def test_mock_timing_bound_is_an_hour() -> None:
    assert parse(chat_body(mock={"ttft_ms": MOCK_MAX_MS})).mock == MockOptions(ttft_ms=MOCK_MAX_MS)


# --- session_id -----------------------------------------------------------------------------


def test_session_id_from_body() -> None:
    assert parse(chat_body(session_id="abc")).session_id == "abc"


def test_session_id_from_header() -> None:
    assert parse(chat_body(), session_header="from-header").session_id == "from-header"


def test_session_id_body_wins_over_header() -> None:
    assert parse(chat_body(session_id="body"), session_header="header").session_id == "body"


@pytest.mark.parametrize("value", ["", 5, True, ["s"]])
def test_session_id_wrong_type_is_400(value: Any) -> None:
    reject(chat_body(session_id=value), "session_id", "invalid_type")


def test_empty_session_header_is_400() -> None:
    reject(chat_body(), "session_id", "invalid_type", session_header="")


def test_everything_at_once() -> None:
    body = completion_body(
        prompt=["p"],
        stream=True,
        stream_options={"include_usage": True},
        max_completion_tokens=12,
        stop=["\n\n", "END"],
        n=1,
        temperature=0.2,
        mock={"tokens": 40},
        session_id="s-1",
    )
    request = parse_generation_request(body, "completion", "cmpl-9")
    assert request == GenerationRequest(
        request_id="cmpl-9",
        endpoint="completion",
        model="mock",
        prompt="p",
        stream=True,
        max_tokens=12,
        stop=("\n\n", "END"),
        include_usage=True,
        mock=MockOptions(tokens=40),
        session_id="s-1",
        body=body,
    )


@pytest.mark.parametrize("value", [1, "true", [], {}])
def test_include_usage_must_be_a_boolean(value: Any) -> None:
    with pytest.raises(GatewayError) as caught:
        parse(chat_body(stream=True, stream_options={"include_usage": value}))
    assert http_status(caught.value) == 400
    assert caught.value.param == "stream_options.include_usage"


def test_null_session_id_in_the_body_falls_back_to_the_header() -> None:
    request = parse(chat_body(session_id=None), session_header="from-header")
    assert request.session_id == "from-header"
    assert parse(chat_body(session_id="body"), session_header="h").session_id == "body"
