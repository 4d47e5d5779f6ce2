"""The requests that generate nothing, without a socket: their validation, the mock's
answers (deterministic, OpenAI's and vLLM's shapes), where an upstream serves them, how its
answer is read, and what a worker's hello says of them."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import orjson
import pytest

from trio_gateway.engines.mock_answer import non_generative as mock
from trio_gateway.engines.upstream.paths import endpoint_path
from trio_gateway.engines.upstream.relay import whole_answer_chunk
from trio_gateway.errors import ErrorKind, GatewayError
from trio_gateway.generation import Endpoint, GenerationRequest
from trio_gateway.openai.non_generative import parse_request
from trio_gateway.openai.responses import models_body
from trio_gateway.plane.codec import decode, encode
from trio_gateway.plane.frames import Generate, Hello


def parsed(endpoint: Endpoint, **body: Any) -> GenerationRequest:
    return parse_request({"model": "mock", **body}, endpoint, "req-1")


def refused(endpoint: Endpoint, body: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse_request(body, endpoint, "req-1")
    assert caught.value.kind is ErrorKind.VALIDATION
    return caught.value


def answered(endpoint: Endpoint, max_model_len: int | None = 4096, **body: Any) -> Any:
    chunk = mock.answer(parsed(endpoint, **body), max_model_len)
    assert chunk.finish_reason == "stop" and chunk.tokens == 0
    return orjson.loads(chunk.payload)


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "prompt"),
    [
        ("hello", "hello"),
        (["a", "b"], "a\nb"),
        ([1, 2, 3], "1 2 3"),
        ([[1, 2], [3]], "1 2\n3"),
    ],
    ids=["string", "strings", "token ids", "token id arrays"],
)
def test_embeddings_take_openais_four_input_forms(value: Any, prompt: str) -> None:
    request = parsed("embeddings", input=value, encoding_format="base64", dimensions=8)
    assert request.endpoint == "embeddings" and request.prompt == prompt
    assert not request.stream and request.session_id is None


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "x"}, "model", "missing_required_parameter"),
        ({"model": 3, "input": "x"}, "model", "invalid_type"),
        ({"model": "m"}, "input", "missing_required_parameter"),
        ({"model": "m", "input": 5}, "input", "invalid_type"),
        ({"model": "m", "input": ["a", 1]}, "input", "invalid_type"),
        ({"model": "m", "input": [[1], ["a"]]}, "input", "invalid_type"),
        ({"model": "m", "input": [True]}, "input", "invalid_type"),
        ({"model": "m", "input": []}, "input", "empty_array"),
        ({"model": "m", "input": ""}, "input", "empty_string"),
        ({"model": "m", "input": ["a", ""]}, "input[1]", "empty_string"),
        ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format", None),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions", None),
        ({"model": "m", "input": "x", "dimensions": "8"}, "dimensions", "invalid_type"),
    ],
)
def test_bad_embeddings_bodies_are_400_naming_the_field(
    body: dict[str, Any], param: str, code: str | None
) -> None:
    error = refused("embeddings", body)
    assert error.param == param
    if code is not None:
        assert error.code == code


def test_tokenize_takes_a_prompt_or_messages_as_vllm_does() -> None:
    assert parsed("tokenize", prompt="abc").prompt == "abc"
    chat = parsed("tokenize", messages=[{"role": "user", "content": "hi"}])
    assert chat.prompt == "user: hi"  # as the chat route reads messages: the mock's count
    assert refused("tokenize", {"model": "m"}).param == "prompt"
    assert refused("tokenize", {"model": "m", "prompt": ["a"]}).code == "invalid_type"
    both = {"model": "m", "prompt": "a", "messages": [{"role": "user", "content": "b"}]}
    assert refused("tokenize", both).param == "messages"
    assert refused("tokenize", {"prompt": "a"}).param == "model"


def test_detokenize_takes_a_list_of_ints() -> None:
    assert parsed("detokenize", tokens=[1, 2]).prompt == "1 2"
    assert parsed("detokenize", tokens=[]).prompt == ""
    for bad in ({"model": "m"}, {"model": "m", "tokens": [1, "2"]}, {"model": "m", "tokens": 3}):
        assert refused("detokenize", bad).param == "tokens"
    assert refused("detokenize", {"model": "m", "tokens": [True]}).param == "tokens"


def test_the_completions_are_still_validated_as_before() -> None:
    request = parse_request({"model": "m", "prompt": "x", "stream": True}, "completion", "r")
    assert request.stream and request.endpoint == "completion"
    assert refused("chat", {"model": "m"}).param == "messages"


# -- the mock's answers -------------------------------------------------------------------


def test_mock_embeddings_are_deterministic_unit_vectors_in_openais_shape() -> None:
    document = answered("embeddings", input=["hello world", "other"])
    assert document["object"] == "list" and document["model"] == "mock"
    first, second = document["data"]
    assert [first["index"], second["index"]] == [0, 1]
    assert first["object"] == "embedding" and len(first["embedding"]) == 256
    assert math.isclose(math.fsum(v * v for v in first["embedding"]), 1.0, rel_tol=1e-5)
    assert first["embedding"] != second["embedding"]
    again = answered("embeddings", input="hello world")["data"][0]["embedding"]
    assert again == first["embedding"]
    # "hello world" is 3 of the mock's tokens, "other" 2: OpenAI's usage, no completion.
    assert document["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    ids = answered("embeddings", input=[[1, 2, 3], [4]])
    assert ids["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


def test_mock_embeddings_honour_dimensions_and_base64() -> None:
    full = answered("embeddings", input="abc")["data"][0]["embedding"]
    short = answered("embeddings", input="abc", dimensions=8)["data"][0]["embedding"]
    assert len(short) == 8
    assert math.isclose(math.fsum(v * v for v in short), 1.0, rel_tol=1e-5)
    # The head of the full vector, normalised again: the same direction.
    head_norm = math.sqrt(math.fsum(v * v for v in full[:8]))
    expected = [f / head_norm for f in full[:8]]
    assert all(math.isclose(s, e, rel_tol=1e-4) for s, e in zip(short, expected, strict=True))
    encoded = answered("embeddings", input="abc", dimensions=8, encoding_format="base64")
    text = encoded["data"][0]["embedding"]
    assert isinstance(text, str)
    assert list(struct.unpack("<8f", base64.b64decode(text))) == short  # float32 both ways
    with pytest.raises(GatewayError) as caught:
        answered("embeddings", input="abc", dimensions=257)
    assert caught.value.kind is ErrorKind.VALIDATION and caught.value.param == "dimensions"


def test_mock_tokenize_is_four_characters_a_token_in_vllms_shape() -> None:
    document = answered("tokenize", max_model_len=2048, prompt="Hello, world!")
    assert document == {
        "count": 4,
        "max_model_len": 2048,
        "tokens": document["tokens"],
    }
    assert len(set(document["tokens"])) == 4
    with_strs = answered("tokenize", prompt="Hello, world!", return_token_strs=True)
    assert with_strs["token_strs"] == ["Hell", "o, w", "orld", "!"]
    assert with_strs["tokens"] == document["tokens"]


def test_mock_detokenize_inverts_tokenize_where_it_can() -> None:
    text = "The quick brown fox, 42 times.\n"
    tokens = answered("tokenize", prompt=text)["tokens"]
    assert answered("detokenize", tokens=tokens) == {"prompt": text}
    # A piece outside ASCII gets a hashed id, which comes back as U+FFFD.
    mixed = answered("tokenize", prompt="abcdé!")["tokens"]
    assert len(mixed) == 2 and mixed[1] >= mock.SPELLED_IDS
    assert answered("detokenize", tokens=mixed) == {"prompt": "abcd\ufffd"}
    for outside in (-1, mock.VOCAB_SIZE):
        with pytest.raises(GatewayError) as caught:
            answered("detokenize", tokens=[5, outside])
        assert caught.value.kind is ErrorKind.VALIDATION and "out of vocabulary" in str(
            caught.value.message
        )


# -- upstreams ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "endpoint", "path"),
    [
        ("/v1", "chat", "/v1/chat/completions"),
        ("/v1", "completion", "/v1/completions"),
        ("/v1", "embeddings", "/v1/embeddings"),
        ("/v1", "tokenize", "/tokenize"),
        ("/v1/", "detokenize", "/detokenize"),
        ("/vllm/v1", "tokenize", "/vllm/tokenize"),
        ("/vllm/v1", "embeddings", "/vllm/v1/embeddings"),
        ("", "tokenize", "/tokenize"),
        ("", "embeddings", "/embeddings"),
    ],
)
def test_vllms_tokenizer_routes_are_at_the_server_root(
    base: str, endpoint: Endpoint, path: str
) -> None:
    assert endpoint_path(base, endpoint) == path


def test_an_upstreams_whole_answer_is_relayed_untouched_and_counted() -> None:
    embeddings = orjson.dumps(
        {"object": "list", "data": [], "model": "m", "usage": {"prompt_tokens": 7}}
    )
    chunk = whole_answer_chunk("up", embeddings)
    assert chunk.payload is embeddings and chunk.prompt_tokens == 7
    assert chunk.finish_reason == "stop" and chunk.tokens == 0
    counted = whole_answer_chunk("up", b'{"count": 3, "max_model_len": 9, "tokens": [1, 2, 3]}')
    assert counted.prompt_tokens == 3
    assert whole_answer_chunk("up", b'{"prompt": "abc"}').prompt_tokens is None
    with pytest.raises(GatewayError) as caught:
        whole_answer_chunk("up", b'{"object": "error", "message": "bad", "code": 400}')
    assert caught.value.message == "bad"
    with pytest.raises(GatewayError):
        whole_answer_chunk("up", b"[]")


# -- /v1/models and the worker plane ------------------------------------------------------


def test_the_model_list_carries_max_model_len_where_known() -> None:
    body = models_body(["a", "b"], 10, {"a": 4096, "b": None})
    assert body["data"][0]["max_model_len"] == 4096
    assert "max_model_len" not in body["data"][1]


def test_a_generate_frame_carries_the_endpoint_to_the_worker() -> None:
    request = parse_request({"model": "m", "input": ["a", "b"]}, "embeddings", "req-9")
    decoded = decode(encode(Generate("req-9", request, 32)))
    assert isinstance(decoded, Generate)
    assert decoded.request.endpoint == "embeddings" and decoded.request.body == request.body


def test_an_older_workers_hello_says_only_the_completions() -> None:
    old = '{"type":"hello","worker_id":"w","models":["m"],"max_inflight":4,"protocol":3}'
    hello = decode(old)
    assert isinstance(hello, Hello) and hello.endpoints == ("chat", "completion")
