"""The matrix's output: a Markdown table of the cases, the totals per group, the failures,
and benchmarks/results/fault_matrix.json."""

from __future__ import annotations

from pathlib import Path

from benchmarks.fault_matrix.harness import Case
from benchmarks.loadgen import environment, save


def totals(cases: list[Case]) -> dict[str, list[int]]:
    """Per group, in the order the groups ran: [cases tried, cases passed]."""
    out: dict[str, list[int]] = {}
    for case in cases:
        tried_passed = out.setdefault(case.group, [0, 0])
        tried_passed[0] += 1
        tried_passed[1] += case.passed
    return out


def print_tables(cases: list[Case]) -> None:
    print("\n| group | case | expected | observed | result |")
    print("|---|---|---|---|---|")
    for case in cases:
        cell = case.observed.replace("|", "\\|") or "-"
        print(
            f"| {case.group} | {case.name} | {case.expected} | {cell} | "
            f"{'pass' if case.passed else '**FAIL**'} |"
        )
    print("\n| group | cases | passed |")
    print("|---|---|---|")
    for name, (tried, passed) in totals(cases).items():
        print(f"| {name} | {tried} | {passed} |")
    tried = len(cases)
    passed = sum(case.passed for case in cases)
    print(f"| **all** | **{tried}** | **{passed}** |")
    failed = [case for case in cases if not case.passed]
    if failed:
        print("\nFailures:")
        for case in failed:
            print(f"- {case.group} / {case.name}:")
            for failure in case.failures:
                print(f"  - {failure}")


def save_results(cases: list[Case], *, quick: bool, seed: int, seconds: float) -> Path:
    return save(
        "fault_matrix",
        {
            "environment": environment(),
            "quick": quick,
            "seed": seed,
            "seconds": round(seconds, 1),
            "tried": len(cases),
            "passed": sum(case.passed for case in cases),
            "groups": {name: {"tried": t, "passed": p} for name, (t, p) in totals(cases).items()},
            "cases": [
                {
                    "group": case.group,
                    "case": case.name,
                    "expected": case.expected,
                    "observed": case.observed,
                    "passed": case.passed,
                    "checks": case.checks,
                    "failures": case.failures,
                    "seconds": round(case.seconds, 2),
                }
                for case in cases
            ],
        },
    )
