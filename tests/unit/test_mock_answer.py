"""The mock's answer without trio: vLLM's shapes, n choices, reasoning, tool calls, logprobs,
usage, stop strings, the unary body as the stream's deltas merged, and render/commit."""

from __future__ import annotations

import copy
import re
import zlib
from typing import Any

import orjson
import pytest

from trio_gateway.engines.mock_answer import (
    MAX_N,
    WORDS,
    MockAnswer,
    prompt_token_count,
    token_text,
)
from trio_gateway.errors import GatewayError
from trio_gateway.generation import Chunk, Endpoint, GenerationRequest, MockOptions
from trio_gateway.openai.errors import http_status, openai_type

# crc32("seed zero 22") is a multiple of len(WORDS): the first choice says
# "The lazy tokens may scope cleanly its over ...".
SEED_ZERO = "seed zero 22"
TOOLS = [
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "lookup"}},
]


def make(
    *,
    endpoint: Endpoint = "chat",
    stream: bool = True,
    prompt: str = SEED_ZERO,
    max_tokens: int | None = None,
    n: int = 1,
    stop: tuple[str, ...] = (),
    include_usage: bool = False,
    mock: MockOptions | None = None,
    body: dict[str, Any] | None = None,
    default_tokens: int = 100,
    trace_id: str = "",
    request_id: str = "req-1",
    model: str = "mock",
) -> MockAnswer:
    request = GenerationRequest(
        request_id=request_id,
        trace_id=trace_id,
        endpoint=endpoint,
        model=model,
        prompt=prompt,
        stream=stream,
        max_tokens=max_tokens,
        n=n,
        stop=stop,
        include_usage=include_usage,
        mock=mock,
        body=body or {},
    )
    return MockAnswer(request, default_tokens, created=0)


def drain(answer: MockAnswer, limit: int = 100_000) -> list[Chunk]:
    chunks = []
    for _ in range(limit):
        chunk = answer.render()
        answer.commit(chunk)
        chunks.append(chunk)
        if chunk.finish_reason is not None:
            return chunks
    raise AssertionError("the answer never finished")


def events(chunks: list[Chunk]) -> list[dict[str, Any]]:
    payload = b"".join(chunk.payload for chunk in chunks)
    assert payload.endswith(b"\n\n")
    blocks = payload[:-2].split(b"\n\n")
    assert all(block.startswith(b"data: ") and b"\n" not in block for block in blocks)
    return [orjson.loads(block[6:]) for block in blocks]


def choice_events(chunks: list[Chunk], index: int = 0) -> list[dict[str, Any]]:
    return [
        e["choices"][0]
        for e in events(chunks)
        if e["choices"] and e["choices"][0]["index"] == index
    ]


def body(chunks: list[Chunk]) -> dict[str, Any]:
    assert all(chunk.payload == b"" for chunk in chunks[:-1])
    document = orjson.loads(chunks[-1].payload)
    assert isinstance(document, dict)
    return document


def merge(chunks: list[Chunk], endpoint: Endpoint, logprobs: bool) -> dict[str, Any]:
    """What a client gets by merging a stream's events into one answer (as the OpenAI SDK's
    stream helpers do): content concatenated, tool calls merged by index, logprobs joined."""
    decoded = events(chunks)
    head = decoded[0]
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for event in decoded:
        if not event["choices"]:
            usage = event["usage"]
            continue
        [choice] = event["choices"]
        state = choices.setdefault(
            choice["index"],
            {"content": [], "reasoning": [], "calls": {}, "logprobs": [], "finish": None},
        )
        if choice["finish_reason"] is not None:
            state["finish"] = (choice["finish_reason"], choice["stop_reason"])
        if endpoint == "completion":
            state["content"].append(choice["text"])
            if choice["logprobs"] is not None:
                state["logprobs"].append(choice["logprobs"])
            continue
        delta = choice["delta"]
        if "content" in delta:
            state["content"].append(delta["content"])
        if "reasoning_content" in delta:
            state["reasoning"].append(delta["reasoning_content"])
        for call in delta.get("tool_calls", []):
            merged = state["calls"].setdefault(call["index"], {})
            for key in ("id", "type"):
                if key in call:
                    merged[key] = call[key]
            function = merged.setdefault("function", {"name": "", "arguments": ""})
            function["name"] += call["function"].get("name", "")
            function["arguments"] += call["function"].get("arguments", "")
        if choice["logprobs"] is not None:
            state["logprobs"].extend(choice["logprobs"]["content"])
    out = []
    for index in sorted(choices):
        state = choices[index]
        text = "".join(state["content"])
        merged_choice: dict[str, Any] = {"index": index}
        if endpoint == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if state["reasoning"]:
                message["reasoning_content"] = "".join(state["reasoning"])
            if state["calls"]:
                message["content"] = text or None
                message["tool_calls"] = [state["calls"][i] for i in sorted(state["calls"])]
            merged_choice["message"] = message
            merged_choice["logprobs"] = {"content": state["logprobs"]} if logprobs else None
        else:
            merged_choice["text"] = text
            merged_choice["logprobs"] = (
                {
                    key: [value for part in state["logprobs"] for value in part[key]]
                    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")
                }
                if logprobs
                else None
            )
        merged_choice["finish_reason"], merged_choice["stop_reason"] = state["finish"]
        out.append(merged_choice)
    return {
        "id": head["id"],
        "object": "chat.completion" if endpoint == "chat" else "text_completion",
        "created": head["created"],
        "model": head["model"],
        "choices": out,
        "usage": usage,
    }


def words(seed: int, count: int) -> str:
    return "".join(token_text(seed, i) for i in range(count))


SEED = zlib.crc32(SEED_ZERO.encode())


# --- the plain path -------------------------------------------------------------------------


def test_plain_chat_stream_is_vllm_s_bytes() -> None:
    chunks = drain(make(max_tokens=2, include_usage=True))
    head = (
        b'data: {"id":"chatcmpl-req-1","object":"chat.completion.chunk","created":0,"model":"mock"'
    )
    assert [c.payload for c in chunks] == [
        head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
        b'"logprobs":null,"finish_reason":null}]}\n\n'
        + head
        + b',"choices":[{"index":0,"delta":{"content":"The"},"logprobs":null,'
        b'"finish_reason":null}]}\n\n',
        head + b',"choices":[{"index":0,"delta":{"content":" lazy"},"logprobs":null,'
        b'"finish_reason":"length","stop_reason":null}]}\n\n'
        + head
        + b',"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,'
        b'"prompt_tokens_details":{"cached_tokens":0}}}\n\n',
    ]
    assert [(c.text, c.tokens, c.finish_reason, c.prompt_tokens) for c in chunks] == [
        ("The", 1, None, None),
        (" lazy", 1, "length", 3),
    ]


def test_plain_completion_stream() -> None:
    decoded = events(drain(make(endpoint="completion", mock=MockOptions(tokens=3))))
    assert [e["object"] for e in decoded] == ["text_completion"] * 3
    assert [e["id"] for e in decoded] == ["cmpl-req-1"] * 3
    assert [e["choices"][0] for e in decoded] == [
        {"index": 0, "text": "The", "logprobs": None, "finish_reason": None},
        {"index": 0, "text": " lazy", "logprobs": None, "finish_reason": None},
        {
            "index": 0,
            "text": " tokens",
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
        },
    ]


def test_plain_unary_chat_body() -> None:
    assert body(drain(make(stream=False, max_tokens=3))) == {
        "id": "chatcmpl-req-1",
        "object": "chat.completion",
        "created": 0,
        "model": "mock",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "The lazy tokens"},
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        ],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 3,
            "total_tokens": 6,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def test_without_include_usage_there_is_no_usage_event() -> None:
    decoded = events(drain(make(max_tokens=3)))
    assert all(e["choices"] for e in decoded)
    assert all("usage" not in e for e in decoded)


def test_zero_tokens_is_one_empty_final_step() -> None:
    chunks = drain(make(mock=MockOptions(tokens=0), include_usage=True))
    assert [(c.text, c.tokens, c.finish_reason, c.prompt_tokens) for c in chunks] == [
        ("", 0, "stop", 3)
    ]
    role, final, usage = events(chunks)
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert final["choices"][0]["delta"] == {}
    assert usage["usage"]["completion_tokens"] == 0


@pytest.mark.parametrize(
    "options",
    [
        {"max_tokens": 5},
        {"max_tokens": 5, "stream": False},
        {"max_tokens": 1},
        {"mock": MockOptions(tokens=4), "include_usage": True},
        {"endpoint": "completion", "max_tokens": 4},
        {"endpoint": "completion", "max_tokens": 4, "stream": False},
        {"max_tokens": 8, "stop": ("scope",)},
        {"max_tokens": 8, "stop": ("zebra", "s c"), "stream": False},
    ],
)
def test_the_plain_path_says_what_the_general_path_says(options: dict[str, Any]) -> None:
    fast = make(**options)
    general = make(**options)
    general._fast = False
    assert fast._fast
    assert drain(fast) == drain(general)


# --- deterministic text and stop strings (the first choice's content) -----------------------


@pytest.mark.parametrize(
    ("prompt", "count"), [("", 1), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)]
)
def test_prompt_token_count(prompt: str, count: int) -> None:
    assert prompt_token_count(prompt) == count


def test_text_is_deterministic_for_a_prompt() -> None:
    first = "".join(c.text for c in drain(make(prompt="some prompt", max_tokens=12)))
    second = "".join(c.text for c in drain(make(prompt="some prompt", max_tokens=12)))
    assert first == second == words(zlib.crc32(b"some prompt"), 12)
    assert not first.startswith(" ")
    assert len(first.split(" ")) == 12
    assert words(SEED, 3) == "The lazy tokens"
    assert token_text(0, 1) == " " + WORDS[7]
    assert token_text(1, 0) == WORDS[1]


def text_of(chunks: list[Chunk]) -> list[str]:
    return [c.text for c in chunks]


def test_stop_string_inside_a_token_cuts_the_text() -> None:
    chunks = drain(make(mock=MockOptions(tokens=10), stop=("tok",)))
    assert text_of(chunks) == ["The", " lazy", " "]
    assert (chunks[-1].tokens, chunks[-1].finish_reason) == (1, "stop")
    final = choice_events(chunks)[-1]
    assert final["delta"] == {"content": " "}
    assert (final["finish_reason"], final["stop_reason"]) == ("stop", "tok")


def test_stop_string_on_a_token_boundary_gives_an_empty_last_step() -> None:
    chunks = drain(make(mock=MockOptions(tokens=10), stop=(" tokens",)))
    assert text_of(chunks) == ["The", " lazy", ""]
    assert choice_events(chunks)[-1]["delta"] == {}
    assert chunks[-1].finish_reason == "stop"


def test_earliest_stop_string_wins() -> None:
    chunks = drain(make(mock=MockOptions(tokens=10), stop=("may", "lazy")))
    assert "".join(text_of(chunks)) == "The "
    assert choice_events(chunks)[-1]["stop_reason"] == "lazy"


def test_stop_string_spanning_tokens_stops_without_emitting_it() -> None:
    chunks = drain(make(mock=MockOptions(tokens=10), stop=("The lazy",)))
    assert text_of(chunks) == ["The", ""]
    assert (chunks[-1].tokens, chunks[-1].finish_reason) == (1, "stop")


def test_stop_beats_length_on_the_last_token() -> None:
    chunks = drain(make(max_tokens=2, stop=("azy",)))
    assert [(c.text, c.finish_reason) for c in chunks] == [("The", None), (" l", "stop")]


def test_stop_string_that_never_appears_finishes_by_length() -> None:
    chunks = drain(make(max_tokens=6, stop=("zebra",)))
    assert "".join(text_of(chunks)) == words(SEED, 6)
    assert chunks[-1].finish_reason == "length"


def test_stop_strings_far_into_a_long_answer() -> None:
    text = words(SEED, 400)
    start = len(words(SEED, 30)) + 2
    stop = text[start : start + 14]  # reaches back over a few tokens
    assert text.find(stop) == start
    chunks = drain(make(mock=MockOptions(tokens=400), stop=(stop, "zebra")))
    # What was sent before the token that completes the stop string stays sent (as before):
    # that token is cut where the stop string starts, if it starts inside it.
    ends = [len(words(SEED, i + 1)) for i in range(400)]
    completing = next(i for i, end in enumerate(ends) if end >= start + len(stop))
    assert "".join(text_of(chunks)) == text[: max(start, ends[completing - 1])]
    assert len(chunks) == completing + 1
    assert stop not in "".join(text_of(chunks))
    assert chunks[-1].finish_reason == "stop"


def test_stop_strings_see_only_committed_text() -> None:
    # "lazy lazy" never occurs ("The lazy tokens may ..."): an offered, refused " lazy" that
    # the answer counted twice would stop it.
    answer = make(max_tokens=4, stop=("lazy lazy",))
    answer.commit(answer.render())
    for _ in range(3):
        answer.render()  # refused
    chunks = drain(answer)
    assert "".join(text_of(chunks)) == words(SEED, 4)[3:]
    assert chunks[-1].finish_reason == "length"


# --- n choices ------------------------------------------------------------------------------


def test_n_choices_advance_in_lockstep_one_event_each() -> None:
    chunks = drain(make(n=3, max_tokens=4))
    assert [c.tokens for c in chunks] == [3, 3, 3, 3]
    decoded = events(chunks)
    assert [len(e["choices"]) for e in decoded] == [1] * 15
    assert [e["choices"][0]["index"] for e in decoded] == [0, 1, 2] * 5
    assert all(
        e["choices"][0]["delta"] == {"role": "assistant", "content": ""} for e in decoded[:3]
    )
    texts = ["".join(c["delta"]["content"] for c in choice_events(chunks, i)[1:]) for i in range(3)]
    assert texts == [words(SEED + i, 4) for i in range(3)]
    assert len(set(texts)) == 3
    assert "".join(text_of(chunks)) == texts[0]  # `Chunk.text`: the first choice's


def test_each_choice_stops_on_its_own() -> None:
    # The second choice says "quick dog through be that ...", the first "The lazy tokens ...".
    assert words(SEED + 1, 3) == "quick dog through"
    chunks = drain(make(n=2, max_tokens=5, stop=("dog",)))
    assert [c.tokens for c in chunks] == [2, 2, 1, 1, 1]
    assert [c.finish_reason for c in chunks] == [None] * 4 + ["length"]
    second = choice_events(chunks, 1)
    assert [c["delta"] for c in second[1:]] == [{"content": "quick"}, {"content": " "}]
    assert (second[-1]["finish_reason"], second[-1]["stop_reason"]) == ("stop", "dog")
    assert choice_events(chunks, 0)[-1]["finish_reason"] == "length"


def test_the_request_ends_when_every_choice_has() -> None:
    # The first choice stops at once; the chunk's finish_reason waits for the others.
    chunks = drain(make(n=2, max_tokens=3, stop=("The",)))
    assert [(c.tokens, c.finish_reason) for c in chunks] == [(2, None), (1, None), (1, "stop")]
    assert text_of(chunks) == ["", "", ""]


def test_n_is_bounded() -> None:
    assert len(drain(make(n=MAX_N, max_tokens=1))[0].payload.split(b"\n\n")) == 2 * MAX_N + 1
    with pytest.raises(GatewayError) as caught:
        make(n=MAX_N + 1)
    error = caught.value
    assert (http_status(error), openai_type(error), error.param) == (
        400,
        "invalid_request_error",
        "n",
    )
    assert error.code == "integer_above_max_value"


# --- reasoning ------------------------------------------------------------------------------


def test_reasoning_comes_first_as_reasoning_content() -> None:
    chunks = drain(make(n=2, mock=MockOptions(tokens=2, reasoning_tokens=3), include_usage=True))
    assert [c.tokens for c in chunks] == [2] * 5
    assert text_of(chunks) == ["", "", "", "The", " lazy"]
    for index in range(2):
        deltas = [c["delta"] for c in choice_events(chunks, index)[1:]]
        assert [list(d) for d in deltas] == [["reasoning_content"]] * 3 + [["content"]] * 2
        assert deltas[0]["reasoning_content"] and not deltas[0]["reasoning_content"].startswith(" ")
    usage = events(chunks)[-1]["usage"]
    assert usage["completion_tokens"] == 10
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 6}


def test_unary_reasoning_content() -> None:
    document = body(drain(make(stream=False, mock=MockOptions(tokens=2, reasoning_tokens=2))))
    message = document["choices"][0]["message"]
    assert message["content"] == "The lazy"
    assert len(message["reasoning_content"].split(" ")) == 2
    assert document["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}


def test_max_tokens_caps_the_reasoning_too() -> None:
    chunks = drain(make(max_tokens=3, mock=MockOptions(reasoning_tokens=5), include_usage=True))
    assert text_of(chunks) == ["", "", ""]
    assert chunks[-1].finish_reason == "length"
    assert events(chunks)[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}


def test_reasoning_only_finishes_on_its_last_step() -> None:
    chunks = drain(make(mock=MockOptions(tokens=0, reasoning_tokens=2)))
    assert [(c.tokens, c.finish_reason) for c in chunks] == [(1, None), (1, "stop")]


def test_reasoning_is_for_chat_only() -> None:
    with pytest.raises(GatewayError) as caught:
        make(endpoint="completion", mock=MockOptions(reasoning_tokens=1))
    assert (http_status(caught.value), caught.value.param) == (400, "mock.reasoning_tokens")


# --- tool calls -----------------------------------------------------------------------------


def tool_deltas(chunks: list[Chunk], index: int = 0) -> list[dict[str, Any]]:
    return [call for c in choice_events(chunks, index) for call in c["delta"].get("tool_calls", [])]


def test_tool_calls_stream_as_vllm_does() -> None:
    chunks = drain(make(mock=MockOptions(tokens=1, tool_calls=2), body={"tools": TOOLS}))
    assert all(c.tokens == 1 for c in chunks)
    assert text_of(chunks)[0] == "The"
    deltas = tool_deltas(chunks)
    heads = [d for d in deltas if "id" in d]
    assert [(h["index"], h["type"], h["function"]) for h in heads] == [
        (0, "function", {"name": "search", "arguments": ""}),
        (1, "function", {"name": "lookup", "arguments": ""}),
    ]
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", h["id"]) for h in heads)
    assert heads[0]["id"] != heads[1]["id"]
    for number in range(2):
        fragments = [d for d in deltas if d["index"] == number and "id" not in d]
        assert all(d == {"index": number, "function": {"arguments": ANY_STR}} for d in fragments)
        assert 3 <= len(fragments) <= 6
        arguments = "".join(d["function"]["arguments"] for d in fragments)
        assert arguments.startswith('{"query": "')
        query = orjson.loads(arguments)["query"]
        assert 1 <= len(query.split(" ")) <= 4
    # One step a delta: the content token, then per call its header and its fragments.
    assert len(chunks) == 1 + len(deltas)
    final = choice_events(chunks)[-1]
    assert (final["finish_reason"], final["stop_reason"]) == ("tool_calls", None)
    assert chunks[-1].finish_reason == "tool_calls"


class _AnyStr:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)


ANY_STR: Any = _AnyStr()


def test_tool_call_ids_are_deterministic_and_differ_per_choice() -> None:
    def ids() -> list[str]:
        chunks = drain(make(n=2, mock=MockOptions(tokens=0, tool_calls=1), body={"tools": TOOLS}))
        return [d["id"] for i in range(2) for d in tool_deltas(chunks, i) if "id" in d]

    first = ids()
    assert first == ids()
    assert len(set(first)) == 2


def test_tools_are_called_in_turn() -> None:
    chunks = drain(make(mock=MockOptions(tokens=0, tool_calls=3), body={"tools": TOOLS}))
    names = [d["function"]["name"] for d in tool_deltas(chunks) if "id" in d]
    assert names == ["search", "lookup", "search"]


def test_unary_tool_calls_without_content_have_null_content() -> None:
    document = body(
        drain(make(stream=False, mock=MockOptions(tokens=0, tool_calls=1), body={"tools": TOOLS}))
    )
    [choice] = document["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert set(call) == {"id", "type", "function"}
    assert call["function"]["name"] == "search"
    assert set(orjson.loads(call["function"]["arguments"])) == {"query"}


def test_max_tokens_cuts_a_tool_call_short() -> None:
    chunks = drain(
        make(max_tokens=3, mock=MockOptions(tokens=1, tool_calls=1), body={"tools": TOOLS})
    )
    assert chunks[-1].finish_reason == "length"
    deltas = tool_deltas(chunks)
    assert [d["function"]["arguments"] for d in deltas] == ["", '{"query": "']


def test_a_stop_string_in_the_content_skips_the_tool_calls() -> None:
    chunks = drain(
        make(stop=("lazy",), mock=MockOptions(tokens=5, tool_calls=1), body={"tools": TOOLS})
    )
    assert tool_deltas(chunks) == []
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({}, "mock.tool_calls"),
        ({"endpoint": "completion", "body": {"tools": TOOLS}}, "mock.tool_calls"),
        ({"body": {"tools": []}}, "tools"),
        ({"body": {"tools": "search"}}, "tools"),
        ({"body": {"tools": [{"type": "function", "function": {}}]}}, "tools"),
        ({"body": {"tools": [{"type": "function"}]}}, "tools"),
    ],
)
def test_tool_calls_need_tools(options: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        make(mock=MockOptions(tool_calls=1), **options)
    assert (http_status(caught.value), openai_type(caught.value), caught.value.param) == (
        400,
        "invalid_request_error",
        param,
    )


def test_tools_without_mock_tool_calls_change_nothing() -> None:
    assert drain(make(max_tokens=3, body={"tools": TOOLS})) == drain(make(max_tokens=3))


# --- logprobs -------------------------------------------------------------------------------


@pytest.mark.parametrize("top", [0, 1, 5, 20])
def test_chat_logprobs(top: int) -> None:
    chunks = drain(make(max_tokens=3, body={"logprobs": True, "top_logprobs": top}))
    entries = []
    for choice in choice_events(chunks)[1:]:
        [entry] = choice["logprobs"]["content"]
        assert entry["token"] == choice["delta"]["content"]
        entries.append(entry)
    for entry in entries:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode())
        assert entry["logprob"] < 0
        ranked = entry["top_logprobs"]
        assert len(ranked) == top
        if top:
            assert ranked[0] == {k: entry[k] for k in ("token", "logprob", "bytes")}
        assert [r["logprob"] for r in ranked] == sorted(
            (r["logprob"] for r in ranked), reverse=True
        )
        assert len({r["token"] for r in ranked}) == top
        assert all(r["bytes"] == list(r["token"].encode()) for r in ranked)
    again = drain(make(max_tokens=3, body={"logprobs": True, "top_logprobs": top}))
    assert [c.payload for c in again] == [c.payload for c in chunks]


def test_chat_logprobs_without_top_logprobs() -> None:
    chunks = drain(make(max_tokens=2, body={"logprobs": True}))
    assert [c["logprobs"]["content"][0]["top_logprobs"] for c in choice_events(chunks)[1:]] == [
        [],
        [],
    ]


@pytest.mark.parametrize("logprobs", [None, False])
def test_no_logprobs_is_null(logprobs: bool | None) -> None:
    chunks = drain(make(max_tokens=2, body={"logprobs": logprobs}))
    assert [c["logprobs"] for c in choice_events(chunks)] == [None, None, None]


def test_logprobs_only_on_content_deltas() -> None:
    chunks = drain(
        make(
            mock=MockOptions(tokens=2, reasoning_tokens=1, tool_calls=1),
            body={"logprobs": True, "top_logprobs": 2, "tools": TOOLS},
        )
    )
    kinds = [(next(iter(c["delta"])), c["logprobs"] is None) for c in choice_events(chunks)[1:]]
    assert kinds[:3] == [("reasoning_content", True), ("content", False), ("content", False)]
    assert all(is_null for _, is_null in kinds[3:])


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 2.5}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 0}, "top_logprobs"),
        ({"logprobs": 1}, "logprobs"),
    ],
)
def test_chat_logprobs_are_validated(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        make(body=extra)
    assert (http_status(caught.value), caught.value.param) == (400, param)


@pytest.mark.parametrize("top", [0, 1, 5])
def test_completion_logprobs(top: int) -> None:
    chunks = drain(make(endpoint="completion", max_tokens=4, body={"logprobs": top}))
    offset = 0
    for choice in choice_events(chunks):
        logprobs = choice["logprobs"]
        assert logprobs["tokens"] == [choice["text"]]
        assert logprobs["text_offset"] == [offset]
        [chosen] = logprobs["token_logprobs"]
        [ranked] = logprobs["top_logprobs"]
        # vLLM: the chosen token and `logprobs` more, best first.
        assert next(iter(ranked.items())) == (choice["text"], chosen)
        assert len(ranked) == top + 1
        assert list(ranked.values()) == sorted(ranked.values(), reverse=True)
        offset += len(choice["text"])


@pytest.mark.parametrize("logprobs", [6, -1, True, 1.5, "2"])
def test_completion_logprobs_are_validated(logprobs: Any) -> None:
    with pytest.raises(GatewayError) as caught:
        make(endpoint="completion", body={"logprobs": logprobs})
    assert (http_status(caught.value), caught.value.param) == (400, "logprobs")


# --- the unary body is the stream merged ----------------------------------------------------

AGREEMENT = [
    pytest.param({"max_tokens": 6}, id="plain"),
    pytest.param({"mock": MockOptions(tokens=0)}, id="empty"),
    pytest.param({"n": 3, "max_tokens": 5}, id="n"),
    pytest.param({"n": 2, "max_tokens": 6, "stop": ("dog", "scope")}, id="n-stop"),
    pytest.param({"n": 2, "mock": MockOptions(tokens=3, reasoning_tokens=2)}, id="reasoning"),
    pytest.param(
        {"n": 2, "mock": MockOptions(tokens=2, tool_calls=3), "body": {"tools": TOOLS}},
        id="tools",
    ),
    pytest.param(
        {"mock": MockOptions(tokens=0, tool_calls=2), "body": {"tools": TOOLS}}, id="tools-only"
    ),
    pytest.param(
        {"max_tokens": 9, "mock": MockOptions(tokens=2, tool_calls=2), "body": {"tools": TOOLS}},
        id="tools-length",
    ),
    pytest.param(
        {
            "n": 2,
            "mock": MockOptions(tokens=3, reasoning_tokens=1, tool_calls=1),
            "body": {"tools": TOOLS, "logprobs": True, "top_logprobs": 3},
        },
        id="everything",
    ),
    pytest.param({"max_tokens": 4, "body": {"logprobs": True}}, id="logprobs"),
    pytest.param({"endpoint": "completion", "n": 2, "max_tokens": 4}, id="completion"),
    pytest.param(
        {"endpoint": "completion", "max_tokens": 5, "stop": ("may",), "body": {"logprobs": 2}},
        id="completion-logprobs",
    ),
]


@pytest.mark.parametrize("options", AGREEMENT)
def test_unary_body_is_the_merged_stream(options: dict[str, Any]) -> None:
    endpoint = options.get("endpoint", "chat")
    logprobs = (options.get("body") or {}).get("logprobs")
    requested = logprobs is not None and logprobs is not False
    stream = drain(make(include_usage=True, **options))
    unary = drain(make(stream=False, **options))
    assert body(unary) == merge(stream, endpoint, requested)
    # The gateway's view is the same either way.
    assert [(c.text, c.tokens, c.finish_reason, c.prompt_tokens) for c in unary] == [
        (c.text, c.tokens, c.finish_reason, c.prompt_tokens) for c in stream
    ]
    assert body(unary)["usage"]["completion_tokens"] == sum(c.tokens for c in unary)


# --- render and commit ----------------------------------------------------------------------


@pytest.mark.parametrize("options", AGREEMENT)
@pytest.mark.parametrize("stream", [True, False])
def test_a_refused_step_is_offered_again_unchanged(options: dict[str, Any], stream: bool) -> None:
    expected = drain(make(stream=stream, include_usage=True, **options))
    answer = make(stream=stream, include_usage=True, **options)
    chunks = []
    for step in range(len(expected)):
        for _ in range(step % 3):  # refused 0, 1 or 2 times first
            refused = answer.render()
            snapshot = copy.deepcopy(answer._choices)
            counts = (answer._started, answer._completion_tokens, answer._reasoning_done)
            assert answer.render() == refused
            assert answer._choices == snapshot
            assert (answer._started, answer._completion_tokens, answer._reasoning_done) == counts
        chunk = answer.render()
        answer.commit(chunk)
        chunks.append(chunk)
    assert chunks == expected


def test_n_below_one_is_refused() -> None:
    with pytest.raises(GatewayError) as caught:
        make(n=0)
    assert (http_status(caught.value), caught.value.param) == (400, "n")


def test_ids_come_from_the_x_request_id_when_there_is_one() -> None:
    # As vLLM: a relay that passes the X-Request-Id on gets the answer a direct call gets.
    options: dict[str, Any] = {
        "mock": MockOptions(tokens=0, tool_calls=1),
        "body": {"tools": TOOLS},
    }
    traced = events(drain(make(trace_id="abc", **options)))
    assert {e["id"] for e in traced} == {"chatcmpl-abc"}
    assert events(drain(make(trace_id="abc", request_id="req-2", **options))) == traced
    untraced = events(drain(make(**options)))
    assert {e["id"] for e in untraced} == {"chatcmpl-req-1"}
    traced_ids = [d["id"] for d in tool_deltas_of(traced) if "id" in d]
    untraced_ids = [d["id"] for d in tool_deltas_of(untraced) if "id" in d]
    assert traced_ids != untraced_ids
    assert events(drain(make(endpoint="completion", trace_id="abc", max_tokens=1)))[0]["id"] == (
        "cmpl-abc"
    )


def tool_deltas_of(decoded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        call
        for e in decoded
        if e["choices"]
        for call in e["choices"][0]["delta"].get("tool_calls", [])
    ]


@pytest.mark.parametrize("endpoint", ["chat", "completion"])
@pytest.mark.parametrize("model", ['a "quoted"\nmodel', "ünïcødé </script>", "tab\tback\\slash"])
def test_a_tricky_model_and_id_are_escaped(endpoint: Endpoint, model: str) -> None:
    """The pre-encoded templates hold the request's model and id: both must stay JSON."""
    trace_id = 'id"\n'
    streamed = events(drain(make(endpoint=endpoint, model=model, trace_id=trace_id)))
    assert {(e["model"], e["id"].endswith(trace_id)) for e in streamed} == {(model, True)}
    unary = body(drain(make(endpoint=endpoint, stream=False, model=model, trace_id=trace_id)))
    assert unary["model"] == model and unary["id"].endswith(trace_id)
