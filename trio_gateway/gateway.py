"""The gateway's state: settings, engines by model, the in-flight ledger, metrics, its nursery."""

from __future__ import annotations

import trio

from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.protocol import Engine
from trio_gateway.lifecycle.ledger import InFlightLedger
from trio_gateway.lifecycle.shutdown import GracefulShutdown
from trio_gateway.metrics import GatewayMetrics
from trio_gateway.openai.errors import model_not_found


class Gateway:
    def __init__(self, config: GatewayConfig, engines: list[Engine] | None = None) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.ledger = InFlightLedger()
        self.shutdown = GracefulShutdown(self.ledger, config.drain_timeout_s)
        self.api_keys = config.accepted_api_keys()
        if engines is None:
            engines = [
                MockEngine(
                    (config.model,),
                    ttft_ms=config.mock_ttft_ms,
                    itl_ms=config.mock_itl_ms,
                    max_num_seqs=config.mock_max_num_seqs,
                    default_tokens=config.mock_tokens,
                )
            ]
        self.engines = engines
        self._by_model: dict[str, Engine] = {}
        for engine in engines:
            for model in engine.models:
                self._by_model.setdefault(model, engine)
        self._nursery: trio.Nursery | None = None

    @property
    def models(self) -> list[str]:
        return list(self._by_model)

    @property
    def nursery(self) -> trio.Nursery:
        """Where flights run; it exists between ASGI lifespan startup and shutdown."""
        if self._nursery is None:
            raise RuntimeError("the gateway is not running (no ASGI lifespan startup yet)")
        return self._nursery

    @property
    def running(self) -> bool:
        return self._nursery is not None

    @property
    def accepting(self) -> bool:
        """Running, and not shutting down: new requests are taken."""
        return self.running and self.shutdown.accepting

    def engine_for(self, model: str) -> Engine:
        try:
            return self._by_model[model]
        except KeyError:
            raise model_not_found(model) from None

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every engine's background work in `nursery`, which then hosts the flights."""
        for engine in self.engines:
            await nursery.start(engine.run)
        await nursery.start(self.shutdown.run)
        self._nursery = nursery

    def stop(self) -> None:
        self._nursery = None
