"""A real redis-server on a loopback port, for the tests that share state between replicas.

redis-server comes from the system (Debian's package; `.ci/run` installs it). Without it these
tests skip, unless TRIO_GATEWAY_REQUIRE_REDIS=1 (as in CI), which makes its absence a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest


def start_redis(*extra: str) -> tuple[subprocess.Popen[bytes], int]:
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("TRIO_GATEWAY_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        pytest.skip("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):  # bounded: 200 x 25 ms
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return process, port
        except OSError:
            time.sleep(0.025)
    process.terminate()
    pytest.fail("redis-server did not start")
