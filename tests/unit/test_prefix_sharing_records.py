"""What replicas tell each other about their routing: the record codec and the republish
throttle, without Redis."""

from __future__ import annotations

import struct

from trio_gateway.router.prefix_sharing import (
    Republishing,
    decode_records,
    encode_records,
)


def test_records_round_trip() -> None:
    records = [("w1", [1, 2, 2**64 - 1]), ("ws://10.0.0.7:9000", []), ("é", [7])]
    assert decode_records(encode_records(records)) == records


def test_a_malformed_tail_is_dropped_not_raised() -> None:
    good = encode_records([("w1", [1, 2])])
    truncated = encode_records([("w2", [3, 4, 5])])[:-3]
    assert decode_records(good + truncated) == [("w1", [1, 2])]
    bad_name = struct.pack(">HH", 2, 0) + b"\xff\xfe"
    assert decode_records(good + bad_name) == [("w1", [1, 2])]
    assert decode_records(b"\x00") == []


def test_a_hot_prefix_is_told_once_per_interval() -> None:
    told = Republishing(capacity=2, after_s=30.0)
    assert told.due("w1", [1, 2], now=0.0)
    assert not told.due("w1", [1, 2], now=10.0)
    assert told.due("w2", [1, 2], now=10.0)  # another backend: its own record
    assert told.due("w1", [1, 2], now=31.0)
    assert not told.due("w1", [], now=0.0)  # nothing to tell
    # Bounded: the least recently told is forgotten first.
    assert told.due("w3", [9], now=32.0)
    assert told.due("w2", [1, 2], now=33.0)
