"""W3C Trace Context (`traceparent`, `tracestate`): parsed, checked and written, with no I/O.

A client's trace goes on through the gateway to the engine that serves the request: an
upstream gets the headers, a worker the `generate` frame's fields, and a worker hosting an
upstream passes them to it. What a malformed header gets is the spec's answer: it is
ignored (the request is served, as if it had none), never a 400, since a tracing header is
no part of what the client asked for.

The rules are the spec's (https://www.w3.org/TR/trace-context/, §3.2): lowercase hex only;
version `ff` is invalid; version `00` is exactly 55 characters; a later version may be
longer, is read as `00` when its first four fields are, and is sent on as `00` (the only
version this code writes); an all-zero trace id or parent id is invalid. `tracestate` is
read only beside a valid `traceparent`, and passed on as it came (the gateway adds no entry
of its own), unless it is over the length the spec asks vendors to propagate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_HEX_FIELDS = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16
V00_LENGTH = 55
# §3.3.1.5: a vendor should propagate at least 512 characters of `tracestate`; a longer one
# is dropped whole rather than cut (cutting needs rules about which entries to keep).
TRACESTATE_LIMIT = 512
_TRACESTATE_CHARS = re.compile(r"[\x20-\x7e]*")
SAMPLED = 0x01


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A valid `traceparent`: the trace, the caller's span (`parent_id`) and its flags."""

    trace_id: str  # 32 lowercase hex digits, not all zero
    parent_id: str  # 16 lowercase hex digits, not all zero
    flags: int  # 0..255; bit 0 is `sampled`

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def header(self) -> str:
        """As a version-00 `traceparent` value."""
        return format_traceparent(self.trace_id, self.parent_id, self.flags)

    def child(self, span_id: str) -> str:
        """The `traceparent` to send on from span `span_id` of the same trace."""
        return format_traceparent(self.trace_id, span_id, self.flags)


def format_traceparent(trace_id: str, span_id: str, flags: int) -> str:
    return f"00-{trace_id}-{span_id}-{flags:02x}"


def parse_traceparent(value: str | bytes | None) -> TraceParent | None:
    """The header's trace context, or None when it is absent or malformed (then ignored)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    value = value.strip(" \t")  # optional whitespace around a header value
    found = _HEX_FIELDS.match(value)
    if found is None:
        return None
    version, trace_id, parent_id, flags = found.groups()
    if version == "ff":
        return None
    if version == "00":
        if len(value) != V00_LENGTH:
            return None
    elif len(value) > V00_LENGTH and value[V00_LENGTH] != "-":
        return None  # a later version may add fields, each after a dash
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    return TraceParent(trace_id, parent_id, int(flags, 16))


def clean_tracestate(values: Sequence[bytes | str]) -> str | None:
    """The `tracestate` to pass on: every header of that name joined by commas (§3.3.1.1
    allows it split across several), or None when empty, not printable ASCII, or too long."""
    if not values:
        return None
    try:
        texts = [v.decode("ascii") if isinstance(v, bytes) else v for v in values]
    except UnicodeDecodeError:
        return None
    joined = ",".join(t.strip(" \t") for t in texts).strip(" \t,")
    if not joined or len(joined) > TRACESTATE_LIMIT or not _TRACESTATE_CHARS.fullmatch(joined):
        return None
    return joined
