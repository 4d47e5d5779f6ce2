"""A child of `serve --processes N` runs with the parent's settings, one process, on a shared
port, watching its supervisor's pid."""

from __future__ import annotations

import os

from trio_gateway.processes import child_argv


def test_children_run_the_same_settings_as_one_process_on_a_shared_port() -> None:
    argv = child_argv(["serve", "--processes", "4", "--port", "9000"])
    assert argv[-6:] == [
        *("--processes", "1", "--reuse-port", "true"),
        *("--supervisor-pid", str(os.getpid())),
    ]
    assert argv[argv.index("--port") : argv.index("--port") + 2] == ["--port", "9000"]
