"""The prefix index: stable block hashes, prefix matching, LRU and TTL bounds (pure)."""

from __future__ import annotations

import hashlib
import random

import pytest

from trio_gateway.router.prefix_index import PrefixIndex, block_hashes


def text(blocks: int, block_chars: int = 4, tag: str = "") -> str:
    """`blocks` full blocks, distinct per `tag` from the first block on."""
    return "".join(
        hashlib.sha256(f"{tag}/{i}".encode()).hexdigest()[:block_chars] for i in range(blocks)
    )


# --- block_hashes ----------------------------------------------------------------------------


def test_block_hashes_are_fixed_values() -> None:
    # Pinned: replicas (and future versions) must hash the same text the same way.
    assert block_hashes("a" * 512, 256) == [8696520136974049931, 6316316909524131681]
    assert block_hashes("a" * 512, 256, seed="mock") == [
        3311986030630705178,
        4511226464806136143,
    ]


def test_block_hashes_spec() -> None:
    """Block i's hash: 8-byte BLAKE2b of (length-prefixed seed +) blocks 0..i, big-endian."""
    prompt = "héllo wörld ☃ " * 10
    seed = b"model-x"
    expected = [
        int.from_bytes(
            hashlib.blake2b(
                len(seed).to_bytes(4, "big") + seed + prompt[: (i + 1) * 7].encode(),
                digest_size=8,
            ).digest(),
            "big",
        )
        for i in range(len(prompt) // 7)
    ]
    assert block_hashes(prompt, 7, seed="model-x") == expected


def test_only_full_blocks_are_hashed() -> None:
    assert block_hashes("", 4) == []
    assert block_hashes("abc", 4) == []
    assert len(block_hashes("abcd", 4)) == 1
    assert len(block_hashes("abcdefg", 4)) == 1
    assert len(block_hashes("x" * 1000, 256)) == 3


def test_a_hash_covers_its_block_and_every_block_before() -> None:
    base = block_hashes("aaaabbbbcccc", 4)
    assert block_hashes("aaaabbbbcccc++", 4) == base  # a partial tail changes nothing
    assert block_hashes("aaaabbbbdddd", 4)[:2] == base[:2]
    changed_first = block_hashes("zaaabbbbcccc", 4)
    assert all(a != b for a, b in zip(changed_first, base, strict=True))
    assert len(set(block_hashes("abcd" * 8, 4))) == 8  # equal blocks, distinct prefixes


def test_hashes_fit_in_64_unsigned_bits() -> None:
    hashes = block_hashes(text(200, 8), 8)
    assert all(0 <= h < 2**64 for h in hashes)


def test_the_seed_separates_models() -> None:
    prompt = text(4)
    assert block_hashes(prompt, 4) != block_hashes(prompt, 4, seed="a")
    assert block_hashes(prompt, 4, seed="a") != block_hashes(prompt, 4, seed="b")
    # Length-prefixed: the seed cannot be confused with the prompt's first characters.
    assert block_hashes("bcdefghi", 4, seed="a") != block_hashes("abcdefghi", 4, seed="")[1:]


def test_any_text_hashes() -> None:
    # A lone surrogate (JSON allows "\ud800") and newlines inside a block.
    assert len(block_hashes("\ud800abc\n\nxy", 4)) == 2


def test_block_chars_must_be_positive() -> None:
    with pytest.raises(ValueError, match="block_chars"):
        block_hashes("abc", 0)


# --- matching --------------------------------------------------------------------------------


def test_match_counts_leading_blocks_per_backend() -> None:
    index = PrefixIndex(100, 60.0)
    a = block_hashes(text(10), 4)
    index.record("w1", a, now=0.0)
    index.record("w2", a[:3], now=0.0)
    assert index.match(a) == {"w1": 10, "w2": 3}
    assert index.match(a[:5]) == {"w1": 5, "w2": 3}
    other = block_hashes(text(10, tag="z"), 4)
    assert index.match(other) == {}
    assert index.match([]) == {}


def test_match_stops_at_the_first_difference() -> None:
    index = PrefixIndex(100, 60.0)
    index.record("w1", block_hashes("aaaabbbbcccc", 4), now=0.0)
    assert index.match(block_hashes("aaaabbbbzzzzcccc", 4)) == {"w1": 2}
    assert index.match(block_hashes("zaaabbbbcccc", 4)) == {}


def test_match_agrees_with_a_linear_scan_under_random_traffic() -> None:
    """Bisection is only right if each backend's blocks stay prefix-closed: check it
    against the obvious count through records, evictions and expiries."""
    rng = random.Random(3)
    prefixes = [text(rng.randint(1, 40), tag=f"p{i}") for i in range(12)]
    index = PrefixIndex(64, 50.0)
    now = 0.0
    for _ in range(2000):
        now += rng.random()
        prompt = rng.choice(prefixes)[: rng.randint(0, 160)] + text(rng.randint(0, 5), tag="t")
        hashes = block_hashes(prompt, 4)
        index.expire(now)
        matched = index.match(hashes)
        for backend, held in index._held.items():
            linear = 0
            for h in hashes:
                if h not in held:
                    break
                linear += 1
            assert matched.get(backend, 0) == linear
        index.record(f"w{rng.randint(1, 4)}", hashes, now)


# --- bounds ----------------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_recorded_past_capacity() -> None:
    index = PrefixIndex(6, 60.0)
    a = block_hashes(text(3, tag="a"), 4)
    b = block_hashes(text(3, tag="b"), 4)
    c = block_hashes(text(3, tag="c"), 4)
    index.record("w1", a, now=0.0)
    index.record("w1", b, now=1.0)
    index.record("w1", a, now=2.0)  # a is fresh again: b is now the oldest
    index.record("w1", c, now=3.0)
    assert index.size("w1") == 6
    assert index.match(a) == {"w1": 3}
    assert index.match(b) == {}
    assert index.match(c) == {"w1": 3}


def test_eviction_takes_a_prefix_tail_first() -> None:
    index = PrefixIndex(5, 60.0)
    a = block_hashes(text(4, tag="a"), 4)
    b = block_hashes(text(4, tag="b"), 4)
    index.record("w1", a, now=0.0)
    index.record("w1", b, now=1.0)
    # Three of a's blocks had to go: its last three, so its first still matches.
    assert index.match(a) == {"w1": 1}
    assert index.match(b) == {"w1": 4}


def test_a_prompt_longer_than_the_capacity_keeps_its_first_blocks() -> None:
    index = PrefixIndex(4, 60.0)
    long = block_hashes(text(10), 4)
    index.record("w1", long, now=0.0)
    assert index.size("w1") == 4
    assert index.match(long) == {"w1": 4}


def test_capacity_is_per_backend() -> None:
    index = PrefixIndex(3, 60.0)
    for i in range(5):
        index.record(f"w{i}", block_hashes(text(8, tag=f"{i}"), 4), now=0.0)
    assert [index.size(f"w{i}") for i in range(5)] == [3] * 5
    assert sum(len(held) for held in index._held.values()) == 15


def test_memory_stays_bounded_under_many_prompts() -> None:
    index = PrefixIndex(50, 1e9)
    for i in range(300):
        index.record(f"w{i % 3}", block_hashes(text(20, tag=f"{i}"), 4), now=float(i))
    assert [index.size(f"w{i}") for i in range(3)] == [50, 50, 50]


def test_entries_expire_after_the_ttl() -> None:
    index = PrefixIndex(100, 10.0)
    a = block_hashes(text(3, tag="a"), 4)
    b = block_hashes(text(3, tag="b"), 4)
    index.record("w1", a, now=0.0)
    index.record("w1", b, now=5.0)
    index.expire(10.0)  # a is exactly ttl old: kept
    assert index.match(a) == {"w1": 3}
    index.expire(10.5)
    assert index.match(a) == {}
    assert index.match(b) == {"w1": 3}
    index.record("w1", b, now=12.0)  # touched: lives on
    index.expire(20.0)
    assert index.match(b) == {"w1": 3}
    index.expire(22.5)
    assert index.size("w1") == 0
    assert index.match(b) == {}


def test_a_shared_prefix_lives_as_long_as_its_latest_use() -> None:
    index = PrefixIndex(100, 10.0)
    first = block_hashes("aaaabbbb" + "cccc", 4)
    second = block_hashes("aaaabbbb" + "dddd", 4)
    index.record("w1", first, now=0.0)
    index.record("w1", second, now=8.0)
    index.expire(15.0)
    assert index.match(first) == {"w1": 2}  # the shared blocks were refreshed at 8


def test_a_time_going_backwards_counts_as_the_latest() -> None:
    index = PrefixIndex(100, 10.0)
    a = block_hashes(text(2, tag="a"), 4)
    b = block_hashes(text(2, tag="b"), 4)
    index.record("w1", a, now=100.0)
    index.record("w1", b, now=50.0)  # e.g. another replica's record, stamped late
    index.expire(105.0)
    assert index.match(b) == {"w1": 2}
    index.expire(110.5)
    assert index.size("w1") == 0


def test_forget_drops_a_backend() -> None:
    index = PrefixIndex(100, 60.0)
    a = block_hashes(text(3), 4)
    index.record("w1", a, now=0.0)
    index.record("w2", a, now=0.0)
    index.forget("w1")
    index.forget("nobody")
    assert index.match(a) == {"w2": 3}
    assert index.size("w1") == 0


def test_record_of_nothing_changes_nothing() -> None:
    index = PrefixIndex(100, 60.0)
    index.record("w1", [], now=0.0)
    assert index.size("w1") == 0
    assert index._held == {}


@pytest.mark.parametrize(("capacity", "ttl"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_bounds_must_be_positive(capacity: int, ttl: float) -> None:
    with pytest.raises(ValueError):
        PrefixIndex(capacity, ttl)
