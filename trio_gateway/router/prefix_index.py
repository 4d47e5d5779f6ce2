"""Which prompt prefixes each backend was sent: the memory of the `cache_aware` policy.

An engine keeps the KV cache of the prompts it served, so the backend that was sent a
prefix most likely still holds it. This index is the gateway's approximate picture of that,
built only from its own routing decisions (and, through `record`, from another replica's):
it never asks an engine, so it is wrong when the engine evicted on its own, and that is
accepted, as in SGLang's approximate tree.

Blocks of characters, not a character radix tree: a prompt is cut into full blocks of
`block_chars` characters and each block gets a 64-bit hash that covers it and every block
before it (`block_hashes`). Matching a 32k-character prompt is then a handful of dict
lookups instead of a walk down a tree in Python, and the hashes are small, fixed-size
values that another process can compute the same way (BLAKE2b, not Python's `hash`, which
is salted per process), so replicas can tell each other what they routed.

Per backend an LRU of block hashes, each with the time it was last recorded, bounded by
`capacity_blocks_per_backend` and expiring after `ttl_s`: memory is at most backends x capacity
entries (their size is in the README, *Routing*). A record touches its blocks from the last to
the first, so a prefix's first blocks, the ones most prompts share, are evicted last; together
with the chaining this keeps each backend's blocks prefix-closed (a block is held only if every
block before it is), which is what lets `match` find a backend's matched length by bisection.
Pure code: callers pass `now` (one clock for every call, never going backwards; an earlier
`now` counts as the latest seen).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import OrderedDict, deque
from collections.abc import Sequence
from itertools import repeat
from typing import Literal

_BYTE_ORDER: Literal["big"] = "big"


@functools.cache
def _blocks_of(block_chars: int) -> re.Pattern[str]:
    """Splits a text into its full blocks in one C call (faster than slicing in a loop)."""
    return re.compile(f".{{{block_chars}}}", re.DOTALL)


def block_hashes(text: str, block_chars: int, *, seed: str = "") -> list[int]:
    """The hash of each full block of `text`, in order; a trailing partial block has none.

    Block i's hash is the 8-byte BLAKE2b digest, as an unsigned big-endian int, of the UTF-8
    of `seed` (length-prefixed) followed by blocks 0..i: the same in every process and
    version of Python. The seed keeps apart what must not match (the same text for two
    models on one backend shares no KV cache)."""
    if block_chars < 1:
        raise ValueError(f"block_chars must be at least 1, got {block_chars}")
    hasher = hashlib.blake2b(digest_size=8)
    if seed:
        encoded = seed.encode("utf-8", "surrogatepass")
        hasher.update(len(encoded).to_bytes(4, _BYTE_ORDER) + encoded)
    hashes: list[int] = []
    append = hashes.append
    from_bytes = int.from_bytes
    for block in _blocks_of(block_chars).findall(text):
        # surrogatepass: a JSON body may carry a lone surrogate, which plain UTF-8 refuses.
        hasher.update(block.encode("utf-8", "surrogatepass"))
        append(from_bytes(hasher.copy().digest(), _BYTE_ORDER))
    return hashes


class PrefixIndex:
    """Per backend, the block hashes it was sent lately; see the module docstring."""

    def __init__(self, capacity_blocks_per_backend: int, ttl_s: float) -> None:
        if capacity_blocks_per_backend < 1:
            raise ValueError(
                f"capacity_blocks_per_backend must be at least 1, got {capacity_blocks_per_backend}"
            )
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be above 0, got {ttl_s}")
        self.capacity = capacity_blocks_per_backend
        self.ttl_s = ttl_s
        # Per backend: hash -> when last recorded, least recently recorded first.
        self._held: dict[str, OrderedDict[int, float]] = {}
        self._latest = float("-inf")
        # No entry expires before this: lets `expire` return at once on most calls.
        self._next_expiry = float("inf")

    def match(self, hashes: Sequence[int]) -> dict[str, int]:
        """Backend name -> how many leading blocks of `hashes` it holds (backends holding
        none are left out)."""
        matched: dict[str, int] = {}
        if not hashes:
            return matched
        for backend, held in self._held.items():
            length = _leading(held, hashes)
            if length:
                matched[backend] = length
        return matched

    def record(self, backend: str, hashes: Sequence[int], now: float) -> None:
        """`backend` was sent a prompt with these block hashes (this replica's choice, or
        another replica's): insert or refresh them, then evict its oldest past capacity. A
        prompt longer than the capacity keeps its first blocks."""
        if not hashes:
            return
        now = max(now, self._latest)
        self._latest = now
        held = self._held.get(backend)
        if held is None:
            held = self._held[backend] = OrderedDict()
        touched = hashes[: self.capacity]
        # Set the times (new hashes go in at the end), then order last block to first: the
        # first block ends most recently used. Both in C loops.
        held.update(zip(reversed(touched), repeat(now)))
        deque(map(held.move_to_end, reversed(touched)), maxlen=0)
        excess = len(held) - self.capacity
        if excess > 0:
            deque(map(held.popitem, repeat(False, excess)), maxlen=0)
        self._next_expiry = min(self._next_expiry, now + self.ttl_s)

    def forget(self, backend: str) -> None:
        """The backend is gone (or its cache is): nothing of it is matched any more."""
        self._held.pop(backend, None)

    def size(self, backend: str) -> int:
        """Blocks held for `backend`: what `cache_aware` reads as how full its cache is."""
        held = self._held.get(backend)
        return 0 if held is None else len(held)

    def expire(self, now: float) -> None:
        """Drop every entry last recorded more than `ttl_s` before `now`."""
        if now <= self._next_expiry:
            return
        cutoff = now - self.ttl_s
        next_expiry = float("inf")
        for backend, held in list(self._held.items()):
            while held:
                oldest_hash, oldest = next(iter(held.items()))
                if oldest >= cutoff:
                    next_expiry = min(next_expiry, oldest + self.ttl_s)
                    break
                del held[oldest_hash]
            if not held:
                del self._held[backend]
        self._next_expiry = next_expiry


def _leading(held: OrderedDict[int, float], hashes: Sequence[int]) -> int:
    """How many leading `hashes` are in `held`, by bisection: `held` is prefix-closed."""
    count = min(len(hashes), len(held))
    if count == 0 or hashes[0] not in held:
        return 0
    if hashes[count - 1] in held:
        return count
    low, high = 1, count - 1  # hashes[low - 1] is held, hashes[high] is not
    while low < high:
        middle = (low + high) // 2
        if hashes[middle] in held:
            low = middle + 1
        else:
            high = middle
    return low
