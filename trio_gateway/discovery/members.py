"""What a set of resolved addresses means for a `dns+` entry, with no I/O.

Kubernetes exposes the pods behind a headless Service as the A/AAAA records of one name;
each address is a member backend. A member's identity (`member_name`: `ENTRY/ADDRESS:PORT`)
is distinct per address, because the router keeps a breaker, an in-flight count and
sessions per backend; its metrics label is the entry's name (`BackendSpec.member_of`), so
the label set stays the operator's, however many pods come and go. A worker member is then
known by its worker id once it said hello (the pod's name in the StatefulSet), like any
worker, so sessions stay keyed by the pod, not by its address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

from trio_gateway.backend_urls import DNS_PREFIX
from trio_gateway.backends_config import BackendSpec


@dataclass(frozen=True, slots=True)
class DnsName:
    """What a `dns+` URL asks to resolve."""

    host: str
    port: int


def dns_name(url: str) -> DnsName:
    """The name and port of a validated `dns+SCHEME://NAME:PORT/...` URL."""
    parts = urlsplit(url)
    if not parts.scheme.startswith(DNS_PREFIX) or parts.hostname is None or parts.port is None:
        raise ValueError(f"not a dns+ URL with a name and a port: {url!r}")
    return DnsName(parts.hostname, parts.port)


def _host(address: str) -> str:
    """An address as it goes in a URL's authority (an IPv6 one in brackets)."""
    return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address


def member_url(url: str, address: str) -> str:
    """`url` dialling `address`: the `dns+` prefix gone, NAME replaced, all else kept."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    netloc = f"{userinfo}{_host(address)}:{parts.port}"
    scheme = parts.scheme.removeprefix(DNS_PREFIX)
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))


def member_name(entry: str, address: str, port: int) -> str:
    return f"{entry}/{_host(address)}:{port}"


def member_spec(entry: BackendSpec, address: str) -> BackendSpec:
    """One address of `entry` as a backend of its own, configured as the entry is."""
    name = dns_name(entry.url)
    return replace(
        entry,
        name=member_name(entry.name, address, name.port),
        url=member_url(entry.url, address),
        member_of=entry.name,
        host_name=name.host,
    )


def member_specs(entry: BackendSpec, addresses: Iterable[str]) -> tuple[BackendSpec, ...]:
    """The members `addresses` mean, in a stable order (the addresses sorted)."""
    return tuple(member_spec(entry, address) for address in sorted(addresses, key=_sort_key))


def _sort_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


@dataclass(frozen=True, slots=True)
class AddressDiff:
    """Between two resolutions: what appeared (to add) and what vanished (to drain)."""

    appeared: frozenset[str] = frozenset()
    vanished: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.appeared or self.vanished)

    def summary(self) -> str:
        parts = [
            f"{label} {', '.join(sorted(addresses, key=_sort_key))}"
            for label, addresses in (("appeared", self.appeared), ("vanished", self.vanished))
            if addresses
        ]
        return "; ".join(parts) or "no change"


def diff_addresses(known: frozenset[str], resolved: frozenset[str]) -> AddressDiff:
    return AddressDiff(appeared=resolved - known, vanished=known - resolved)
