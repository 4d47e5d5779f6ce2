"""The routed backends as the settings and the resolver say they are, changed while serving
without cutting a stream: the config file's entries (a reload diffs them by name), a `dns+`
entry's members (one per address it resolves to), `POST`/`DELETE /admin/workers`. Every
backend's engine runs in the gateway's nursery, in a cancel scope of its own; a backend
taken out of routing stops once its last request ended."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial

import trio
from prometheus_client import Counter

from trio_gateway.backends_config import BackendsDiff, BackendSpec, diff_backends
from trio_gateway.config import ConfigError, GatewayConfig
from trio_gateway.discovery.members import dns_name, member_specs
from trio_gateway.discovery.resolver import Resolver
from trio_gateway.discovery.watch import DnsWatch
from trio_gateway.engines.protocol import Engine
from trio_gateway.router.admission import Backend, Router

log = logging.getLogger("trio_gateway")

# How long a changed backend's new definition may take to come up (a worker's hello, an
# upstream's first /models) before it is routed to anyway, the old one drained.
REPLACE_WAIT_S = 10.0

EngineFactory = Callable[[BackendSpec], Engine]


class Fleet:
    def __init__(
        self,
        config: GatewayConfig,
        router: Router,
        make_engine: EngineFactory,
        resolver: Resolver,
        dns_failures: Counter,
    ) -> None:
        self.config = config
        self.router = router
        self.resolver = resolver
        self._make_engine = make_engine
        self._dns_failures = dns_failures
        # The configured entries by name, `dns+` ones included: what a reload diffs against.
        self._entries: dict[str, BackendSpec] = {}
        # The routed backends they made, by name: a static entry's, a `dns+` entry's members.
        self._configured: dict[str, tuple[BackendSpec, Backend]] = {}
        # The resolution loop of each `dns+` entry (`_watch`), by the entry's name.
        self._watches: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("the fleet is not running (the gateway has not started)")
        return self._nursery

    def configure(self, specs: Sequence[BackendSpec]) -> None:
        """The backends of the settings, routed before anything runs; a `dns+` entry's
        members come with its first resolution (`start`)."""
        for spec in specs:
            self._entries[spec.name] = spec
            if spec.discovered:
                continue
            backend = self._backend_for(spec)
            self.router.insert(backend)
            self._configured[spec.name] = (spec, backend)

    async def start(self, nursery: trio.Nursery) -> None:
        """Every routed backend's engine, in `nursery`, which the fleet uses from now on."""
        for backend in list(self.router.backends):
            await nursery.start(self.run_backend, backend)
        self._nursery = nursery

    async def start_watches(self) -> None:
        """Resolve each `dns+` entry, and keep resolving it, once the gateway serves."""
        for spec in self._entries.values():
            if spec.discovered:
                await self.nursery.start(self._watch, spec)

    async def add_engine(self, engine: Engine) -> Backend:
        """Route to a new backend while running (`POST /admin/workers`); ValueError when a
        backend of that name or address is routed to already."""
        if engine.url is not None and self.router.find(engine.url) is not None:
            raise ValueError(f"{engine.url} is already routed to")
        backend = self.router.add(engine)
        try:
            await self.nursery.start(self.run_backend, backend)
        except BaseException:
            self.router.remove(backend)
            raise
        return backend

    def remove_engine(self, name: str) -> bool:
        """Stop routing to a backend and stop its engine; its streams end as `unavailable`.
        A configured backend removed so comes back at the next reload if the file still
        names it: the file is what a reload makes true (a `dns+` member, at the next change
        of its entry's addresses)."""
        backend = self.router.find(name)
        if backend is None:
            return False
        self.router.remove(backend)
        for spec_name, (spec, configured) in list(self._configured.items()):
            if configured is backend:
                del self._configured[spec_name]
                if not spec.member_of:
                    del self._entries[spec_name]
        if backend.scope is not None:
            backend.scope.cancel()
        return True

    def _backend_for(self, spec: BackendSpec) -> Backend:
        """A configured backend, not routed yet. A `--worker` URL keeps the engine's own
        name (a worker's id once it said hello); a `[[backends]]` entry is its name. A
        `dns+` member is labelled by its entry's name but known by its engine's: its member
        name for an upstream, its worker id for a worker (`discovery/members.py`)."""
        engine = self._make_engine(spec)
        if spec.member_of:
            label: str | None = spec.member_of
        else:
            label = None if spec.from_flags else spec.name
        backend = self.router.backend_for(
            engine,
            label=label,
            capacity=spec.capacity,
            weight=spec.weight,
            # An upstream declares its models itself; a worker's hello is filtered here.
            allowed=frozenset(spec.models) if spec.is_worker and spec.models else None,
            max_model_len=spec.context_lengths(),
        )
        backend.member = bool(spec.member_of)
        return backend

    @property
    def configured(self) -> tuple[BackendSpec, ...]:
        """The entries as configured (a `dns+` entry once, not its members)."""
        return tuple(self._entries.values())

    def members(self, entry: str) -> tuple[Backend, ...]:
        """The routed members of the `dns+` entry named `entry`."""
        return tuple(
            backend for spec, backend in self._configured.values() if spec.member_of == entry
        )

    async def reload_backends(self, specs: Sequence[BackendSpec]) -> BackendsDiff:
        """Make the routed backends what `specs` say, diffed by name, without cutting a
        stream: an added one starts; a removed one takes no new request, finishes those it
        holds, then stops (`_retire`); a changed one is started beside the old, swapped in
        when it is up (or after `REPLACE_WAIT_S`: the file wins), and the old one drained."""
        diff = diff_backends(self.configured, specs)
        if diff.empty:
            return diff
        log.info("reloading backends: %s", diff.summary())
        for spec in diff.removed:
            self._drop_entry(self._entries.pop(spec.name))
        for spec in diff.added:
            await self._add_entry(spec)
        async with trio.open_nursery() as replacing:
            for spec in diff.changed:
                old = self._entries[spec.name]
                self._entries[spec.name] = spec
                if spec.discovered and old.discovered:
                    # The new watch's first resolution replaces each member in place.
                    self._unwatch(spec.name)
                    replacing.start_soon(self._start_watch, spec)
                elif spec.discovered or old.discovered:  # a kind changed: drain, then start
                    self._drop_entry(old)
                    replacing.start_soon(self._add_entry, spec)
                else:
                    replacing.start_soon(self._replace, spec)
        # Keep the file's order, which round_robin and least_inflight's ties follow.
        order = {spec.name: index for index, spec in enumerate(specs)}
        self._entries = dict(
            sorted(self._entries.items(), key=lambda item: order.get(item[0], len(order)))
        )
        self._configured = dict(
            sorted(
                self._configured.items(),
                key=lambda item: order.get(item[1][0].member_of or item[0], len(order)),
            )
        )
        return diff

    async def _add_entry(self, spec: BackendSpec) -> None:
        self._entries[spec.name] = spec
        if spec.discovered:
            await self._start_watch(spec)
        elif not await self._add_backend(spec):
            del self._entries[spec.name]  # not configured: the next reload tries again

    def _drop_entry(self, spec: BackendSpec) -> None:
        """Drain what `spec` made: its backend, or its watch and every member."""
        if not spec.discovered:
            _, backend = self._configured.pop(spec.name)
            self._retire(backend)
            return
        self._unwatch(spec.name)
        for name, (member, backend) in list(self._configured.items()):
            if member.member_of == spec.name:
                del self._configured[name]
                self._retire(backend)

    async def _add_backend(self, spec: BackendSpec) -> bool:
        """Route to a new configured backend and start it; False when it failed to."""
        try:
            backend = self._backend_for(spec)
        except ConfigError as error:  # its TLS files, read again for each new engine
            log.error("backend %s: not added: %s", spec.name, error)
            return False
        try:
            self.router.insert(backend)
        except ValueError as error:  # its name is taken (e.g. by POST /admin/workers)
            log.error("backend %s: not added: %s", spec.name, error)
            return False
        self._configured[spec.name] = (spec, backend)
        try:
            started = await self._start(backend)
        except BaseException:  # cancelled while starting: leave nothing half-routed
            started = False
            raise
        finally:
            if not started:
                self._unroute(spec.name, backend)
        return started

    def _unroute(self, name: str, backend: Backend) -> None:
        if backend in self.router.backends:
            self.router.remove(backend)
        if self._configured.get(name, (None, None))[1] is backend:
            del self._configured[name]

    # -- `dns+` entries: their members follow what the name resolves to ----------------

    async def _start_watch(self, spec: BackendSpec) -> None:
        await self.nursery.start(self._watch, spec)

    def _unwatch(self, entry: str) -> None:
        scope = self._watches.pop(entry, None)
        if scope is not None:
            scope.cancel()

    async def _watch(
        self, spec: BackendSpec, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Resolve `spec`'s name every `--dns-refresh-s` and make its members what it
        says (`DnsWatch`), until the entry is reloaded away or the gateway stops."""
        failures = self._dns_failures.labels(spec.name)
        watch = DnsWatch(
            spec.name,
            dns_name(spec.url),
            self.resolver,
            partial(self._apply_members, spec),
            refresh_s=self.config.dns_refresh_s,
            on_failure=failures.inc,
        )
        with trio.CancelScope() as scope:
            self._watches[spec.name] = scope
            try:
                await watch.run(task_status=task_status)
            finally:
                if self._watches.get(spec.name) is scope:
                    del self._watches[spec.name]

    async def _apply_members(self, entry: BackendSpec, addresses: frozenset[str]) -> bool:
        """Make `entry`'s members one per address: an address that appeared is added, one
        that vanished drained (its streams finish, then its engine stops, as a backend a
        reload removed), one whose entry changed replaced in place. False when a new
        member failed to start (it is tried again at the next resolution)."""
        current = tuple(
            spec for spec, _ in self._configured.values() if spec.member_of == entry.name
        )
        diff = diff_backends(current, member_specs(entry, addresses))
        for spec in diff.removed:
            _, backend = self._configured.pop(spec.name)
            self._retire(backend)
        added = [await self._add_backend(spec) for spec in diff.added]
        async with trio.open_nursery() as replacing:
            for spec in diff.changed:
                replacing.start_soon(self._replace, spec)
        return all(added)

    async def _replace(self, spec: BackendSpec) -> None:
        old_spec, old = self._configured[spec.name]
        try:
            new = self._backend_for(spec)
        except ConfigError as error:
            log.error("backend %s: not replaced: %s", spec.name, error)
            new = None
        if new is None or not await self._start(new):
            # The old definition serves on, and stays the configured one, so that the next
            # reload sees the change again and tries again.
            if not spec.member_of and spec.name in self._entries:
                self._entries[spec.name] = old_spec
            return
        if not new.engine.available:
            try:
                with trio.move_on_after(REPLACE_WAIT_S):
                    await new.up.wait()
            except BaseException:  # cancelled (its watch reloaded away): the old one serves on
                self._retire(new)
                raise
            if not new.engine.available:
                log.warning(
                    "backend %s: the new definition is not up after %g s; routing to it anyway",
                    spec.name,
                    REPLACE_WAIT_S,
                )
        if self._configured.get(spec.name, (None, None))[1] is not old:
            self._retire(new)  # removed meanwhile (DELETE /admin/workers, a reload): so be it
            return
        if old in self.router.backends:
            self.router.replace(old, new)
        else:
            self.router.insert(new)
        self._configured[spec.name] = (spec, new)
        self._retire(old)

    async def _start(self, backend: Backend) -> bool:
        """Start a reloaded backend's engine; one that fails to start is logged, not fatal:
        the gateway keeps serving with the others."""
        try:
            await self.nursery.start(self.run_backend, backend)
        except Exception:
            log.exception("reload: backend %s failed to start", backend.name)
            return False
        return True

    def _retire(self, backend: Backend) -> None:
        """Out of the routing table now; its engine stops once its last request ended."""
        if backend in self.router.backends:
            self.router.remove(backend)
        elif not backend.retired:  # started, never routed
            backend.retired = True
            if backend.inflight == 0:
                backend.idle.set()
        self.nursery.start_soon(self._stop_when_idle, backend)

    async def _stop_when_idle(self, backend: Backend) -> None:
        if backend.inflight:
            log.info("backend %s: draining %d requests", backend.name, backend.inflight)
        await backend.idle.wait()
        if backend.scope is not None:
            backend.scope.cancel()
        log.info("backend %s: stopped", backend.name)

    async def run_backend(
        self, backend: Backend, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # A worker's fresh hello (an upstream answering again): capacity for the queue, and
        # an open breaker goes half-open at once rather than after its cooldown.
        backend.engine.on_available = partial(self.router.backend_reconnected, backend)
        with trio.CancelScope() as backend.scope:
            if backend.retired:  # drained before it even started
                task_status.started()
                return
            await backend.engine.run(task_status=task_status)
