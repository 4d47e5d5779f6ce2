"""One process exposes its own registry, with no `pid` label (the multiprocess sum:
tests/system/test_metrics_multiprocess.py)."""

from __future__ import annotations

import os

from prometheus_client import generate_latest

from tests.support.metric_samples import samples, value
from trio_gateway.metrics import GatewayMetrics, forget_process, multiprocess_dir


def test_one_process_exposes_its_own_registry() -> None:
    assert multiprocess_dir() is None  # the suite runs single-process
    metrics = GatewayMetrics()
    metrics.request_ended("mock", "chat", False, None)
    metrics.inflight.labels("mock").inc()
    metrics.backend_up.labels("mock").set(1)
    forget_process(os.getpid())  # nothing to forget
    exposition = metrics.exposition()
    assert exposition == generate_latest(metrics.registry)
    scraped = samples(exposition.decode())
    assert value(scraped, "inflight_requests", model="mock") == 1
    assert value(scraped, "backend_up", backend="mock") == 1
    assert not [key for key in scraped if any(label == "pid" for label, _ in key[1])]
