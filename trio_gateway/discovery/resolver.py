"""Who answers "which addresses has this name now": a Protocol, so that tests give their own
(no real DNS in a test), and the system's resolver for everything else."""

from __future__ import annotations

from typing import Protocol

import trio


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> frozenset[str]:
        """The addresses `host` has now; an error (OSError) when it cannot be resolved."""
        ...


class SystemResolver:
    """`getaddrinfo`, as every other name the gateway dials is resolved: it honours the
    pod's resolv.conf (Kubernetes' search domains, so `vllm` finds `vllm.NAMESPACE.svc`)
    and /etc/hosts. A headless Service answers with one record per ready pod."""

    async def resolve(self, host: str, port: int) -> frozenset[str]:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        return frozenset(str(sockaddr[0]) for *_, sockaddr in infos)
