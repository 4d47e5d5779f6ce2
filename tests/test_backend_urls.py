"""Backend URLs are checked once, the same way for flags, environment, config file and
`POST /admin/workers`: a bad one is a one-line `ConfigError` or a 400, never a 500 or a
backend that redials nothing for ever."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.asgi_client import running_gateway
from tests.conftest import chat
from trio_gateway.backend_urls import (
    UPSTREAM_SCHEMES,
    BadURL,
    check_backend_url,
    check_session_store_url,
)
from trio_gateway.config import ConfigError, GatewayConfig, WorkerConfig, load_config

CHAT = "/v1/chat/completions"

BAD_URLS = [
    "http://",
    "http://127.0.0.1:notaport/v1",
    "https://:8000/v1",
    "http://127.0.0.1:0/v1",
    "http://127.0.0.1:65536/v1",
    "ws://",
    "ws://:9001",
    "ws://127.0.0.1",  # a worker's port is not implied
    "ws://127.0.0.1:99999",
    "ws://user:secret@127.0.0.1:9001",
    "wss://127.0.0.1",  # nor a secure one's
    "wss://user:secret@127.0.0.1:9443",
    "ftp://127.0.0.1/v1",
    "127.0.0.1:9001",
    "http://127.0.0.1:8001/v1?x=1",
    "http://127.0.0.1 :8001/v1",
    "http://[::1/v1",
    "http://exa<mple/v1",
]

GOOD_URLS = [
    "ws://127.0.0.1:9001",
    "ws://worker-0.workers:9001/",
    "ws://[::1]:9001/plane",
    "wss://worker-0.workers:9443",
    "http://127.0.0.1:8001/v1",
    "http://vllm/v1",
    "https://api.example.com/v1",
    "http://user:pass@[::1]:8001/v1",
]


@pytest.mark.parametrize("url", [*BAD_URLS, ""])
async def test_admin_api_refuses_a_bad_url_with_400(url: str) -> None:
    async with running_gateway() as harness:
        with trio.fail_after(10):
            answer = await harness.request("POST", "/admin/workers", {"url": url})
            assert answer.status == 400, answer.json()
            error = answer.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert error["param"] == "url"
            assert error["code"] == "invalid_url"
            assert isinstance(error["message"], str) and error["message"]
            listed = await harness.request("GET", "/admin/workers")
            assert [w["id"] for w in listed.json()["workers"]] == ["mock"]


async def test_admin_api_refuses_a_body_without_url() -> None:
    async with running_gateway() as harness:
        with trio.fail_after(10):
            for body in ({"url": 9001}, {}, ["ws://127.0.0.1:9001"]):
                answer = await harness.request("POST", "/admin/workers", body)
                assert answer.status == 400
                assert answer.json()["error"]["param"] == "url"


async def test_unknown_model_stays_404_after_a_refused_hostless_worker() -> None:
    async with running_gateway() as harness:
        with trio.fail_after(10):
            refused = await harness.request("POST", "/admin/workers", {"url": "ws://"})
            assert refused.status == 400
            unknown = await harness.request("POST", CHAT, chat(model="nope"))
            assert unknown.status == 404
            assert unknown.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("url", BAD_URLS)
def test_worker_flag_refuses_a_bad_url(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, overrides={"workers": [url]})
    message = str(raised.value)
    assert message.startswith("workers: ")
    assert "\n" not in message


@pytest.mark.parametrize("url", GOOD_URLS)
def test_worker_flag_takes_a_good_url(url: str) -> None:
    config = load_config(environ={}, overrides={"workers": [url]})
    assert config.workers == (url,)


def test_workers_environment_and_file_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^workers: .*'ws://'"):
        load_config(environ={"TRIO_GATEWAY_WORKERS": "ws://127.0.0.1:9001,ws://"})
    file = tmp_path / "gateway.toml"
    file.write_text('workers = ["http://127.0.0.1:notaport/v1"]\n')
    with pytest.raises(ConfigError, match=r"^workers: .*port"):
        load_config(file=file, environ={})
    with pytest.raises(ConfigError, match=r"^workers: "):
        GatewayConfig(workers=("http://",))


@pytest.mark.parametrize(
    "url", ["http://", "http://127.0.0.1:notaport/v1", "ws://127.0.0.1:9001", "vllm:8000"]
)
def test_worker_upstream_flag_refuses_a_bad_url(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(WorkerConfig, environ={}, overrides={"upstream": url})
    assert str(raised.value).startswith("upstream: ")
    assert "\n" not in str(raised.value)
    assert load_config(
        WorkerConfig, environ={}, overrides={"upstream": "http://127.0.0.1:8001/v1"}
    ).upstream == ("http://127.0.0.1:8001/v1")


@pytest.mark.parametrize(
    "url", ["redis://", "redis://:pw@:6379/0", "redis://h:notaport/0", "redis://h:6379/x"]
)
def test_session_store_url_is_checked(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^session_store: "):
        load_config(environ={}, overrides={"session_store": url})


@pytest.mark.parametrize("url", [*BAD_URLS, ""])
def test_check_backend_url_refuses(url: str) -> None:
    with pytest.raises(BadURL) as raised:
        check_backend_url(url)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("url", GOOD_URLS)
def test_check_backend_url_takes(url: str) -> None:
    assert check_backend_url(url) == url


def test_check_backend_url_masks_a_password_and_limits_schemes() -> None:
    with pytest.raises(BadURL) as raised:
        check_backend_url("http://user:hunter2@h:99999/v1")
    assert "hunter2" not in str(raised.value)
    assert "'99999'" in str(raised.value)
    with pytest.raises(BadURL, match="OpenAI-compatible"):
        check_backend_url("ws://127.0.0.1:9001", UPSTREAM_SCHEMES)
    assert check_session_store_url("redis://:pw@cache:6379/2") == "redis://:pw@cache:6379/2"
