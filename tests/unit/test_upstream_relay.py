"""The relay of upstream answers and the SSE decoder under it: pure code, fed bytes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from trio_gateway.engines.upstream.relay import StreamRelay, plain_deltas, unary_chunk
from trio_gateway.errors import GatewayError
from trio_gateway.openai.errors import http_status
from trio_gateway.openai.sse import SSEDecodeError, SSEDecoder, completion_text


def event(document: dict[str, Any], line_end: bytes = b"\n") -> bytes:
    return b"data: " + orjson.dumps(document) + line_end * 2


def delta(index: int = 0, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    choice = {"index": index, "delta": fields, "logprobs": None, "finish_reason": finish}
    return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "choices": [choice]}


USAGE = {
    "id": "chatcmpl-up",
    "choices": [],
    "usage": {
        "prompt_tokens": 7,
        "completion_tokens": 5,
        "total_tokens": 12,
        "completion_tokens_details": {"reasoning_tokens": 2},
    },
}
DONE = b"data: [DONE]\n\n"


def relay_all(data: list[bytes], *, forward_usage: bool = False) -> tuple[bytes, int, StreamRelay]:
    relay = StreamRelay("up", forward_usage=forward_usage)
    out = b""
    tokens = 0
    for piece in data:
        chunk = relay.feed(piece)
        if chunk is not None:
            out += chunk.payload
            tokens += chunk.tokens
    final = relay.final()
    return out + final.payload, tokens + final.tokens, relay


RICH = [
    event(delta(role="assistant", content="")),
    event(delta(reasoning_content="think")),
    event(delta(reasoning_content=" more")),
    event(delta(content="Hi", unknown_field={"x": [1, 2]})),
    event(
        delta(
            tool_calls=[
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ]
        )
    ),
    event(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"a": 1}'}}])),
    event(delta(finish="tool_calls")),
    event(USAGE),
    DONE,
]


def test_events_pass_through_byte_for_byte_except_done_and_unasked_usage() -> None:
    out, tokens, relay = relay_all(RICH)
    assert out == b"".join(RICH[:-2])  # no usage event (not asked), no [DONE]
    assert relay.finish_reason == "tool_calls"
    assert (relay.prompt_tokens, relay.completion_tokens) == (7, 5)
    assert tokens == 5  # the upstream's count wins; reasoning and tool deltas counted


def test_usage_event_kept_when_the_client_asked() -> None:
    out, _, _ = relay_all(RICH, forward_usage=True)
    assert out == b"".join(RICH[:-1])


def test_any_split_of_the_bytes_gives_the_same_relay() -> None:
    whole = b"".join(RICH)
    expected, tokens, _ = relay_all([whole])
    for size in (1, 2, 7, 64):
        pieces = [whole[i : i + size] for i in range(0, len(whole), size)]
        assert relay_all(pieces)[:2] == (expected, tokens)


def test_n_choices_all_relayed_finish_is_choice_zero() -> None:
    events = [
        event(delta(0, role="assistant", content="")),
        event(delta(1, role="assistant", content="")),
        event(delta(1, content="b")),
        event(delta(0, content="a")),
        event(delta(1, finish="length")),
        event(delta(0, finish="stop")),
        DONE,
    ]
    out, tokens, relay = relay_all(events)
    assert out == b"".join(events[:-1])
    assert relay.finish_reason == "stop"
    assert tokens == 2  # no usage from the upstream: one per delta that holds output


def test_role_event_is_not_a_token() -> None:
    relay = StreamRelay("up", forward_usage=False)
    chunk = relay.feed(event(delta(role="assistant", content="")))
    assert chunk is not None and chunk.tokens == 0 and chunk.payload


def test_crlf_streams_and_comments() -> None:
    data = (
        b": ping - 2026-12-01\r\n\r\n"
        + event(delta(content="x"), b"\r\n")
        + event(delta(finish="stop"), b"\r\n")
        + b"data: [DONE]\r\n\r\n"
    )
    out, tokens, relay = relay_all([data])
    assert out == event(delta(content="x"), b"\r\n") + event(delta(finish="stop"), b"\r\n")
    assert relay.finish_reason == "stop" and tokens == 1


def test_a_crlf_stream_cut_inside_its_blank_line() -> None:
    """The read ends between a \r and its \n: the event is relayed at once, the \n skipped."""
    first = event(delta(content="x"), b"\r\n")
    relay = StreamRelay("up", forward_usage=False)
    chunk = relay.feed(first[:-1])
    assert chunk is not None and (chunk.payload, chunk.tokens) == (first[:-1], 1)
    last = event(delta(finish="stop"), b"\r\n")
    chunk = relay.feed(first[-1:] + last + b"data: [DONE]\r\n\r\n")
    assert chunk is not None and chunk.payload == last
    assert relay.finish_reason == "stop" and relay.done


def test_tokens_with_line_separators_are_not_line_ends() -> None:
    text = "a\u2028b\u0085c\x1cd"
    events = [event(delta(content=text)), event(delta(finish="stop")), DONE]
    out, _, _ = relay_all(events)
    assert out == b"".join(events[:-1])
    assert completion_text(out) == text


def test_finish_with_spaces_in_json_is_seen() -> None:
    spaced = b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}\n\n'
    _, _, relay = relay_all([spaced, DONE])
    assert relay.finish_reason == "length"


def test_a_choice_finishing_among_null_finishes_is_seen() -> None:
    both = {
        "choices": [
            {"index": 1, "delta": {"content": "x"}, "finish_reason": None},
            {"index": 0, "delta": {}, "finish_reason": "stop"},
        ]
    }
    _, tokens, relay = relay_all([event(both), DONE])
    assert relay.finish_reason == "stop" and tokens == 1


@pytest.mark.parametrize(
    "error_event",
    [
        event({"error": {"message": "boom", "type": "internal_error", "code": 500}}),
        event({"object": "error", "message": "bad", "type": "BadRequestError", "code": 400}),
        b'error: {"code": 500, "message": "llama.cpp failed", "type": "server_error"}\n\n',
    ],
)
def test_inband_errors_fail_the_stream_after_what_came_before(error_event: bytes) -> None:
    relay = StreamRelay("up", forward_usage=False)
    before = event(delta(content="x"))
    chunk = relay.feed(before + error_event + event(delta(content="after")))
    assert chunk is not None and chunk.payload == before  # in the same read, still relayed
    with pytest.raises(GatewayError) as caught:
        relay.check()
    assert caught.value.message
    assert relay.feed(event(delta(content="later"))) is None


def test_a_4xx_inband_error_stays_the_clients() -> None:
    relay = StreamRelay("up", forward_usage=False)
    assert relay.feed(event({"error": {"message": "too long", "code": 400}})) is None
    assert relay.failure is not None
    assert (http_status(relay.failure), relay.failure.kind.value) == (400, "validation")


def test_a_token_that_spells_error_is_not_an_error() -> None:
    text = '"error": {"message": "not really"}'
    events = [event(delta(content=text)), event(delta(finish="stop")), DONE]
    out, tokens, _ = relay_all(events)
    assert out == b"".join(events[:-1]) and tokens == 1


def test_end_without_finish_is_malformed() -> None:
    relay = StreamRelay("up", forward_usage=False)
    relay.feed(event(delta(content="x")) + DONE)
    with pytest.raises(GatewayError) as caught:
        relay.final()
    assert caught.value.kind.value == "internal"


def test_non_json_event_is_malformed() -> None:
    relay = StreamRelay("up", forward_usage=False)
    relay.feed(b'data: {"role": nope\n\n')
    with pytest.raises(GatewayError) as caught:
        relay.check()
    assert "not JSON" in caught.value.message


def test_nothing_after_done_counts() -> None:
    relay = StreamRelay("up", forward_usage=False)
    chunk = relay.feed(event(delta(finish="stop")) + DONE + event(delta(content="late")))
    assert chunk is not None and b"late" not in chunk.payload
    assert relay.feed(event(delta(content="later"))) is None


def test_an_over_long_event_fails_the_stream() -> None:
    relay = StreamRelay("up", forward_usage=False)
    relay.feed(b"data: " + b"x" * (9 * 1024 * 1024))
    with pytest.raises(GatewayError):
        relay.check()


def test_decoder_bounds_an_event() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"data: " + b"x" * 200)


def test_decoder_joins_multi_line_data() -> None:
    (only,) = SSEDecoder().feed(b"event: message\ndata: {\ndata: }\nid: 3\n\n")
    assert only.value == b"{\n}"


def test_unary_answer_is_relayed_whole() -> None:
    body = orjson.dumps(
        {
            "id": "chatcmpl-up",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"content": "a", "tool_calls": []},
                    "finish_reason": "stop",
                },
                {"index": 1, "message": {"content": "b"}, "finish_reason": "length"},
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
            "kv_transfer_params": None,
        }
    )
    chunk = unary_chunk("up", body)
    assert chunk.payload is body
    assert (chunk.finish_reason, chunk.tokens, chunk.prompt_tokens) == ("stop", 9, 3)
    assert completion_text(body) == "a"


def test_unary_error_body_raises() -> None:
    with pytest.raises(GatewayError) as caught:
        unary_chunk("up", orjson.dumps({"error": {"message": "nope", "code": 400}}))
    assert (caught.value.message, http_status(caught.value)) == ("nope", 400)


def test_plain_reads_are_counted_whole() -> None:
    three = event(delta(content="a")) + event(delta(content="b")) + event(delta(content="c"))
    assert plain_deltas(three) == 3
    tricky = event(delta(content="data: {x}\n\n[DONE]: ping"))  # all escaped inside JSON
    assert plain_deltas(tricky) == 1


@pytest.mark.parametrize(
    "data",
    [
        event(delta(content="a")) + b"data: [DONE]\n\n",
        event(delta(content="a")) + b": ping\n\n",
        event(delta(content="a"))[:-1],  # an event cut short
        event(delta(role="assistant", content="")),
        event(delta(finish="stop")),
        event(USAGE),
        event({"error": {"message": "x"}}),
        b"event: message\n" + event(delta(content="a")),
        event(delta(content="a"), b"\r\n"),
        # JSON may hold a raw \r as whitespace; to the decoder it ends a line (two events).
        event(delta(content="a"))[:-2] + b"\r\rdata: {}\n\n",
        b"",
    ],
)
def test_reads_with_anything_else_take_the_event_path(data: bytes) -> None:
    assert plain_deltas(data) == 0


def test_the_fast_path_and_the_event_path_agree() -> None:
    plain = [event(delta(content=f"t{i}")) for i in range(5)]
    reads = [RICH[0], *plain, b"".join(plain), *RICH[1:]]
    out, tokens, relay = relay_all(reads)
    assert out == b"".join(reads[:-2])
    assert relay.tokens == tokens == 10 + 5  # the plain ones, then RICH's own five
