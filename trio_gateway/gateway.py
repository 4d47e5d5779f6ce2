"""The gateway's state: settings, backends behind a router, the in-flight ledger, metrics,
shutdown, and the nursery everything runs in."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

from trio_gateway.backend_engines import counts_prompts_as_the_mock, engine_for_spec
from trio_gateway.backends_config import BackendsDiff
from trio_gateway.config import ConfigError, GatewayConfig
from trio_gateway.discovery.resolver import Resolver, SystemResolver
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.mock_answer import prompt_token_count
from trio_gateway.engines.protocol import Engine
from trio_gateway.errors import model_not_found, unavailable
from trio_gateway.fleet import EngineFactory, Fleet
from trio_gateway.generation import GENERATION_ENDPOINTS, GenerationRequest
from trio_gateway.lifecycle.ledger import InFlightLedger
from trio_gateway.lifecycle.shutdown import GracefulShutdown, Phase
from trio_gateway.loop_health import count_tasks, sample_event_loop_lag
from trio_gateway.metrics import GatewayMetrics, backend_label, multiprocess_dir
from trio_gateway.openai.schemas import check_max_tokens, check_prompt_length
from trio_gateway.router.admission import Router
from trio_gateway.router.policies import CacheAware, make_policy
from trio_gateway.router.prefix_sharing import PrefixSharing
from trio_gateway.sessions.manager import SessionManager
from trio_gateway.sessions.store import RedisSessionStore

if TYPE_CHECKING:
    from trio_gateway.tracing import RequestTracing

log = logging.getLogger("trio_gateway")

# How stale the scrape-time gauges of the processes a scrape does not reach may be.
GAUGE_REFRESH_S = 1.0


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        engines: list[Engine] | None = None,
        tracing: RequestTracing | None = None,
        *,
        engine_factory: EngineFactory | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        """`engines` replace the configured backends (tests); `engine_factory` makes the
        engine of each configured backend (default `engine_for_spec`); `resolver` resolves
        the `dns+` entries' names (default the system's; tests give their own). `tracing`:
        where request spans go; None builds the OTLP exporter when `otlp_endpoint` is set,
        at start (its thread belongs to the running gateway)."""
        self.config = config
        self.tracing = tracing
        self.metrics = GatewayMetrics()
        self.ledger = InFlightLedger()
        self.shutdown = GracefulShutdown(self.ledger, config.drain_timeout_s, config.drain_delay_s)
        self.api_keys = config.accepted_api_keys()
        policy = make_policy(config.routing_policy, config.cache_aware(), clock=trio.current_time)
        self.router = Router(
            policy,
            max_inflight=config.max_inflight or None,
            queue_size=config.queue_size,
            queue_timeout=config.queue_timeout_s,
            breaker_threshold=config.breaker_threshold,
            breaker_cooldown=config.breaker_cooldown_s,
        )
        self.fleet = Fleet(
            config,
            self.router,
            engine_factory or partial(engine_for_spec, config=config),
            resolver or SystemResolver(),
            self.metrics.dns_resolution_failures,
        )
        if engines is not None:
            for engine in engines:
                self.router.add(engine)
        elif config.backend_specs():
            self.fleet.configure(config.backend_specs())
        else:
            self.router.add(MockEngine.from_settings(config))
        # cache_aware replicas sharing one Redis also share what they routed.
        self.prefix_sharing: PrefixSharing | None = None
        if isinstance(policy, CacheAware) and config.session_store:
            self.prefix_sharing = PrefixSharing(
                config.session_store,
                apply=policy.index.record,
                knows=lambda name: self.router.find(name) is not None,
                on_error=self.metrics.prefix_sharing_errors.inc,
            )
            policy.on_record = self.prefix_sharing.publish
        self.session_store = (
            RedisSessionStore(config.session_store, self.metrics.session_store_errors.inc)
            if config.session_store
            else None
        )
        self.sessions = SessionManager(
            self.router,
            self.metrics,
            default_timeout=config.session_timeout_s,
            soft_affinity=config.session_affinity == "soft",
            store=self.session_store,
        )
        self.shutdown.on_stopping.append(partial(self.sessions.close_all, "shutdown"))
        self._nursery: trio.Nursery | None = None
        self._backend_labels: set[str] = set()  # per-backend gauges set by the last refresh

    @property
    def models(self) -> list[str]:
        return self.router.models()

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

    @property
    def ready(self) -> bool:
        """Accepting, and a request for some model would be routed rather than refused.

        The router answers (`Router.serves_any`), with the same choice a request gets: a
        backend whose breaker is open still counts while panic routing would send requests
        to it, and a connected backend that serves no model yet does not."""
        return self.running and self.shutdown.ready and self.router.serves_any()

    def refresh_gauges(self) -> None:
        """State read at scrape time rather than kept up to date on every change (and every
        second under multiprocess mode, where a scrape reaches one process of several)."""
        metrics = self.metrics
        for phase in Phase:
            metrics.shutdown_phase.labels(phase.value).set(phase is self.shutdown.phase)
        inflight: dict[str, int] = {}
        up: dict[str, bool] = {}  # a `dns+` entry's members share a label: up if any is
        for backend in self.router.backends:
            label = backend_label(backend.engine, backend.label)
            inflight[label] = inflight.get(label, 0) + backend.inflight
            up[label] = up.get(label, False) or backend.engine.available
        for label, count in inflight.items():
            metrics.backend_inflight.labels(label).set(count)
            metrics.backend_up.labels(label).set(up[label])
        for gone in self._backend_labels - inflight.keys():  # removed by /admin/workers
            metrics.backend_up.remove(gone)
            # Its requests still end, but not on a backend the gateway routes to. Zeroed
            # first: under multiprocess mode the removed child's last value stays in its file.
            metrics.backend_inflight.labels(gone).set(0)
            metrics.backend_inflight.remove(gone)
        self._backend_labels = set(inflight)
        if self.running:
            metrics.live_tasks.set(count_tasks())

    def check_model(self, model: str) -> None:
        """404 before anything starts when no backend serves `model` (503 while some
        backend has not said yet which models it serves)."""
        if self.router.knows(model):
            return
        if any(not backend.models for backend in self.router.backends):
            raise unavailable("Backends are still starting; retry shortly.")
        raise model_not_found(model)

    def check_context_length(self, request: GenerationRequest) -> None:
        """400 before anything starts when `max_tokens`, or the prompt plus `max_tokens`, is
        over the model's context length. The prompt is judged only when every backend that
        may take the request counts it as the gateway does (`counts_prompts_as_the_mock`)
        and says its length: any other one (an upstream) refuses for itself, its 400
        relayed. Of several lengths the largest counts, as for `max_tokens`. Only the
        completions: `/tokenize` answers how long a text is whatever its length (its answer
        says `max_model_len` for the client to judge), and an embedding's input is the
        engine's to judge."""
        if request.endpoint not in GENERATION_ENDPOINTS:
            return
        model = request.model
        check_max_tokens(request, self.router.context_length(model))
        lengths = []
        for backend in self.router.backends:
            if not backend.serves(model):
                continue
            length = backend.context_lengths.get(model)
            if length is None or not counts_prompts_as_the_mock(backend.engine):
                return
            lengths.append(length)
        if lengths:
            check_prompt_length(request, max(lengths), prompt_token_count(request.prompt))

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every engine's background work in `nursery`, which then hosts the flights."""
        await self.fleet.start(nursery)
        if self.session_store is not None:
            await nursery.start(self.session_store.run)
        if self.prefix_sharing is not None:
            await nursery.start(self.prefix_sharing.run)
        await nursery.start(self.sessions.run)
        await nursery.start(self.shutdown.run)
        await nursery.start(sample_event_loop_lag, self.metrics)
        if self.tracing is None and self.config.otlp_endpoint:
            from trio_gateway.tracing import RequestTracing  # OpenTelemetry only when asked

            self.tracing = RequestTracing.to_otlp(
                self.config.otlp_endpoint, routing_policy=self.config.routing_policy
            )
        if self.tracing is not None:
            await nursery.start(self.tracing.run)
        self._nursery = nursery
        await self.fleet.start_watches()
        if multiprocess_dir() is not None:
            nursery.start_soon(self._refresh_gauges_every, GAUGE_REFRESH_S)

    async def _refresh_gauges_every(self, interval: float) -> None:
        """Keeps this process's share of the summed scrape-time gauges current; ends when the
        gateway's nursery is cancelled."""
        while True:
            self.refresh_gauges()
            await trio.sleep(interval)

    def stop(self) -> None:
        self._nursery = None

    async def reload(self, load: Callable[[], GatewayConfig]) -> BackendsDiff | None:
        """SIGHUP's work: read the settings again (`load`: the same file, environment and
        flags as at start) and apply their backends. A file that does not load is logged,
        one line naming the key, and changes nothing (None). Only the backends reload; a
        change to any other setting is said in the log and waits for a restart. A gateway
        that is shutting down does not reload: its backends are draining for good."""
        if not self.shutdown.accepting:
            log.warning("reload: ignored, the gateway is shutting down")
            return None
        try:
            config = load()
        except ConfigError as error:
            log.error("reload: %s; the running backends are kept", error)
            return None
        if dataclasses.replace(config, backends=self.config.backends) != self.config:
            changed = [
                f.name
                for f in dataclasses.fields(config)
                if f.name != "backends" and getattr(config, f.name) != getattr(self.config, f.name)
            ]
            log.warning(
                "reload: only backends reload; %s changed and take effect at a restart",
                ", ".join(changed),
            )
        diff = await self.fleet.reload_backends(config.backend_specs())
        if diff.empty:
            log.info("reload: the backends are unchanged")
        return diff
