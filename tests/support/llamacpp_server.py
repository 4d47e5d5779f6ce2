"""A real engine for the tests: llama-cpp-python's OpenAI-compatible server on loopback.

`.ci/install_llamacpp.sh` puts the server in `.llamacpp/venv` and SmolLM2-135M-Instruct
(Q4_1) in `.llamacpp/models`; `TRIO_GATEWAY_LLAMACPP_PYTHON` and `TRIO_GATEWAY_LLAMACPP_MODEL`
point elsewhere. The session fixture `llamacpp_url` starts one server for the whole run, on an
ephemeral port, as model `smollm2`, and yields its base URL (`http://127.0.0.1:PORT/v1`).

Without the server or the model the fixture skips, unless TRIO_GATEWAY_REQUIRE_LLAMACPP=1
(as in CI), which makes their absence a failure. The server's log goes to a temporary file;
its end is shown when the server does not start and under every failed test that used it.

The server runs one request at a time: `--interrupt_requests false` makes the next wait
(llama-cpp-python's default ends the running stream early when another request arrives).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
INSTALL_DIR = REPO / ".llamacpp"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2"
STARTUP_TIMEOUT = 60.0  # the model loads in about a second
STOP_TIMEOUT = 10.0  # after SIGTERM, before SIGKILL
LOG_TAIL_BYTES = 8000

_log_path = pytest.StashKey[Path]()


def server_python() -> Path:
    return Path(
        os.environ.get("TRIO_GATEWAY_LLAMACPP_PYTHON") or INSTALL_DIR / "venv" / "bin" / "python"
    )


def model_path() -> Path:
    return Path(
        os.environ.get("TRIO_GATEWAY_LLAMACPP_MODEL") or INSTALL_DIR / "models" / MODEL_FILE
    )


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            return log.read().decode(errors="replace")
    except OSError as error:
        return f"(no log: {error})"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


@pytest.fixture(scope="session")
def llamacpp_url(request: pytest.FixtureRequest) -> Iterator[str]:
    python, model = server_python(), model_path()
    missing = [str(path) for path in (python, model) if not path.is_file()]
    if missing:
        message = (
            f"llama.cpp is not installed (no {', '.join(missing)}): run .ci/install_llamacpp.sh"
        )
        if os.environ.get("TRIO_GATEWAY_REQUIRE_LLAMACPP") == "1":
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    fd, name = tempfile.mkstemp(prefix="llamacpp-server-", suffix=".log")
    log_path = Path(name)
    request.config.stash[_log_path] = log_path
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen(
            [
                str(python),
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--model_alias",
                MODEL_ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_threads",
                "2",
                "--n_ctx",
                "2048",
                "--interrupt_requests",
                "false",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # llama.cpp's OpenMP threads spin at every barrier by default: with other
            # processes keeping both cores busy, a 12-token answer then took 10 s, not 0.5.
            env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _answers(url):
            if process.poll() is not None:
                pytest.fail(
                    f"the llama.cpp server exited with {process.returncode} before it "
                    f"answered; its log ({log_path}):\n{_log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the llama.cpp server did not answer GET {url}/models within "
                    f"{STARTUP_TIMEOUT:.0f} s; its log ({log_path}):\n{_log_tail(log_path)}"
                )
            time.sleep(0.1)
        yield url
    finally:
        _stop(process)
        del request.config.stash[_log_path]
        log_path.unlink(missing_ok=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under a failed test that used the server, the end of the server's log."""
    report = yield
    log_path = item.config.stash.get(_log_path, None)
    if report.failed and log_path is not None and "llamacpp_url" in item.fixturenames:  # type: ignore[attr-defined]
        report.sections.append((f"llama.cpp server log ({log_path})", _log_tail(log_path)))
    return report
