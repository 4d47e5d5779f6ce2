"""`trio-gateway worker` as a child process, up once it has said where its request plane listens."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio


@asynccontextmanager
async def worker_process(worker_id: str) -> AsyncIterator[tuple[trio.Process, int]]:
    exe = Path(sys.executable).parent / "trio-gateway"
    command = [
        str(exe),
        "worker",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--worker-id",
        worker_id,
        "--token",
        "secret",
    ]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, stderr=subprocess.PIPE, check=False)
        )
        try:
            assert process.stderr is not None
            seen = b""
            with trio.fail_after(20):
                while (match := re.search(rb"request plane ws://127\.0\.0\.1:(\d+)", seen)) is None:
                    data = await process.stderr.receive_some()
                    assert data, seen.decode(errors="replace")
                    seen += data
            nursery.start_soon(_drain, process.stderr)
            yield process, int(match.group(1))
        finally:
            if process.returncode is None:
                process.kill()


async def _drain(pipe: trio.abc.ReceiveStream) -> None:
    while await pipe.receive_some():
        pass
