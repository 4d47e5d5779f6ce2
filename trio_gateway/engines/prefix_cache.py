"""The mock engine's prefix cache: vLLM's block manager with automatic prefix caching, on text.

A real engine keeps the KV cache of the prompts it has seen in fixed-size blocks, and a
prompt that starts with cached blocks skips their prefill: that is the benefit cache-aware
routing chases, so the mock must have it for the routing to be measured without a GPU.

The mock counts four characters a token (`prompt_token_count`), so a block of `block_tokens`
tokens is `4 * block_tokens` characters of the prompt. As in vLLM:

- Block i's hash covers blocks 0..i (each hash chains its parent's), so a match is always a
  prefix of the prompt: two prompts that differ early share nothing after the difference.
- Only full blocks are cached; a prompt's trailing partial block is always recomputed.
- At least the last token is always recomputed (the engine needs its logits), so a prompt
  that is all cached blocks reports one block fewer.
- Eviction is LRU, and a request touches its blocks from last to first: its first blocks,
  the ones most prompts share, are evicted last. A request longer than the whole cache
  keeps its first `capacity_blocks` blocks.

Unlike vLLM, blocks of running requests are not pinned (the mock holds no KV memory), and
generated tokens are not cached: only prompts go in. Keys are Python's `hash`, salted per
process: they never leave it.

Memory: one int key per block; within `admit` a request's new blocks go in before the
oldest go out. Cost: the hashing of every block dominates; the rest runs in C loops. Both are
measured by `benchmarks/prefix_cache.py` (`benchmarks/results/prefix_cache.json`).
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict, deque
from itertools import repeat, takewhile

from trio_gateway.engines.mock_answer import prompt_token_count

CHARS_PER_TOKEN = 4  # `prompt_token_count`'s rule of thumb
_ROOT = 0  # the parent of block 0


@functools.cache
def _blocks_of(block_chars: int) -> re.Pattern[str]:
    """Splits a text into its full blocks in one C call (faster than slicing in a loop)."""
    return re.compile(f".{{{block_chars}}}", re.DOTALL)


def block_hashes(prompt: str, block_chars: int) -> list[int]:
    """The chained hash of each full block of `prompt`, in order: block i's covers 0..i."""
    hashes: list[int] = []
    append = hashes.append
    parent = _ROOT
    for block in _blocks_of(block_chars).findall(prompt):
        parent = hash((parent, block))
        append(parent)
    return hashes


class PrefixCache:
    """At most `capacity_blocks` blocks of `block_tokens` tokens; 0 blocks caches nothing."""

    def __init__(self, block_tokens: int = 16, capacity_blocks: int = 8192) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be at least 1, got {block_tokens}")
        if capacity_blocks < 0:
            raise ValueError(f"capacity_blocks must not be negative, got {capacity_blocks}")
        self.block_tokens = block_tokens
        self.capacity_blocks = capacity_blocks
        self.block_chars = CHARS_PER_TOKEN * block_tokens
        # Least recently used first; the values are unused (an OrderedDict is the O(1) LRU).
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        """Blocks held: never more than `capacity_blocks` between calls."""
        return len(self._blocks)

    def lookup(self, prompt: str) -> int:
        """The tokens of `prompt` a request would find cached now; changes nothing."""
        if not self.capacity_blocks:
            return 0
        hashes = block_hashes(prompt, self.block_chars)
        return self._cached_tokens(prompt, self._hits(hashes))

    def admit(self, prompt: str) -> int:
        """A request for `prompt` starts: the tokens it finds cached (a multiple of
        `block_tokens`, below the prompt's token count); then all its full blocks are
        cached and most recently used, its first block most of all."""
        if not self.capacity_blocks:
            return 0
        hashes = block_hashes(prompt, self.block_chars)
        hits = self._hits(hashes)
        blocks = self._blocks
        # The same state as touching last block to first one at a time, evicting as it
        # goes (an LRU holds the most recently used keys, whatever the path), in C loops:
        # append the new blocks last first, move the found ones after them, then evict
        # from the old end.
        new = hashes[hits:]
        held = len(blocks)
        blocks.update(zip(reversed(new), repeat(None)))
        touched = hashes if len(blocks) - held < len(new) else hashes[:hits]
        deque(map(blocks.move_to_end, reversed(touched)), maxlen=0)
        excess = len(blocks) - self.capacity_blocks
        if excess > 0:
            deque(map(blocks.popitem, repeat(False, excess)), maxlen=0)
        return self._cached_tokens(prompt, hits)

    def _hits(self, hashes: list[int]) -> int:
        """How many leading blocks are cached."""
        return len(list(takewhile(self._blocks.__contains__, hashes)))

    def _cached_tokens(self, prompt: str, hits: int) -> int:
        # The last token is always recomputed: whole blocks strictly before it.
        last = (prompt_token_count(prompt) - 1) // self.block_tokens
        return min(hits, last) * self.block_tokens
