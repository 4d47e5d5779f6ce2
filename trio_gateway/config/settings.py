"""What every setting is made of: a dataclass field with its `--help` text, and the one
error a bad value raises."""

from __future__ import annotations

from dataclasses import field
from typing import Any, TypeVar

_Default = TypeVar("_Default")
ENV_PREFIX = "TRIO_GATEWAY_"
WORKER_ENV_PREFIX = "TRIO_GATEWAY_WORKER_"
MIB = 1024 * 1024
BODY_READ_S_PER_MIB = 2.0  # how `body_read_timeout_s` grows with a body's size


def setting(default: _Default, help: str, *, secret: bool = False, flag: str = "") -> _Default:
    """A field with its `--help` text; a secret is left out of the repr (and so of logs)."""
    metadata = {"help": help, "flag": flag} if flag else {"help": help}
    return field(default=default, repr=not secret, metadata=metadata)


class ConfigError(ValueError):
    """A bad setting; its message names the key and is meant to be printed as is."""


def check_logging(level: str, log_format: str) -> None:
    if level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError(f"log_level: unknown level {level!r}")
    if log_format not in ("text", "json"):
        raise ConfigError(f"log_format: expected text or json, got {log_format!r}")


def check_tls_settings(config: Any) -> None:
    """The listener's TLS files come as a pair; the others need that pair. (Whether the files
    load is checked where they are used, at start-up: `tls.py`, hypercorn.)"""
    if bool(config.certfile) != bool(config.keyfile):
        given, missing = ("certfile", "keyfile") if config.certfile else ("keyfile", "certfile")
        raise ConfigError(f"{given}: given without {missing} (TLS needs both)")
    for name in ("ca_certs", "keyfile_password"):
        if getattr(config, name) and not config.certfile:
            raise ConfigError(f"{name}: only with certfile and keyfile (TLS)")
