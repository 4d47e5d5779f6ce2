"""The body-read deadline grows with the declared length, from a floor, never above what the
largest accepted body needs; 0 disables it."""

from __future__ import annotations

import math

from trio_gateway.config import GatewayConfig

MIB = 1024 * 1024


def test_body_read_timeout_setting() -> None:
    default = GatewayConfig()
    assert default.body_read_timeout_s == 5.0
    assert default.body_read_timeout(1000) == 5.0  # the floor
    assert default.body_read_timeout(None) == 8.0  # chunked: 2 s per MiB of the 4 MiB limit
    assert default.body_read_timeout(3 * MIB) == 6.0
    assert default.body_read_timeout(99 * MIB) == 8.0  # refused anyway: never above the limit
    assert GatewayConfig(body_read_timeout_s=30).body_read_timeout(MIB) == 30.0
    assert GatewayConfig(body_read_timeout_s=0).body_read_timeout(MIB) == math.inf
