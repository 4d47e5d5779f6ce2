"""Where settings come from, lowest first: defaults < a TOML file (`--config` or
`TRIO_GATEWAY_CONFIG`) < `TRIO_GATEWAY_*` variables < flags. Each field is a flag
(`mock_itl_ms` -> `--mock-itl-ms`) and a variable (`TRIO_GATEWAY_MOCK_ITL_MS`; a worker's
`TRIO_GATEWAY_WORKER_...`)."""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from trio_gateway.backends_config import BackendsError, parse_backends, resolve_keys
from trio_gateway.config.gateway import GatewayConfig
from trio_gateway.config.settings import ENV_PREFIX, WORKER_ENV_PREFIX, ConfigError
from trio_gateway.config.worker import WorkerConfig

SERVICE_LINK_SCHEMES = ("tcp://", "udp://", "sctp://")


def _convert(name: str, kind: type, raw: Any) -> Any:
    if kind is tuple:
        items = raw.split(",") if isinstance(raw, str) else raw
        if isinstance(items, list | tuple) and all(isinstance(item, str) for item in items):
            return tuple(item.strip() for item in items if item.strip())
        raise ConfigError(f"{name}: expected a list of strings, got {raw!r}")
    if isinstance(raw, kind) and not (kind is not bool and isinstance(raw, bool)):
        return raw
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if kind is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            return kind(text)
        except ValueError:
            pass
    raise ConfigError(f"{name}: expected {kind.__name__}, got {raw!r}")


_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "tuple[str, ...]": tuple}


Settings = TypeVar("Settings", "GatewayConfig", "WorkerConfig")


def _field_types(kind: type[Any]) -> dict[str, type]:
    """The settings given by flag and environment (not the file's `[[backends]]`)."""
    return {f.name: _TYPES[str(f.type)] for f in fields(kind) if not _file_only(f)}


def _file_only(f: Any) -> bool:
    return bool(f.metadata.get("file_only"))


def _env_prefix(kind: type[Any]) -> str:
    return WORKER_ENV_PREFIX if kind is WorkerConfig else ENV_PREFIX


def load_config(
    kind: type[Settings] | None = None,
    *,
    file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the sources; raise `ConfigError` with the offending key on a bad value."""
    settings: type[Any] = GatewayConfig if kind is None else kind
    prefix = _env_prefix(settings)
    types = _field_types(settings)
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    file = file or environ.get(prefix + "CONFIG") or None
    if file:
        try:
            document = tomllib.loads(Path(file).read_text())
        except OSError as error:
            raise ConfigError(f"config: cannot read {file}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config: {file} is not valid TOML: {error}") from None
        for key, raw in document.items():
            name = key.replace("-", "_")
            if name == "backends" and settings is GatewayConfig:
                try:
                    values[name] = resolve_keys(parse_backends(raw), environ, _read_text)
                except BackendsError as error:
                    raise ConfigError(str(error)) from None
                continue
            if name not in types:
                raise ConfigError(f"{key}: unknown setting in {file}")
            values[name] = _convert(key, types[name], raw)
    for name, field_type in types.items():
        env_name = prefix + name.upper()
        if env_name in environ:
            if environ[env_name].startswith(SERVICE_LINK_SCHEMES):
                # Kubernetes injects TRIO_GATEWAY_PORT=tcp://IP:PORT for a Service named
                # trio-gateway (docker --link did the same): not a setting of ours.
                continue
            values[name] = _convert(env_name, field_type, environ[env_name])
    for name, raw in (overrides or {}).items():
        if name not in types:
            raise ConfigError(f"{name}: unknown setting")
        if raw is not None:
            values[name] = _convert("--" + name.replace("_", "-"), types[name], raw)
    config: Settings = settings(**values)
    return config


def _read_text(path: str) -> str:
    return Path(path).read_text()


def setting_help(kind: type[Any], name: str) -> str:
    """What a setting is for; a worker's mock settings say what the gateway's say."""
    help_text: str = next(f for f in fields(kind) if f.name == name).metadata["help"]
    if not help_text and kind is not GatewayConfig:
        return setting_help(GatewayConfig, name)
    return help_text


def add_config_flags(parser: argparse.ArgumentParser, kind: type[Any] | None = None) -> None:
    """One flag per setting; unset flags stay None so lower-priority sources show through."""
    settings: type[Any] = GatewayConfig if kind is None else kind
    prefix = _env_prefix(settings)
    parser.add_argument("--config", help=f"TOML file of settings (also {prefix}CONFIG)")
    defaults = settings()
    for f in fields(settings):
        if _file_only(f):
            continue
        repeatable = _TYPES[str(f.type)] is tuple
        default = getattr(defaults, f.name)
        parser.add_argument(
            f.metadata.get("flag", "--" + f.name.replace("_", "-")),
            dest=f.name,
            default=None,
            action="append" if repeatable else "store",
            metavar=(f.name[:-1] if repeatable else str(f.type)).upper(),
            help=setting_help(settings, f.name)
            + (" (repeatable)" if repeatable else "")
            + f". Default {default!r}; env {prefix}{f.name.upper()}"
            + (" (comma-separated)" if repeatable else ""),
        )


def config_from_args(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    kind: type[Settings] | None = None,
) -> Settings:
    settings: type[Any] = GatewayConfig if kind is None else kind
    overrides = {f.name: getattr(args, f.name, None) for f in fields(settings) if not _file_only(f)}
    config: Settings = load_config(settings, file=args.config, environ=environ, overrides=overrides)
    return config
