"""Where an upstream's capacity comes from: `--upstream-max-inflight` (256, vLLM's default
`--max-num-seqs`), overridden for every backend by `--max-inflight`. No sockets."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from trio_gateway.backend_engines import describe_backends, engine_for_url
from trio_gateway.config import (
    ConfigError,
    GatewayConfig,
    add_config_flags,
    config_from_args,
    load_config,
)
from trio_gateway.engines.upstream.engine import OpenAIUpstream
from trio_gateway.gateway import Gateway

UPSTREAM = "http://10.0.0.7:8001/v1"
WORKER = "ws://10.0.0.8:9001"


def capacities(config: GatewayConfig) -> dict[str, int | None]:
    gateway = Gateway(config)
    return {getattr(b.engine, "url", b.name): b.capacity for b in gateway.router.backends}


def test_an_upstream_is_bounded_by_default() -> None:
    assert GatewayConfig().upstream_max_inflight == 256
    assert OpenAIUpstream(UPSTREAM).capacity == 256
    assert engine_for_url(UPSTREAM, GatewayConfig()).capacity == 256
    assert capacities(GatewayConfig(workers=(UPSTREAM, WORKER))) == {
        UPSTREAM: 256,
        WORKER: None,  # a worker's figure comes with its hello
    }


def test_the_setting_gives_every_upstream_its_slots() -> None:
    config = GatewayConfig(workers=(UPSTREAM, "http://10.0.0.9:8001/v1"), upstream_max_inflight=3)
    assert capacities(config) == {UPSTREAM: 3, "http://10.0.0.9:8001/v1": 3}
    assert "upstream http://10.0.0.9:8001/v1 (at most 3 in flight)" in describe_backends(config)


def test_max_inflight_overrides_upstreams_and_workers_alike() -> None:
    config = GatewayConfig(workers=(UPSTREAM, WORKER), max_inflight=5, upstream_max_inflight=3)
    assert capacities(config) == {UPSTREAM: 5, WORKER: 5}
    assert "(at most 5 in flight)" in describe_backends(config)


def test_an_upstream_added_at_runtime_takes_the_setting_too() -> None:
    engine = engine_for_url(UPSTREAM, GatewayConfig(upstream_max_inflight=7))  # POST /admin/workers
    assert engine.capacity == 7


@pytest.mark.parametrize("value", [0, -1])
def test_an_unbounded_or_negative_figure_is_refused(value: int) -> None:
    with pytest.raises(ConfigError, match="upstream_max_inflight: must be at least 1"):
        GatewayConfig(upstream_max_inflight=value)
    with pytest.raises(ValueError, match="max_inflight must be at least 1"):
        OpenAIUpstream(UPSTREAM, max_inflight=value)


def test_flag_environment_and_file(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    args = parser.parse_args(["--upstream-max-inflight", "64"])
    assert config_from_args(args, environ={}).upstream_max_inflight == 64
    environ = {"TRIO_GATEWAY_UPSTREAM_MAX_INFLIGHT": "128"}
    assert load_config(environ=environ).upstream_max_inflight == 128
    file = tmp_path / "gateway.toml"
    file.write_text("upstream_max_inflight = 1024\n")
    assert load_config(file=file, environ={}).upstream_max_inflight == 1024
