"""Routing policies: pure choices among candidates."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from trio_gateway.router.policies import (
    POLICY_NAMES,
    CacheAware,
    LeastInflight,
    PowerOfTwo,
    RoundRobin,
    make_policy,
)


@dataclass
class Cand:
    name: str
    inflight: int = 0
    weight: int = 1


def cands(*loads: int) -> list[Cand]:
    return [Cand(f"b{i}", load) for i, load in enumerate(loads)]


# --- round robin ---------------------------------------------------------------------------


def test_round_robin_cycles_in_order() -> None:
    policy = RoundRobin()
    backends = cands(0, 0, 0)
    picks = [policy.choose(backends).name for _ in range(7)]
    assert picks == ["b0", "b1", "b2", "b0", "b1", "b2", "b0"]


def test_round_robin_ignores_load() -> None:
    policy = RoundRobin()
    backends = cands(100, 0)
    assert [policy.choose(backends).name for _ in range(4)] == ["b0", "b1", "b0", "b1"]


def test_round_robin_single_candidate() -> None:
    policy = RoundRobin()
    only = Cand("only")
    assert all(policy.choose([only]) is only for _ in range(5))


def test_round_robin_keeps_cycling_as_candidates_change() -> None:
    policy = RoundRobin()
    a, b, c, d = Cand("a"), Cand("b"), Cand("c"), Cand("d")
    assert policy.choose([a, b, c]) is a  # turn 0
    assert policy.choose([a, b, c]) is b  # turn 1
    # One drops out: the turn counter keeps going, modulo the new length.
    assert policy.choose([a, c]) is a  # turn 2 % 2 == 0
    assert policy.choose([a, c]) is c  # turn 3 % 2 == 1
    # One is added: still a valid candidate every time, and every one gets a turn.
    picks = [policy.choose([a, b, c, d]) for _ in range(4)]
    assert picks == [a, b, c, d]  # turns 4..7 % 4
    assert policy.choose([d]) is d


def test_round_robin_always_returns_a_candidate_under_churn() -> None:
    policy = RoundRobin()
    pool = cands(*range(6))
    rng = random.Random(7)
    for _ in range(500):
        subset = rng.sample(pool, rng.randint(1, len(pool)))
        assert policy.choose(subset) in subset


def test_round_robin_instances_are_independent() -> None:
    first, second = RoundRobin(), RoundRobin()
    backends = cands(0, 0)
    assert first.choose(backends).name == "b0"
    assert first.choose(backends).name == "b1"
    assert second.choose(backends).name == "b0"


def test_round_robin_is_fair_over_full_cycles() -> None:
    policy = RoundRobin()
    backends = cands(0, 0, 0, 0)
    counts = Counter(policy.choose(backends).name for _ in range(400))
    assert counts == {"b0": 100, "b1": 100, "b2": 100, "b3": 100}


# --- least in-flight -----------------------------------------------------------------------


def test_least_inflight_picks_the_minimum() -> None:
    backends = cands(5, 2, 9, 3)
    assert LeastInflight().choose(backends) is backends[1]


def test_least_inflight_first_on_ties() -> None:
    backends = cands(4, 1, 7, 1, 1)
    assert LeastInflight().choose(backends) is backends[1]
    assert LeastInflight().choose(list(reversed(backends))) is backends[4]


def test_least_inflight_follows_load_changes() -> None:
    policy = LeastInflight()
    backends = cands(0, 0)
    assert policy.choose(backends) is backends[0]
    backends[0].inflight = 3
    assert policy.choose(backends) is backends[1]
    backends[1].inflight = 5
    assert policy.choose(backends) is backends[0]


def test_least_inflight_single_candidate() -> None:
    only = Cand("only", 99)
    assert LeastInflight().choose([only]) is only


def test_least_inflight_accepts_tuple() -> None:
    backends = tuple(cands(3, 0))
    assert LeastInflight().choose(backends) is backends[1]


# --- power of two --------------------------------------------------------------------------


def test_power_of_two_single_candidate_without_drawing() -> None:
    rng = random.Random(1)
    state = rng.getstate()
    only = Cand("only", 50)
    assert PowerOfTwo(rng).choose([only]) is only
    assert rng.getstate() == state  # no randomness spent on a foregone choice


def test_power_of_two_of_two_picks_the_less_loaded() -> None:
    policy = PowerOfTwo(random.Random(3))
    busy, idle = Cand("busy", 5), Cand("idle", 1)
    for _ in range(50):
        assert policy.choose([busy, idle]) is idle
        assert policy.choose([idle, busy]) is idle


def test_power_of_two_picks_less_loaded_of_the_sampled_pair() -> None:
    backends = cands(4, 1, 9, 2, 7)
    seed = 12345
    policy = PowerOfTwo(random.Random(seed))
    replay = random.Random(seed)
    for _ in range(200):
        first, second = replay.sample(list(backends), 2)
        expected = first if first.inflight <= second.inflight else second
        assert policy.choose(backends) is expected


def test_power_of_two_tie_goes_to_first_sampled() -> None:
    backends = cands(3, 3, 3)
    seed = 99
    policy = PowerOfTwo(random.Random(seed))
    replay = random.Random(seed)
    for _ in range(50):
        first, _second = replay.sample(list(backends), 2)
        assert policy.choose(backends) is first


def test_power_of_two_never_returns_a_non_candidate() -> None:
    policy = PowerOfTwo(random.Random(0))
    pool = cands(*range(8))
    rng = random.Random(1)
    for _ in range(1000):
        subset = rng.sample(pool, rng.randint(1, len(pool)))
        assert policy.choose(subset) in subset


def test_power_of_two_never_picks_the_most_loaded_of_several() -> None:
    policy = PowerOfTwo(random.Random(5))
    backends = cands(1, 2, 3, 100)
    assert all(policy.choose(backends) is not backends[3] for _ in range(500))


def test_power_of_two_same_seed_same_choices() -> None:
    backends = cands(2, 2, 1, 3, 0)
    first = PowerOfTwo(random.Random(42))
    second = PowerOfTwo(random.Random(42))
    assert [first.choose(backends).name for _ in range(100)] == [
        second.choose(backends).name for _ in range(100)
    ]


def test_power_of_two_prefers_the_idle_one() -> None:
    policy = PowerOfTwo(random.Random(2024))
    idle = Cand("idle", 0)
    busy = [Cand(f"busy{i}", 10 + i) for i in range(4)]
    candidates = [*busy[:2], idle, *busy[2:]]
    draws = 5000
    counts = Counter(policy.choose(candidates).name for _ in range(draws))
    # Uniform would be 1/5 = 20 %; sampled in a pair the idle one always wins: 2/5 = 40 %.
    assert counts["idle"] / draws == pytest.approx(0.4, abs=0.03)
    assert counts["idle"] > 1.8 * draws / len(candidates)
    # The busiest is never picked: it loses to whoever it is paired with.
    assert counts["busy3"] == 0
    assert sum(counts.values()) == draws


def test_power_of_two_spreads_over_equal_loads() -> None:
    policy = PowerOfTwo(random.Random(11))
    backends = cands(0, 0, 0, 0)
    counts = Counter(policy.choose(backends).name for _ in range(4000))
    assert set(counts) == {"b0", "b1", "b2", "b3"}
    assert all(700 < n < 1300 for n in counts.values())


def test_power_of_two_default_rng() -> None:
    policy = PowerOfTwo()
    backends = cands(0, 5)
    assert all(policy.choose(backends) is backends[0] for _ in range(20))


# --- make_policy ---------------------------------------------------------------------------


def test_policy_names() -> None:
    assert POLICY_NAMES == ("round_robin", "least_inflight", "power_of_two", "cache_aware")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("round_robin", RoundRobin),
        ("least_inflight", LeastInflight),
        ("power_of_two", PowerOfTwo),
        ("cache_aware", CacheAware),
    ],
)
def test_make_policy(name: str, kind: type) -> None:
    policy = make_policy(name)
    assert type(policy) is kind
    backends = cands(1, 0)
    assert policy.choose(backends) in backends


def test_make_policy_returns_fresh_instances() -> None:
    first, second = make_policy("round_robin"), make_policy("round_robin")
    assert first is not second
    backends = cands(0, 0)
    first.choose(backends)
    assert second.choose(backends) is backends[0]


@pytest.mark.parametrize("name", ["", "random", "Round_Robin", "least-inflight", "p2c"])
def test_make_policy_unknown_name(name: str) -> None:
    with pytest.raises(ValueError, match="unknown routing policy") as info:
        make_policy(name)
    message = str(info.value)
    assert repr(name) in message
    for known in POLICY_NAMES:
        assert known in message


def test_round_robin_follows_weights_smoothly() -> None:
    """nginx's smooth weighted round robin: 3:1 gives a a a b per cycle, b not last in a row
    of a's but spread (a b a a for weights 3, 1 from zero credit: a, a, b, a)."""
    a, b = Cand("a", weight=3), Cand("b", weight=1)
    policy = RoundRobin()
    policy.weighted = True  # the router sets it once some weight is not 1
    picks = [policy.choose([a, b]).name for _ in range(8)]
    assert picks.count("a") == 6 and picks.count("b") == 2
    assert picks[:4] == ["a", "a", "b", "a"]


def test_round_robin_forgets_a_removed_backends_credit() -> None:
    a, b = Cand("a", weight=2), Cand("b", weight=1)
    policy = RoundRobin()
    policy.weighted = True
    policy.choose([a, b])
    policy.forget("a")
    assert "a" not in policy._credit


def test_least_inflight_weighs_load_per_unit_of_weight() -> None:
    heavy, light = Cand("heavy", inflight=4, weight=4), Cand("light", inflight=2, weight=1)
    policy = LeastInflight()
    assert policy.choose([light, heavy]) is light  # weights ignored until the router says
    policy.weighted = True
    assert policy.choose([light, heavy]) is heavy  # 1 per unit against 2


def test_power_of_two_weighs_load_per_unit_of_weight() -> None:
    heavy, light = Cand("heavy", inflight=5, weight=4), Cand("light", inflight=2, weight=1)
    policy = PowerOfTwo(random.Random(0))
    policy.weighted = True
    assert all(policy.choose([light, heavy]) is heavy for _ in range(20))
    even = Cand("even", inflight=8, weight=4)  # 2 per unit, as light: ties go to the first
    picks = {policy.choose([light, even]).name for _ in range(40)}
    assert picks == {"light", "even"}
