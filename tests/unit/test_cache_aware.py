"""The cache_aware policy's decisions on plain candidates (in the router and the gateway:
tests/trio/test_cache_aware_routing.py)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import pytest

from trio_gateway.router.policies import CacheAware, CacheAwareOptions, make_policy
from trio_gateway.router.prefix_index import block_hashes
from trio_gateway.router.route_key import RouteKey

BLOCK = 8
# SGLang's three steps alone (the load bound off): the bound has tests of its own.
OPTIONS = CacheAwareOptions(
    threshold=0.5, balance_abs=4, balance_rel=1.5, load_factor=0, block_chars=BLOCK, ttl_s=100.0
)
BOUNDED = dataclasses.replace(OPTIONS, balance_abs=64, load_factor=1.25)


@dataclass
class Cand:
    name: str
    inflight: int = 0
    weight: int = 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def policy(options: CacheAwareOptions = OPTIONS, clock: Clock | None = None) -> CacheAware:
    return CacheAware(options, clock=clock or Clock(), rng=random.Random(0))


def prompt(blocks: int, tag: str = "p") -> str:
    """`blocks` full blocks, distinct per `tag` from the first block on."""
    return "".join(f"{tag}{i}".ljust(BLOCK, ".")[:BLOCK] for i in range(blocks))


def key(text: str) -> RouteKey:
    return RouteKey(text, "m")


def teach(cache_aware: CacheAware, backend: str, text: str) -> None:
    cache_aware.index.record(backend, key(text).hashes(BLOCK), 0.0)


# --- decisions -------------------------------------------------------------------------------


def test_a_fresh_index_spreads_by_size_then_load() -> None:
    ca = policy()
    w = [Cand("w0", 1), Cand("w1", 0), Cand("w2", 0)]
    # Every index is empty: the less loaded of the smallest, first listed on a tie.
    assert ca.choose(w, key(prompt(4, "a"))) is w[1]
    # w1 now holds 4 blocks: a new prefix goes to another empty one.
    assert ca.choose(w, key(prompt(4, "b"))) is w[2]
    assert ca.choose(w, key(prompt(4, "c"))) is w[0]
    assert [ca.index.size(c.name) for c in w] == [4, 4, 4]


def test_the_same_prefix_goes_where_it_went() -> None:
    ca = policy()
    w = [Cand("w0"), Cand("w1"), Cand("w2")]
    system = prompt(10, "sys")
    first = ca.choose(w, key(system + "question one"))
    assert isinstance(first, Cand)
    first.inflight += 3  # busier, but within the balance thresholds
    for question in ("two", "three", "four"):
        assert ca.choose(w, key(system + f"question {question}")) is first


def test_the_longest_match_wins() -> None:
    ca = policy()
    w = [Cand("w0"), Cand("w1"), Cand("w2")]
    text = prompt(10)
    teach(ca, "w0", text[: 6 * BLOCK])
    teach(ca, "w1", text[: 8 * BLOCK])
    teach(ca, "w2", text[: 2 * BLOCK])
    assert ca.choose(w, key(text)) is w[1]


def test_equal_matches_go_to_the_less_loaded_then_the_first() -> None:
    ca = policy()
    text = prompt(10)
    teach(ca, "w0", text)
    teach(ca, "w1", text)
    w = [Cand("w0", 2), Cand("w1", 1), Cand("w2", 0)]
    assert ca.choose(w, key(text)) is w[1]
    w = [Cand("w0", 1), Cand("w1", 1), Cand("w2", 0)]
    assert ca.choose(w, key(text)) is w[0]


def test_a_match_at_or_below_the_threshold_goes_to_the_smallest_index() -> None:
    ca = policy()  # threshold 0.5
    text = prompt(10)
    teach(ca, "w0", text[: 5 * BLOCK])  # 5 of 10 blocks: not above 0.5
    teach(ca, "w1", prompt(2, "other"))
    teach(ca, "w2", prompt(3, "other2"))
    w = [Cand("w0"), Cand("w1"), Cand("w2")]
    assert ca.choose(w, key(text)) is w[1]  # the smallest index (2 blocks)
    ca = policy()
    teach(ca, "w0", text[: 6 * BLOCK])  # 6 of 10: above
    teach(ca, "w1", prompt(2, "other"))
    assert ca.choose(w, key(text)) is w[0]


def test_the_ratio_counts_full_blocks_only() -> None:
    ca = policy()
    text = prompt(2)
    teach(ca, "w0", text)
    teach(ca, "w1", prompt(1, "x"))
    w = [Cand("w0"), Cand("w1")]
    # 2 of 2 full blocks; the partial tail is not the engine's to cache either.
    assert ca.choose(w, key(text + "tail")) is w[0]


def test_smallest_index_ties_go_to_the_less_loaded() -> None:
    ca = policy()
    teach(ca, "w0", prompt(3, "x"))
    teach(ca, "w1", prompt(3, "y"))
    teach(ca, "w2", prompt(5, "z"))
    w = [Cand("w0", 2), Cand("w1", 1), Cand("w2", 0)]
    assert ca.choose(w, key(prompt(4, "new"))) is w[1]


def test_an_imbalanced_load_goes_to_the_least_loaded_whatever_it_holds() -> None:
    ca = policy()  # imbalanced: max - min > 4 and max > 1.5 x min
    text = prompt(10)
    teach(ca, "w0", text)
    w = [Cand("w0", 10), Cand("w1", 3), Cand("w2", 5)]
    assert ca.choose(w, key(text)) is w[1]
    # The choice is recorded: the prefix is now on w1 too.
    assert ca.index.match(key(text).hashes(BLOCK)) == {"w0": 10, "w1": 10}


@pytest.mark.parametrize(
    "loads",
    [
        (8, 4),  # gap 4: not above balance_abs
        (20, 14),  # gap 6, but 20 is not above 1.5 x 14 = 21
    ],
)
def test_both_balance_conditions_must_hold(loads: tuple[int, int]) -> None:
    ca = policy()
    text = prompt(10)
    teach(ca, "w0", text)
    w = [Cand("w0", loads[0]), Cand("w1", loads[1])]
    assert ca.choose(w, key(text)) is w[0]  # cache affinity holds


def test_an_idle_backend_counts_as_imbalance_past_the_gap() -> None:
    text = prompt(10)
    for load, expected in ((5, "w1"), (4, "w0")):
        ca = policy()
        teach(ca, "w0", text)
        assert ca.choose([Cand("w0", load), Cand("w1", 0)], key(text)).name == expected


# --- the load bound --------------------------------------------------------------------------


def test_a_hot_prefix_spills_from_its_owner_past_the_bound() -> None:
    ca = policy(BOUNDED)
    text = prompt(10)
    teach(ca, "w0", text)
    teach(ca, "w1", prompt(4, "x"))
    teach(ca, "w3", prompt(2, "y"))
    # 8 in flight, 9 with this one: at most ceil(1.25 x 9 / 4) = 3 each. w0 would hold 6,
    # and SGLang's own guard (a gap over 64) does not fire.
    w = [Cand("w0", 5), Cand("w1", 1), Cand("w2", 1), Cand("w3", 1)]
    chosen = ca.choose(w, key(text))
    assert chosen is w[2]  # step 3 among the rest: the smallest index
    # The prefix now has a second home; its later requests split between the two on load.
    assert ca.index.match(key(text).hashes(BLOCK)) == {"w0": 10, "w2": 10}
    w = [Cand("w0", 2), Cand("w1", 1), Cand("w2", 1), Cand("w3", 1)]
    assert ca.choose(w, key(text + "next")) is w[2]
    # Without the bound (SGLang's decision), the owner keeps every request.
    sglang = policy(dataclasses.replace(BOUNDED, load_factor=0))
    teach(sglang, "w0", text)
    assert sglang.choose([Cand("w0", 5), *w[1:]], key(text)).name == "w0"


def test_past_the_bound_the_next_best_match_wins() -> None:
    ca = policy(BOUNDED)
    text = prompt(10)
    teach(ca, "w0", text)
    teach(ca, "w1", text[: 7 * BLOCK])  # 7 of 10: above the threshold of 0.5
    w = [Cand("w0", 6), Cand("w1", 2), Cand("w2", 0), Cand("w3", 0)]
    assert ca.choose(w, key(text)) is w[1]  # not w2, the empty (smallest) index


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        ((4, 4, 4, 3), "w0"),  # 16 with this one: 5 each; w0 would hold 5
        ((5, 4, 4, 2), "w3"),  # w0 would hold 6
        ((0, 0, 0, 0), "w0"),  # an idle fleet: ceil(1.25 / 4) = 1, all fit
        ((1, 0, 0, 0), "w1"),  # 2 in flight: one each, w0 would hold 2
    ],
)
def test_the_bound_is_ceil_of_the_factor_times_the_mean_with_this_request(
    loads: tuple[int, ...], expected: str
) -> None:
    ca = policy(BOUNDED)
    text = prompt(10)
    teach(ca, "w0", text)
    w = [Cand(f"w{i}", load) for i, load in enumerate(loads)]
    assert ca.choose(w, key(text)).name == expected


def test_the_least_loaded_always_fits_the_bound() -> None:
    rng = random.Random(3)
    for _ in range(500):
        factor = rng.choice([1.0, 1.1, 1.25, 2.0])
        ca = policy(dataclasses.replace(BOUNDED, load_factor=factor))
        loads = [rng.randrange(0, 40) for _ in range(rng.randrange(2, 9))]
        w = [Cand(f"w{i}", load) for i, load in enumerate(loads)]
        fits = ca._within_bound(w, loads)
        assert min(w, key=lambda c: c.inflight) in fits
        assert all(c.inflight + 1 <= factor * (sum(loads) + 1) / len(w) + 1 for c in fits)


def test_the_load_factor_is_0_or_at_least_1() -> None:
    with pytest.raises(ValueError, match="load_factor"):
        policy(dataclasses.replace(BOUNDED, load_factor=0.5))


def test_only_candidates_count() -> None:
    ca = policy()
    text = prompt(10)
    teach(ca, "gone", text)  # e.g. excluded after a failure, or full
    teach(ca, "w1", text[: 6 * BLOCK])
    w = [Cand("w0"), Cand("w1")]
    assert ca.choose(w, key(text)) is w[1]


def test_a_prompt_shorter_than_a_block_is_power_of_two_and_not_recorded() -> None:
    ca = policy()
    recorded: list[tuple[str, list[int]]] = []
    ca.on_record = lambda backend, hashes: recorded.append((backend, hashes))
    busy, idle = Cand("busy", 9), Cand("idle", 0)
    for _ in range(20):
        assert ca.choose([busy, idle], key("short")) is idle
    assert ca.choose([busy], key("")) is busy
    assert recorded == [] and ca.index.size("idle") == 0


def test_the_choice_is_recorded_and_told() -> None:
    ca = policy()
    recorded: list[tuple[str, list[int]]] = []
    ca.on_record = lambda backend, hashes: recorded.append((backend, hashes))
    text = prompt(3)
    chosen = ca.choose([Cand("w0"), Cand("w1")], key(text))
    assert recorded == [(chosen.name, key(text).hashes(BLOCK))]
    assert ca.index.match(recorded[0][1]) == {chosen.name: 3}


def test_a_single_candidate_still_teaches_the_index() -> None:
    ca = policy()
    text = prompt(6)
    pinned = Cand("w1", 100)
    assert ca.choose([pinned], key(text)) is pinned  # a session's worker
    w = [Cand("w0"), Cand("w1", 1)]
    assert ca.choose(w, key(text + "next turn")) is w[1]


def test_records_from_another_replica_steer_like_our_own() -> None:
    ca = policy()
    text = prompt(8)
    ca.index.record("w1", block_hashes(text, BLOCK, seed="m"), 0.0)  # what a peer told
    assert ca.choose([Cand("w0"), Cand("w1")], key(text)).name == "w1"


def test_what_it_learned_expires_on_its_clock() -> None:
    clock = Clock()
    ca = policy(clock=clock)  # ttl 100 s
    text = prompt(8)
    hashes = key(text).hashes(BLOCK)
    assert ca.choose([Cand("w0")], key(text)).name == "w0"
    clock.now = 99.0
    assert ca.choose([Cand("w0"), Cand("w1")], key(text)).name == "w0"  # refreshed at 99
    clock.now = 199.0
    ca.choose([Cand("w1")], key(prompt(2, "x")))  # any choice expires what is due
    assert ca.index.match(hashes) == {"w0": 8}
    clock.now = 199.5
    ca.choose([Cand("w1")], key(prompt(2, "y")))
    assert ca.index.match(hashes) == {}
    assert ca.index.size("w0") == 0


def test_forget_drops_a_backend_and_the_hashes_are_per_model() -> None:
    ca = policy()
    text = prompt(8)
    ca.choose([Cand("w0")], key(text))
    assert ca.index.size("w0") == 8
    # The same text for another model shares nothing.
    assert ca.index.match(RouteKey(text, "other").hashes(BLOCK)) == {}
    ca.forget("w0")
    assert ca.index.size("w0") == 0


def test_a_route_key_hashes_once_per_block_size() -> None:
    route = key(prompt(4))
    first = route.hashes(BLOCK)
    assert route.hashes(BLOCK) is first
    assert len(route.hashes(4)) == 8
    assert route.hashes(BLOCK) == first


def test_a_continuing_session_key_matches_only_its_own_session() -> None:
    text = prompt(4)
    plain = key(text).hashes(BLOCK)
    ours = RouteKey(text, "m", "s1").hashes(BLOCK)
    assert len(ours) == len(plain) == 4
    assert set(ours).isdisjoint(plain)
    assert set(ours).isdisjoint(RouteKey(text, "m", "s2").hashes(BLOCK))
    assert RouteKey(text, "m", "s1").hashes(BLOCK) == ours
    assert "session='s1'" in repr(RouteKey(text, "m", "s1"))


def test_make_policy_passes_the_options() -> None:
    made = make_policy("cache_aware", OPTIONS)
    assert isinstance(made, CacheAware)
    assert made.options is OPTIONS
    assert made.index.capacity == OPTIONS.capacity_blocks
    defaults = make_policy("cache_aware")
    assert isinstance(defaults, CacheAware)
    assert defaults.options == CacheAwareOptions()


# --- in the router ---------------------------------------------------------------------------


# --- in the gateway --------------------------------------------------------------------------
