"""The mock's text: deterministic words from a small vocabulary, and its prompt count.

Deterministic so that a test, a benchmark or a replica sharing a prefix cache can predict
every token: choice `i` of a prompt is seeded by the prompt's CRC-32 plus `i`.
"""

from __future__ import annotations

_VOCABULARY = (
    "The quick brown fox jumps over the lazy dog while a patient engine streams tokens "
    "through bounded channels to readers that may be slow or gone and every scope that "
    "starts work also ends it cleanly so nothing is left running after its request"
)
WORDS = tuple(_VOCABULARY.split())
WORD_COUNT = len(WORDS)
DISTINCT = tuple(dict.fromkeys(WORDS))  # the alternatives of top logprobs: no repeats


def prompt_token_count(prompt: str) -> int:
    """OpenAI's rule of thumb (four characters a token): deterministic, tokenizer-free."""
    return max(1, (len(prompt) + 3) // 4)


def token_text(seed: int, index: int) -> str:
    """The content token `index` of the choice seeded `seed` (choice i: the prompt's seed + i)."""
    word = WORDS[(seed + index * 7) % WORD_COUNT]
    return word if index == 0 else " " + word


def reasoning_text(seed: int, index: int) -> str:
    word = WORDS[(seed + 3 + index * 5) % WORD_COUNT]
    return word if index == 0 else " " + word
