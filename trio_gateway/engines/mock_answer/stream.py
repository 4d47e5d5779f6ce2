"""One choice's step as an SSE event, in vLLM's shape (`ChatCompletionStreamResponse` or a
completions chunk, dumped with exclude_unset): one choice per event, with its `index`.

Each event is the choice's `head` (built once per request: the answer's id, object,
created, model and the choice's index) then the delta, the logprobs and the finish: no
dict is built or dumped for the event as a whole.
"""

from __future__ import annotations

import orjson

from trio_gateway.engines.mock_answer import tools
from trio_gateway.engines.mock_answer.logprobs import event_logprobs
from trio_gateway.engines.mock_answer.plan import (
    CONTENT,
    REASONING,
    TOOL_ARGS,
    TOOL_HEAD,
    Choice,
    Piece,
)

# A chat stream opens with a role event per choice.
ROLE = b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
# The end of an event that does not finish its choice.
OPEN = b',"finish_reason":null}]}\n\n'


def choice_event(chat: bool, c: Choice, piece: Piece) -> bytes:
    kind = piece.kind
    if not chat:
        delta = b'"text":' + orjson.dumps(piece.text)
    elif kind == CONTENT:
        delta = b'"delta":{"content":' + orjson.dumps(piece.text) + b"}"
    elif kind == REASONING:
        delta = b'"delta":{"reasoning_content":' + orjson.dumps(piece.text) + b"}"
    elif kind == TOOL_HEAD:
        delta = tools.head_delta(c.calls[piece.call])
    elif kind == TOOL_ARGS:
        delta = tools.arguments_delta(piece.call, piece.text)
    else:
        delta = b'"delta":{}'
    if piece.finish is None:
        tail = OPEN
    else:
        tail = (
            b',"finish_reason":'
            + orjson.dumps(piece.finish)
            + b',"stop_reason":'
            + orjson.dumps(piece.stop_reason)
            + b"}]}\n\n"
        )
    return c.head + delta + b',"logprobs":' + event_logprobs(chat, piece.logprobs) + tail
