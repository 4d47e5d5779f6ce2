"""The mock's prefix cache as pure code: prefix-only matches, block boundaries, the last token
always recomputed, LRU eviction at capacity (tail blocks first), and the C-loop bookkeeping
checked against a plain one-block-at-a-time LRU."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

from trio_gateway.engines.mock_answer import prompt_token_count
from trio_gateway.engines.prefix_cache import PrefixCache, block_hashes

BLOCK = 64  # characters in a block of 16 tokens


def text(*letters: str) -> str:
    """One full block per letter (each block is that letter repeated)."""
    return "".join(letter * BLOCK for letter in letters)


def test_a_block_is_four_characters_a_token() -> None:
    assert PrefixCache(16).block_chars == 64
    assert PrefixCache(1).block_chars == 4


def test_only_full_blocks_are_hashed_and_each_covers_its_prefix() -> None:
    assert block_hashes("", BLOCK) == []
    assert block_hashes("a" * (BLOCK - 1), BLOCK) == []
    assert len(block_hashes(text("a", "b") + "c" * (BLOCK - 1), BLOCK)) == 2
    ab, ba = block_hashes(text("a", "b"), BLOCK), block_hashes(text("b", "a"), BLOCK)
    assert ab == block_hashes(text("a", "b", "c"), BLOCK)[:2]  # an extension shares them
    assert ab[1] != block_hashes(text("c", "b"), BLOCK)[1]  # same text, other parent
    assert set(ab).isdisjoint(ba)


def test_the_first_request_finds_nothing_the_second_its_prefix() -> None:
    cache = PrefixCache()
    prompt = text("s", "s", "s") + "user: hi"
    assert cache.admit(prompt) == 0
    assert len(cache) == 3
    assert cache.lookup(prompt) == 48
    assert cache.admit(prompt) == 48
    assert len(cache) == 3  # touched, not added again


def test_a_match_is_always_a_prefix() -> None:
    cache = PrefixCache()
    cache.admit(text("a", "b", "c") + "?")
    assert cache.lookup(text("a", "b", "x") + "?") == 32
    assert cache.lookup(text("x", "b", "c") + "?") == 0  # blocks 1 and 2 match, not block 0
    assert cache.lookup(text("a", "x", "c") + "?") == 16


def test_never_the_whole_prompt() -> None:
    cache = PrefixCache()
    exact = text("a", "b")  # 32 tokens, every one in a full block
    cache.admit(exact)
    assert cache.admit(exact) == 16  # the last block holds the last token: recomputed
    assert cache.lookup(exact + "z") == 32  # one more token: both blocks count
    one_block = text("q")
    cache.admit(one_block)
    assert cache.admit(one_block) == 0
    tiny = PrefixCache(1)  # blocks of one token (4 characters)
    tiny.admit("abcdefgh")
    assert tiny.lookup("abcdefgh") == 1
    assert tiny.lookup("abcdefg") == 1  # 2 tokens, the second partial: one block counts
    assert tiny.lookup("abcd") == 0


@pytest.mark.parametrize("extra", [0, 1, 3, 4, 63])
def test_cached_tokens_are_whole_blocks_below_the_prompt_s_count(extra: int) -> None:
    cache = PrefixCache()
    prompt = text("a", "b", "c") + "x" * extra
    cache.admit(prompt)
    cached = cache.lookup(prompt)
    assert cached % 16 == 0
    assert cached < prompt_token_count(prompt)
    assert cached == (32 if extra == 0 else 48)


def test_below_one_block_nothing_is_cached() -> None:
    cache = PrefixCache()
    assert cache.admit("a" * (BLOCK - 1)) == 0
    assert cache.admit("a" * (BLOCK - 1)) == 0
    assert len(cache) == 0
    assert cache.admit("") == 0


def test_lru_eviction_at_capacity() -> None:
    cache = PrefixCache(capacity_blocks=4)
    first, second, third = text("a", "a") + "?", text("b", "b") + "?", text("c", "c") + "?"
    cache.admit(first)
    cache.admit(second)
    assert len(cache) == 4
    cache.admit(first)  # now the most recently used
    cache.admit(third)  # evicts the least recently used: second
    assert len(cache) == 4
    assert cache.lookup(first) == 32
    assert cache.lookup(second) == 0
    assert cache.lookup(third) == 32


def test_tail_blocks_are_evicted_first() -> None:
    cache = PrefixCache(capacity_blocks=3)
    long = text("a", "b", "c") + "?"
    cache.admit(long)
    cache.admit(text("z") + "?")  # one block must go: long's last, not its first
    assert cache.lookup(long) == 32
    assert cache.lookup(text("z") + "?") == 16


def test_a_prompt_longer_than_the_cache_keeps_its_first_blocks() -> None:
    cache = PrefixCache(capacity_blocks=2)
    prompt = text("a", "b", "c", "d", "e") + "?"
    assert cache.admit(prompt) == 0
    assert len(cache) == 2
    assert cache.admit(prompt) == 32


def test_blocks_found_after_a_missing_one_are_reordered_too() -> None:
    # Not reachable through admit alone (a block's parent is always used more recently
    # than the block), so the cache is edited by hand: block 0 goes, blocks 1 and 2 stay.
    cache = PrefixCache(capacity_blocks=3)
    prompt = text("a", "b", "c") + "?"
    cache.admit(prompt)
    del cache._blocks[block_hashes(prompt, BLOCK)[0]]
    cache.admit(text("z") + "?")  # the most recently used now, ahead of b and c
    assert cache.admit(prompt) == 0  # block 0 is missing, so nothing counts
    assert len(cache) == 3  # z was evicted, not b or c: they were touched again
    assert cache.lookup(prompt) == 48
    assert cache.lookup(text("z") + "?") == 0


def test_zero_capacity_caches_nothing() -> None:
    cache = PrefixCache(capacity_blocks=0)
    prompt = text("a", "b") + "?"
    assert cache.admit(prompt) == 0
    assert cache.admit(prompt) == 0
    assert cache.lookup(prompt) == 0
    assert len(cache) == 0


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="block_tokens"):
        PrefixCache(0)
    with pytest.raises(ValueError, match="capacity_blocks"):
        PrefixCache(16, -1)


class ReferenceLRU:
    """The obvious cache: exact prefixes as keys, touched one block at a time, last first."""

    def __init__(self, block_tokens: int, capacity: int) -> None:
        self.block_tokens = block_tokens
        self.chars = 4 * block_tokens
        self.capacity = capacity
        self.blocks: OrderedDict[str, None] = OrderedDict()

    def admit(self, prompt: str) -> int:
        count = len(prompt) // self.chars
        prefixes = [prompt[: (i + 1) * self.chars] for i in range(count)]
        hits = 0
        for prefix in prefixes:
            if prefix not in self.blocks:
                break
            hits += 1
        for prefix in reversed(prefixes):
            if prefix in self.blocks:
                self.blocks.move_to_end(prefix)
            else:
                if len(self.blocks) >= self.capacity:
                    self.blocks.popitem(last=False)
                self.blocks[prefix] = None
        last = (prompt_token_count(prompt) - 1) // self.block_tokens
        return min(hits, last) * self.block_tokens


@pytest.mark.parametrize("seed", range(5))
def test_the_same_answers_as_a_plain_lru(seed: int) -> None:
    rng = random.Random(seed)
    capacity = rng.choice([1, 3, 8, 20])
    cache, reference = PrefixCache(2, capacity), ReferenceLRU(2, capacity)
    # Few distinct blocks and shared heads, so prompts overlap, diverge and get evicted.
    heads = ["".join(rng.choice("ab") for _ in range(8 * rng.randint(1, 4))) for _ in range(4)]
    for _ in range(300):
        prompt = rng.choice(heads) + "".join(rng.choice("ab") for _ in range(rng.randint(0, 40)))
        assert cache.admit(prompt) == reference.admit(prompt)
        assert len(cache) == len(reference.blocks) <= capacity
