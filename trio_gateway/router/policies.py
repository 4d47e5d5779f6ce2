"""Routing policies: pure choices among candidate backends (no I/O, no clock)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol


class Candidate(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def inflight(self) -> int: ...


class Policy(Protocol):
    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        """Pick one of a non-empty sequence."""
        ...


class RoundRobin:
    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        chosen = candidates[self._turn % len(candidates)]
        self._turn += 1
        return chosen


class LeastInflight:
    """The least loaded; ties go to the first listed, so the order of backends matters."""

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        return min(candidates, key=lambda c: c.inflight)


class PowerOfTwo:
    """Two at random, the less loaded of them: near least-inflight balance without every
    request herding onto the same momentarily idle backend."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(list(candidates), 2)
        return first if first.inflight <= second.inflight else second


POLICY_NAMES = ("round_robin", "least_inflight", "power_of_two")


def make_policy(name: str) -> Policy:
    if name == "round_robin":
        return RoundRobin()
    if name == "least_inflight":
        return LeastInflight()
    if name == "power_of_two":
        return PowerOfTwo()
    raise ValueError(f"unknown routing policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
