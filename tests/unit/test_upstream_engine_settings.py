"""An `OpenAIUpstream` as built, before it runs: an engine of unknown capacity, unavailable
until its first probe, named without credentials."""

from __future__ import annotations

import pytest

from trio_gateway.engines.protocol import Engine
from trio_gateway.engines.upstream.engine import OpenAIUpstream


def test_it_is_an_engine() -> None:
    engine: Engine = OpenAIUpstream("http://127.0.0.1:1/v1")
    assert engine.capacity == 256  # bounded: vLLM's --max-num-seqs, not its unbounded queue
    assert engine.available is False


def test_names() -> None:
    assert OpenAIUpstream("http://127.0.0.1:8001/v1/").name == "http://127.0.0.1:8001/v1"
    assert OpenAIUpstream("http://u:p@host:8001/v1").name == "http://host:8001/v1"
    assert OpenAIUpstream("http://host/v1", name="vllm-a").name == "vllm-a"
    engine = OpenAIUpstream("http://host/v1", api_key="sk-hidden")
    assert "sk-hidden" not in repr(engine)
    with pytest.raises(ValueError):
        OpenAIUpstream("ws://host/v1")
