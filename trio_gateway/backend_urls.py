"""The URLs the gateway dials, checked in one place before anything uses them.

`--worker`, `TRIO_GATEWAY_WORKERS`, a config file's `workers`, a worker's `--upstream` and
`POST /admin/workers` all go through `check_backend_url`; `--session-store` through
`check_session_store_url`. A URL that passes can be dialled as it is: a host, a numeric
port in range where one is given or needed. A URL that does not raises `BadURL`, whose
message is one line naming the URL (a password in it masked) and what is expected.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from urllib.parse import SplitResult, urlsplit, urlunsplit

WORKER_SCHEMES = ("ws", "wss")
UPSTREAM_SCHEMES = ("http", "https")
BACKEND_SCHEMES = WORKER_SCHEMES + UPSTREAM_SCHEMES
# `dns+SCHEME://NAME:PORT/...`: NAME resolved again and again, one backend per address
# (discovery/). Only where the gateway configures backends (`--worker`, `[[backends]]`), not
# `POST /admin/workers` nor a worker's `--upstream`, which dial one address.
DNS_PREFIX = "dns+"
DISCOVERED_SCHEMES = tuple(DNS_PREFIX + scheme for scheme in BACKEND_SCHEMES)
CONFIGURED_SCHEMES = BACKEND_SCHEMES + DISCOVERED_SCHEMES

_FORMS = {
    "ws": "ws://HOST:PORT[/PATH]",
    "wss": "wss://HOST:PORT[/PATH]",
    "http": "http://HOST[:PORT]/PATH",
    "https": "https://HOST[:PORT]/PATH",
}
_KINDS = {"ws": "a worker", "wss": "", "http": "an OpenAI-compatible server", "https": ""}
_HOST_NAME = re.compile(r"[A-Za-z0-9._~-]+")
_USERINFO = re.compile(r"//[^/@]*@")


class BadURL(ValueError):
    """A URL that cannot be dialled; the message is one line, fit to print as is."""


def check_backend_url(url: str, schemes: Collection[str] = BACKEND_SCHEMES) -> str:
    """`url` itself when it is a backend the gateway can dial, else `BadURL`.

    Accepted: `ws(s)://HOST:PORT[/PATH]` (no user info: the worker token goes in a header)
    and `http(s)://HOST[:PORT][/PATH]` (user info allowed), without query or fragment; where
    `schemes` has them, the same prefixed with `dns+`, whose host is a name to resolve and
    whose port is required (an address has no port of its own to fall back on).
    """
    every = " or ".join(
        " ".join(filter(None, (_KINDS.get(scheme, ""), _form(scheme)))) for scheme in schemes
    )
    parts = _split(url, every)
    if parts.scheme not in schemes:
        raise BadURL(f"{_shown(url)}: expected {every}")
    discovered = parts.scheme.startswith(DNS_PREFIX)
    if discovered:
        parts = parts._replace(scheme=parts.scheme.removeprefix(DNS_PREFIX))
    expected = _form(parts.scheme)
    _check_host(url, parts, expected)
    port = _port(url, parts)
    if discovered:
        if port is None:
            raise BadURL(
                f"{_shown(url)}: a dns+ backend needs its port: {_form(DNS_PREFIX + parts.scheme)}"
            )
        if "[" in parts.netloc:
            raise BadURL(f"{_shown(url)}: a dns+ backend names a host to resolve, not an address")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise BadURL(f"{_shown(url)}: a backend URL has no query or fragment")
    if parts.scheme in WORKER_SCHEMES:
        if port is None:
            raise BadURL(f"{_shown(url)}: a worker URL needs its port: {expected}")
        if "@" in parts.netloc:
            raise BadURL(
                f"{_shown(url)}: a worker URL has no user info (give the token with --worker-token)"
            )
    return url


def is_discovered(url: str) -> bool:
    """Whether `url` names a DNS name to resolve into several backends (`dns+...`)."""
    return url.startswith(DNS_PREFIX)


def _form(scheme: str) -> str:
    if scheme.startswith(DNS_PREFIX):
        base = scheme.removeprefix(DNS_PREFIX)
        return DNS_PREFIX + _FORMS[base].replace("HOST[:PORT]", "NAME:PORT").replace(
            "HOST:PORT", "NAME:PORT"
        )
    return _FORMS[scheme]


def check_session_store_url(url: str) -> str:
    """`url` itself when it is `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, else `BadURL`."""
    expected = "redis://[:PASSWORD@]HOST:PORT/DB"
    parts = _split(url, expected)
    if parts.scheme != "redis":
        raise BadURL(f"{_shown(url)}: expected {expected}")
    _check_host(url, parts, expected)
    _port(url, parts)
    database = parts.path.strip("/")
    if database and not (database.isascii() and database.isdigit()):
        raise BadURL(f"{_shown(url)}: the database is a number, got {database!r}")
    return url


def redact(url: str) -> str:
    """The URL without user:password, fit for logs and for an engine's name."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _split(url: str, expected: str) -> SplitResult:
    if not url:
        raise BadURL(f"empty URL: expected {expected}")
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        raise BadURL(f"{_shown(url)}: a URL has no spaces or control characters")
    try:
        return urlsplit(url)
    except ValueError as error:  # e.g. an unclosed `[` of an IPv6 address
        raise BadURL(f"{_shown(url)}: {error}; expected {expected}") from None


def _check_host(url: str, parts: SplitResult, expected: str) -> None:
    host = parts.hostname
    if not host:
        raise BadURL(f"{_shown(url)}: no host; expected {expected}")
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise BadURL(f"{_shown(url)}: {host!r} is not an IPv6 address") from None
        return
    if host.isascii():
        valid = _HOST_NAME.fullmatch(host) is not None
    else:  # an internationalised name
        try:
            host.encode("idna")
            valid = True
        except UnicodeError:
            valid = False
    if not valid:
        raise BadURL(f"{_shown(url)}: {host!r} is not a host name or address")


def _port(url: str, parts: SplitResult) -> int | None:
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        written = parts.netloc.rsplit(":", 1)[-1]
        raise BadURL(f"{_shown(url)}: the port must be a number from 1 to 65535, got {written!r}")
    return port


def masked(url: str) -> str:
    """`url` with its user info (a password) as `****`, fit to print."""
    return _USERINFO.sub("//****@", url, count=1)


def _shown(url: str) -> str:
    """`url` quoted, any password masked."""
    return repr(masked(url))
