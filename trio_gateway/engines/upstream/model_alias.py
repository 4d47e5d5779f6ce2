"""A served name put back in an upstream's answer, on the relay's bytes (no I/O, no parse).

A client that asked for an alias (`llama`) must see `llama` in the answer, not the name the
upstream serves it under (`meta-llama/Llama-3.1-8B-Instruct`). The relay passes events on
as bytes without decoding them (relay.py), so the name is replaced there as bytes: the exact
`"model":"<upstream name>"` member, as vLLM, SGLang and llama.cpp write it (compact JSON),
and `"model": "<upstream name>"` with the space some servers put after the colon. A JSON
string cannot hold an unescaped quote, so the member cannot be forged by token text: text
that merely says the name (without the key before it) is left alone. The compact form is
one C scan and copy of the bytes (`bytes.replace`, which hands back the same object when
nothing matches); only bytes without it are scanned for the spaced form. The cost per
event is measured in the README (benchmarks/model_alias.py).
"""

from __future__ import annotations

import orjson


class AnswerRename:
    """Replace one request's upstream model name with the name the client asked for."""

    __slots__ = ("_compact", "_compact_new", "_spaced", "_spaced_new")

    def __init__(self, upstream: str, served: str) -> None:
        old, new = orjson.dumps(upstream), orjson.dumps(served)
        self._compact, self._compact_new = b'"model":' + old, b'"model":' + new
        self._spaced, self._spaced_new = b'"model": ' + old, b'"model": ' + new

    def __call__(self, data: bytes) -> bytes:
        renamed = data.replace(self._compact, self._compact_new)
        if renamed is not data:  # a server writes one form: the other need not be looked for
            return renamed
        return data.replace(self._spaced, self._spaced_new)
