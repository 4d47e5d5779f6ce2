"""The worker's own Prometheus metrics (served on `--metrics-port`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

PREFIX = "trio_gateway_worker_"


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active = Gauge(
            PREFIX + "active_requests", "Generations running on this worker.", registry=r
        )
        self.cancellations = Counter(
            PREFIX + "cancellations_total",
            "Generations stopped before their end, by reason.",
            ["reason"],
            registry=r,
        )
        self.requests = Counter(
            PREFIX + "requests_total", "Generations by how they ended.", ["outcome"], registry=r
        )
        self.sessions_active = Gauge(
            PREFIX + "sessions_active", "Sessions open on this worker.", registry=r
        )
        self.connections = Gauge(
            PREFIX + "connections", "Gateways connected to this worker.", registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
