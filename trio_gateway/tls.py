"""TLS contexts from the settings: the gateway dialling https/wss backends, a worker serving wss.

The gateway's own listener is hypercorn's (`cli.hypercorn_config` hands it the files), so
only the contexts hypercorn does not make are built here. Each builder reads its files at
start-up and turns a missing or bad file into a `ConfigError` naming the setting, so that a
typo is one line before anything listens, not a handshake failure per request later.

Both ends speak HTTP/1.1 only (ALPN `http/1.1`): the inference path, the socket-write fast
path and the worker plane are all written for it.
"""

from __future__ import annotations

import functools
import os
import ssl
from dataclasses import dataclass

from trio_gateway.config import ConfigError

ALPN = ["http/1.1"]


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """How the gateway checks a backend's certificate and proves its own identity.

    `ca_bundle` empty: the system's trust store (`ssl.create_default_context()`); set, that
    file (PEM) is the only trust. `client_cert`/`client_key`: a certificate for backends that
    require one (mTLS); the key may sit in the certificate's file. `setting` is the prefix of
    the settings these came from, for error messages.
    """

    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""
    setting: str = "upstream"

    def context(self) -> ssl.SSLContext:
        """A client context with hostname verification on (never turned off here). Made
        once for the same files as they are now (their modification times are part of the
        key) and shared: loading a trust store takes milliseconds on the event loop, and a
        `dns+` entry may add many members at once. A context may serve many connections."""
        return _shared_context(self, _files_stamp(self))

    def _make(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca_bundle or None)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"{self.setting}_ca_bundle: cannot load {self.ca_bundle}: {_reason(error)}"
            ) from None
        context.set_alpn_protocols(ALPN)
        if self.client_cert:
            try:
                context.load_cert_chain(self.client_cert, self.client_key or None)
            except (OSError, ssl.SSLError) as error:
                raise ConfigError(
                    f"{self.setting}_client_cert: cannot load {self.client_cert}"
                    f"{' with ' + self.client_key if self.client_key else ''}: {_reason(error)}"
                ) from None
        return context


def _files_stamp(tls: ClientTLS) -> tuple[float | None, ...]:
    stamps: list[float | None] = []
    for path in (tls.ca_bundle, tls.client_cert, tls.client_key):
        try:
            stamps.append(os.stat(path).st_mtime if path else None)
        except OSError:
            stamps.append(None)  # gone: `_make` says so, and nothing is cached
    return tuple(stamps)


@functools.lru_cache(maxsize=16)
def _shared_context(tls: ClientTLS, stamp: tuple[float | None, ...]) -> ssl.SSLContext:
    return tls._make()


def server_context(
    certfile: str, keyfile: str, ca_certs: str = "", password: str = ""
) -> ssl.SSLContext:
    """A server context for a worker's wss:// listener; with `ca_certs`, a client (the
    gateway) must present a certificate signed by it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    try:
        context.load_cert_chain(certfile, keyfile or None, password or None)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"certfile: cannot load {certfile} with {keyfile}: {_reason(error)}"
        ) from None
    if ca_certs:
        try:
            context.load_verify_locations(ca_certs)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"ca_certs: cannot load {ca_certs}: {_reason(error)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(error: OSError | ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    return error.strerror or str(error)
