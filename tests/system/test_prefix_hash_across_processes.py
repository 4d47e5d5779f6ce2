"""Block hashes do not depend on the interpreter's hash seed: replicas in other processes
agree on them."""

from __future__ import annotations

import subprocess
import sys

from trio_gateway.router.prefix_index import block_hashes


def test_block_hashes_are_the_same_in_another_process() -> None:
    code = (
        "from trio_gateway.router.prefix_index import block_hashes;"
        "print(block_hashes('the same system prompt ' * 40, 64, seed='m'))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert runs == {f"{block_hashes('the same system prompt ' * 40, 64, seed='m')}\n"}
