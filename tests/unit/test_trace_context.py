"""W3C Trace Context parsing (trio_gateway/trace_context.py): the spec's rules, no I/O."""

from __future__ import annotations

import pytest

from trio_gateway.trace_context import (
    TRACESTATE_LIMIT,
    TraceParent,
    clean_tracestate,
    parse_traceparent,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


def test_a_valid_traceparent_is_read() -> None:
    parsed = parse_traceparent(VALID)
    assert parsed == TraceParent(TRACE, PARENT, 1)
    assert parsed.sampled
    assert parsed.header() == VALID
    assert parse_traceparent(VALID.encode()) == parsed
    assert parse_traceparent(f" {VALID}\t") == parsed  # optional whitespace around a value
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-00") == TraceParent(TRACE, PARENT, 0)


def test_a_child_keeps_the_trace_and_flags_and_names_the_new_parent() -> None:
    parsed = parse_traceparent(f"00-{TRACE}-{PARENT}-00")
    assert parsed is not None
    assert parsed.child("a" * 16) == f"00-{TRACE}-{'a' * 16}-00"


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        VALID.upper(),  # lowercase hex only
        f"00-{TRACE.upper()}-{PARENT}-01",
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 is exactly 55 characters
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-1",
        f"00_{TRACE}_{PARENT}_01",
        f"0g-{TRACE}-{PARENT}-01",
        f"01-{TRACE}-{PARENT}-01x",  # a later version's extra fields start with a dash
        b"\xff" * 55,
    ],
)
def test_a_malformed_traceparent_is_ignored(value: str | bytes | None) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_as_version_00() -> None:
    parsed = parse_traceparent(f"cc-{TRACE}-{PARENT}-01-what-the-future-adds")
    assert parsed == TraceParent(TRACE, PARENT, 1)
    assert parsed.header() == VALID  # sent on as the one version written here
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01") == TraceParent(TRACE, PARENT, 1)


def test_tracestate_headers_are_joined_and_checked() -> None:
    assert clean_tracestate([]) is None
    assert clean_tracestate([b"congo=t61rcWkgMzE"]) == "congo=t61rcWkgMzE"
    assert clean_tracestate([b"a=1", b" b=2 "]) == "a=1,b=2"
    assert clean_tracestate(["a=1"]) == "a=1"
    assert clean_tracestate([b"  "]) is None
    assert clean_tracestate([b"a=\x01"]) is None
    assert clean_tracestate([b"a=\xe9"]) is None
    long = "k=" + "v" * TRACESTATE_LIMIT
    assert clean_tracestate([long]) is None
