"""The ASGI application object, for `hypercorn --worker-class trio trio_gateway.app:app`.

Settings come from `TRIO_GATEWAY_*` and the TOML file named by `TRIO_GATEWAY_CONFIG`;
importing this module builds the gateway (no I/O: engines start with the ASGI lifespan),
configures logging from those settings as `trio-gateway serve` does (hypercorn sets up
only its own loggers; unless the process has configured logging itself), and puts the
gateway's faster socket write path into hypercorn (`http/socket_writes.py`).
"""

from __future__ import annotations

from trio_gateway.config import GatewayConfig, load_config
from trio_gateway.http import socket_writes
from trio_gateway.http.application import GatewayApp, create_app
from trio_gateway.logs import configure_logging_once

config: GatewayConfig = load_config()
configure_logging_once(config.log_level, config.log_format)
socket_writes.install()
app: GatewayApp = create_app(config)
