"""A served name put back in an upstream's answer, on the relay's bytes (no I/O, no parse).

A client that asked for an alias (`llama`) must see `llama` in the answer, not the name the
upstream serves it under (`meta-llama/Llama-3.1-8B-Instruct`). The relay passes events on
as bytes without decoding them (relay.py), so the name is replaced there as bytes: the exact
`"model":"<upstream name>"` member, as vLLM, SGLang and llama.cpp write it (compact JSON),
and `"model": "<upstream name>"` with the space some servers put after the colon. A JSON
string cannot hold an unescaped quote, so the member cannot be forged by token text: text
that merely says the name (without the key before it) is left alone. Each form is one C
scan of the bytes (`bytes.replace`, which hands back the same object when nothing matches),
measured per event in the README.
"""

from __future__ import annotations

import orjson


class AnswerRename:
    """Replace one request's upstream model name with the name the client asked for."""

    __slots__ = ("_pairs",)

    def __init__(self, upstream: str, served: str) -> None:
        old, new = orjson.dumps(upstream), orjson.dumps(served)
        self._pairs = (
            (b'"model":' + old, b'"model":' + new),
            (b'"model": ' + old, b'"model": ' + new),
        )

    def __call__(self, data: bytes) -> bytes:
        for old, new in self._pairs:
            data = data.replace(old, new)
        return data
