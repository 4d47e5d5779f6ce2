"""The mock engine's prefix cache and prefill rate come from the gateway's and the worker's
settings alike."""

from __future__ import annotations

import pytest

from trio_gateway.config import GatewayConfig, WorkerConfig
from trio_gateway.engines.mock import MockEngine


def test_the_settings_build_the_cache_and_the_prefill_rate() -> None:
    for kind in (GatewayConfig, WorkerConfig):
        config = kind(
            mock_prefix_block_tokens=32,
            mock_prefix_cache_blocks=10,
            mock_prefill_ms_per_1k_tokens=2.0,
        )
        engine = MockEngine.from_settings(config)
        cache = engine.prefix_cache
        assert (cache.block_tokens, cache.capacity_blocks) == (32, 10)
        assert engine.prefill_s_per_token == pytest.approx(2e-6)
