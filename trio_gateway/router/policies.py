"""Routing policies: pure choices among candidate backends (no I/O; a clock only when given).

Every policy gets the request's `RouteKey`; only `cache_aware` reads it. Each is told when a
backend leaves the router (`forget`), so what a policy learned of it does not outlive it.

Weights (a backend's `weight`, from its `[[backends]]` entry, 1 by default) are a share of
the traffic: `round_robin` turns through the candidates in proportion to them (smooth
weighted round robin, nginx's), `least_inflight` and `power_of_two` compare in-flight counts
per unit of weight (a backend of weight 2 with 4 in flight is as loaded as one of weight 1
with 2). `cache_aware` decides on its index and load figures as SGLang's does; only its
power-of-two fallback (prompts shorter than a block) weighs.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol

from trio_gateway.router.prefix_index import PrefixIndex
from trio_gateway.router.route_key import NO_KEY, RouteKey


class Candidate(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def inflight(self) -> int: ...

    @property
    def weight(self) -> int: ...


class Policy(Protocol):
    # Whether some backend's weight is not 1: set by the router when its table changes, so
    # that without weights a choice costs what it did before weights existed.
    weighted: bool

    def choose(self, candidates: Sequence[Candidate], key: RouteKey = NO_KEY) -> Candidate:
        """Pick one of a non-empty sequence."""
        ...

    def forget(self, backend: str) -> None:
        """The backend left the router."""
        ...


class _Stateless:
    """For policies that learn nothing about a backend."""

    weighted = False

    def forget(self, backend: str) -> None:
        pass


_inflight = attrgetter("inflight")


class RoundRobin:
    """In turn; with unequal weights, nginx's smooth weighted round robin (each pick adds
    every candidate's weight to its credit and takes the largest credit back by the total),
    which spreads a heavy backend's turns rather than giving them in a row."""

    def __init__(self) -> None:
        self.weighted = False
        self._turn = 0
        self._credit: dict[str, int] = {}

    def choose(self, candidates: Sequence[Candidate], key: RouteKey = NO_KEY) -> Candidate:
        if not self.weighted:
            chosen = candidates[self._turn % len(candidates)]
            self._turn += 1
            return chosen
        credit = self._credit
        best: Candidate | None = None
        best_credit = 0
        total = 0
        for candidate in candidates:
            total += candidate.weight
            value = credit.get(candidate.name, 0) + candidate.weight
            credit[candidate.name] = value
            if best is None or value > best_credit:
                best, best_credit = candidate, value
        assert best is not None
        credit[best.name] = best_credit - total
        return best

    def forget(self, backend: str) -> None:
        self._credit.pop(backend, None)


class LeastInflight(_Stateless):
    """The least loaded per unit of weight; ties go to the first listed, so the order of
    backends matters."""

    def choose(self, candidates: Sequence[Candidate], key: RouteKey = NO_KEY) -> Candidate:
        if not self.weighted:
            return min(candidates, key=_inflight)
        return min(candidates, key=lambda c: c.inflight / c.weight)


class PowerOfTwo(_Stateless):
    """Two at random, the less loaded of them: near least-inflight balance without every
    request herding onto the same momentarily idle backend."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Candidate], key: RouteKey = NO_KEY) -> Candidate:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(list(candidates), 2)
        if not self.weighted:
            return first if first.inflight <= second.inflight else second
        # Load per unit of weight, compared without a division.
        return first if first.inflight * second.weight <= second.inflight * first.weight else second


@dataclass(frozen=True, slots=True)
class CacheAwareOptions:
    """SGLang model gateway's defaults for the three thresholds (its `--cache-threshold`,
    `--balance-abs-threshold`, `--balance-rel-threshold`); the load bound and the index's
    sizes are ours. `load_factor` 1.5 rather than the 1.25 often used for bounded loads:
    a spill costs a prefill, while one more request in flight costs an engine that batches
    little; in the prefix-routing benchmark 1.25 lost more hit rate than 1.5 for no better
    balance. 0 turns the bound off."""

    threshold: float = 0.3
    balance_abs: int = 64
    balance_rel: float = 1.5
    load_factor: float = 1.5
    block_chars: int = 256  # about 64 tokens at four characters a token
    capacity_blocks: int = 16_384  # per backend: 4M characters, about 1M tokens
    ttl_s: float = 600.0


class CacheAware:
    """The backend most likely to hold the prompt's prefix in its KV cache, unless the load
    is too uneven for that to pay; SGLang's `cache_aware` decision on our `PrefixIndex`.

    1. The load is imbalanced when, among the candidates, max - min in flight exceeds
       `balance_abs` and max exceeds `balance_rel` x min: then the least in flight, whatever
       it holds (a queue on the warm backend costs more than a prefill on a cold one).
    2. Else, when the best match (leading blocks held / the prompt's full blocks) exceeds
       `threshold`: the backend with the longest match.
    3. Else the backend with the smallest index, the one with the most room for a new
       prefix, so that distinct prefixes spread over the backends.
    Ties go to the less loaded, then to the first listed.

    Steps 2 and 3 choose only among the backends within a bounded load (consistent hashing
    with bounded loads, Mirrokni, Thorup and Zadimoghaddam 2018): counting this request,
    a backend may hold at most ceil(`load_factor` x the mean in flight), the mean taken
    over the candidates with this request added. The least loaded always fits, so the set
    is never empty. Why: step 1 fires only on a large absolute gap (64 by default), which a
    small fleet at moderate concurrency never reaches, so a prefix hot enough to want more
    than one backend's share stays on one backend. With the bound, its owner is skipped
    once it holds its share, the next best match (or, in step 3, the backend with the most
    room) takes the request and learns the prefix: the hot prefix gets a second home, and
    later requests split between the two on load. A prompt shorter than one block
    has nothing to match: power of two decides, and nothing is recorded.

    Whatever is chosen, also for a session pinned to one candidate, is recorded as sent to
    it (the request will warm that cache), then handed to `on_record` when set: the hook
    through which a replica tells the others what it routed (backend name, block hashes;
    the list is shared with the request's key, so it is read, never changed). What they
    tell it goes into `index.record`, with `now` on this policy's clock.
    """

    def __init__(
        self,
        options: CacheAwareOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_record: Callable[[str, list[int]], None] | None = None,
    ) -> None:
        self.options = options = options or CacheAwareOptions()
        factor = options.load_factor
        if factor != 0 and not factor >= 1:
            raise ValueError(f"load_factor must be 0 (off) or at least 1, got {factor}")
        self.index = PrefixIndex(options.capacity_blocks, options.ttl_s)
        self.on_record = on_record
        self._clock = clock
        self._fallback = PowerOfTwo(rng)

    @property
    def weighted(self) -> bool:
        return self._fallback.weighted

    @weighted.setter
    def weighted(self, value: bool) -> None:
        self._fallback.weighted = value  # only the fallback weighs (module docstring)

    def choose(self, candidates: Sequence[Candidate], key: RouteKey = NO_KEY) -> Candidate:
        hashes = key.hashes(self.options.block_chars)
        if not hashes:
            return self._fallback.choose(candidates)
        now = self._clock()
        index = self.index
        index.expire(now)
        chosen = candidates[0] if len(candidates) == 1 else self._decide(candidates, hashes)
        index.record(chosen.name, hashes, now)
        if self.on_record is not None:
            self.on_record(chosen.name, hashes)
        return chosen

    def _decide(self, candidates: Sequence[Candidate], hashes: list[int]) -> Candidate:
        options = self.options
        loads = [candidate.inflight for candidate in candidates]
        low, high = min(loads), max(loads)
        if high - low > options.balance_abs and high > options.balance_rel * low:
            return candidates[loads.index(low)]
        candidates = self._within_bound(candidates, loads)
        matched = self.index.match(hashes)
        best = max((matched.get(c.name, 0) for c in candidates), default=0)
        if best / len(hashes) > options.threshold:
            return min(
                (c for c in candidates if matched.get(c.name, 0) == best),
                key=lambda c: c.inflight,
            )
        size = self.index.size
        return min(candidates, key=lambda c: (size(c.name), c.inflight))

    def _within_bound(self, candidates: Sequence[Candidate], loads: list[int]) -> list[Candidate]:
        """The candidates that may take one more request under the load bound."""
        factor = self.options.load_factor
        if factor <= 0:
            return list(candidates)
        # The small slack keeps a product such as 1.1 x 10 = 11.000000000000002 at 11.
        bound = math.ceil(factor * (sum(loads) + 1) / len(loads) - 1e-9)
        return [c for c, load in zip(candidates, loads, strict=True) if load + 1 <= bound]

    def forget(self, backend: str) -> None:
        self.index.forget(backend)


POLICY_NAMES = ("round_robin", "least_inflight", "power_of_two", "cache_aware")


def make_policy(
    name: str,
    cache_aware: CacheAwareOptions | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Policy:
    """A fresh policy; `cache_aware` and `clock` are read by `cache_aware` only."""
    if name == "round_robin":
        return RoundRobin()
    if name == "least_inflight":
        return LeastInflight()
    if name == "power_of_two":
        return PowerOfTwo()
    if name == "cache_aware":
        return CacheAware(cache_aware, clock=clock)
    raise ValueError(f"unknown routing policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
