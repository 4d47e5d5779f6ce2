"""The mock engine's answer, by concept: `answer` (`MockAnswer`: render a step, commit it),
`plan` (what each choice says at each step), the renderers `stream` (SSE events) and
`unary` (the merged body) with `logprobs` and `tools` for their parts, `options` (what a
request may ask, checked first) and `words` (the deterministic text).
"""

from trio_gateway.engines.mock_answer.answer import MockAnswer
from trio_gateway.engines.mock_answer.options import (
    MAX_COMPLETION_LOGPROBS,
    MAX_N,
    MAX_TOP_LOGPROBS,
)
from trio_gateway.engines.mock_answer.words import (
    WORDS,
    prompt_token_count,
    reasoning_text,
    token_text,
)

__all__ = [
    "MAX_COMPLETION_LOGPROBS",
    "MAX_N",
    "MAX_TOP_LOGPROBS",
    "WORDS",
    "MockAnswer",
    "prompt_token_count",
    "reasoning_text",
    "token_text",
]
