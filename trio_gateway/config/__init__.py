"""Settings: `GatewayConfig` (`serve`) and `WorkerConfig` (`worker`), frozen dataclasses
filled from defaults, a TOML file, `TRIO_GATEWAY_*` variables and flags, later sources
winning (`sources.py`); `settings.py` is what a field is made of."""

from trio_gateway.config.gateway import GatewayConfig
from trio_gateway.config.settings import (
    BODY_READ_S_PER_MIB,
    ENV_PREFIX,
    MIB,
    WORKER_ENV_PREFIX,
    ConfigError,
    setting,
)
from trio_gateway.config.sources import (
    SERVICE_LINK_SCHEMES,
    Settings,
    add_config_flags,
    config_from_args,
    load_config,
    setting_help,
)
from trio_gateway.config.worker import WorkerConfig

__all__ = [
    "BODY_READ_S_PER_MIB",
    "ENV_PREFIX",
    "MIB",
    "SERVICE_LINK_SCHEMES",
    "WORKER_ENV_PREFIX",
    "ConfigError",
    "GatewayConfig",
    "Settings",
    "WorkerConfig",
    "add_config_flags",
    "config_from_args",
    "load_config",
    "setting",
    "setting_help",
]
