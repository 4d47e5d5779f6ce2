"""An alias's served name put back in the answer's bytes: the exact `"model":"..."` member,
in both paths of the relay (the byte-scan fast path and the decoder's). Pure: no socket."""

from __future__ import annotations

from typing import Any

import orjson

from trio_gateway.engines.upstream.model_alias import AnswerRename
from trio_gateway.engines.upstream.relay import StreamRelay

UPSTREAM = "meta-llama/Llama-3.1-8B-Instruct"


def event(model: str, content: str | None = "hi", finish: str | None = None) -> bytes:
    delta: dict[str, Any] = {} if content is None else {"content": content}
    document = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(document) + b"\n\n"


def test_the_model_member_is_renamed_in_compact_and_spaced_json() -> None:
    rename = AnswerRename(UPSTREAM, "llama")
    compact = b'{"id":"x","model":"' + UPSTREAM.encode() + b'","choices":[]}'
    spaced = b'{"id": "x", "model": "' + UPSTREAM.encode() + b'", "choices": []}'
    assert rename(compact) == b'{"id":"x","model":"llama","choices":[]}'
    assert rename(spaced) == b'{"id": "x", "model": "llama", "choices": []}'


def test_only_the_member_is_renamed_not_text_that_says_the_name() -> None:
    rename = AnswerRename("m", "served")
    data = b'{"model":"m","choices":[{"delta":{"content":"the model m said \\"model\\""}}]}'
    assert rename(data) == data.replace(b'"model":"m"', b'"model":"served"', 1)
    # A prefix of another name is not that name.
    assert rename(b'{"model":"m-large"}') == b'{"model":"m-large"}'


def test_nothing_to_rename_hands_back_the_same_bytes() -> None:
    data = event("other")
    assert AnswerRename(UPSTREAM, "llama")(data) is data


def test_names_are_matched_as_json_writes_them() -> None:
    rename = AnswerRename('we"ird/é', "plain")
    written = b'{"model":' + orjson.dumps('we"ird/é') + b"}"
    assert rename(written) == b'{"model":"plain"}'


def test_the_relay_renames_plain_deltas_and_parsed_events() -> None:
    relay = StreamRelay("up", forward_usage=False, rename=AnswerRename(UPSTREAM, "llama"))
    role = event(UPSTREAM, content=None).replace(b'"delta":{}', b'"delta":{"role":"assistant"}')
    first = relay.feed(role)  # parsed: it has a role
    plain = relay.feed(event(UPSTREAM) + event(UPSTREAM))  # the fast path
    split = event(UPSTREAM, finish="stop")
    head = relay.feed(split[:20])  # an event cut between reads: the decoder's path
    tail = relay.feed(split[20:])
    assert first is not None and plain is not None and head is None and tail is not None
    assert plain.tokens == 2
    for chunk in (first, plain, tail):
        assert UPSTREAM.encode() not in chunk.payload
        assert chunk.payload.count(b'"model":"llama"') == chunk.payload.count(b"data: ")
    assert relay.finish_reason == "stop"


def test_without_an_alias_the_relay_passes_bytes_untouched() -> None:
    relay = StreamRelay("up", forward_usage=False)
    data = event(UPSTREAM) + event(UPSTREAM)
    chunk = relay.feed(data)
    assert chunk is not None and chunk.payload == data
