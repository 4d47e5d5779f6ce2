"""The loop that keeps a `dns+` entry's members what its name resolves to.

Every `--dns-refresh-s` (5 s, Envoy's STRICT_DNS default) the name is resolved again; when
the set of addresses changed, `apply` is given the whole new set (the gateway adds the
members that appeared and drains those that vanished). A resolution that fails, times out or
finds nothing keeps the last known set: a DNS outage, or a Service scaled to zero for a
moment, must not empty the fleet while its pods may still be serving. The outage is logged
once, when it starts (and its end once), and every failed resolution is counted
(`on_failure`, the `dns_resolution_failures_total` metric).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from trio_gateway.discovery.members import DnsName, diff_addresses
from trio_gateway.discovery.resolver import Resolver

log = logging.getLogger("trio_gateway.discovery")

# A resolution that takes longer than this is a failure (getaddrinfo runs in a thread,
# abandoned on cancel); at most the refresh interval, so a slow resolver never stacks up.
RESOLVE_TIMEOUT_S = 5.0


class DnsWatch:
    def __init__(
        self,
        entry: str,
        name: DnsName,
        resolver: Resolver,
        apply: Callable[[frozenset[str]], Awaitable[bool]],
        *,
        refresh_s: float,
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.entry = entry
        self.name = name
        self.resolver = resolver
        self.refresh_s = refresh_s
        self._apply = apply
        self._on_failure = on_failure
        self.known: frozenset[str] | None = None  # None: never resolved yet
        self.failing = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resolve now, then every `refresh_s`, until cancelled; started once the first
        resolution was applied (or failed), so a gateway starts with its members routed."""
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(self.refresh_s)
            await self.refresh()

    async def refresh(self) -> None:
        """One resolution, applied when it changed something."""
        resolved = await self._resolve()
        if resolved is None:
            return
        diff = diff_addresses(self.known or frozenset(), resolved)
        if self.known is not None and diff.empty:
            return
        log.info(
            "backend %s: %s:%d resolves to %d address(es) (%s)",
            self.entry,
            self.name.host,
            self.name.port,
            len(resolved),
            diff.summary(),
        )
        try:
            applied = await self._apply(resolved)
        except Exception:  # a member that cannot be made must not stop the gateway
            log.exception("backend %s: applying %s failed; tried again", self.entry, diff.summary())
            return
        if applied:  # else a member failed to start: the next resolution tries it again
            self.known = resolved

    async def _resolve(self) -> frozenset[str] | None:
        problem = ""
        with trio.move_on_after(min(RESOLVE_TIMEOUT_S, self.refresh_s)) as timer:
            try:
                addresses = await self.resolver.resolve(self.name.host, self.name.port)
            except OSError as error:  # socket.gaierror included
                problem = str(error) or type(error).__name__
            else:
                if addresses:
                    if self.failing:
                        log.info("backend %s: %s resolves again", self.entry, self.name.host)
                        self.failing = False
                    return addresses
                problem = "no address"
        if timer.cancelled_caught:
            problem = "timed out"
        self._on_failure()
        if not self.failing:
            self.failing = True
            kept = "none known yet" if self.known is None else f"{len(self.known)} kept"
            log.warning(
                "backend %s: cannot resolve %s (%s); its addresses are kept (%s) until it "
                "resolves again",
                self.entry,
                self.name.host,
                problem,
                kept,
            )
        return None
