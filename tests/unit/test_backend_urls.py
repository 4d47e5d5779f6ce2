"""Backend URLs are checked once, the same way for flags, environment, config file and
`POST /admin/workers`: a bad one is a one-line `ConfigError` or a 400, never a 500 or a
backend that redials nothing for ever."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.backend_url_cases import BAD_URLS, GOOD_URLS
from trio_gateway.backend_urls import (
    CONFIGURED_SCHEMES,
    UPSTREAM_SCHEMES,
    BadURL,
    check_backend_url,
    check_session_store_url,
    is_discovered,
)
from trio_gateway.config import ConfigError, GatewayConfig, WorkerConfig, load_config


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


@pytest.mark.parametrize(
    "url",
    [
        "dns+ws://trio-gateway-worker:9001",
        "dns+wss://trio-gateway-worker:9443",
        "dns+http://vllm:8000/v1",
        "dns+https://user:pw@vllm.ns.svc.cluster.local:8443/v1",
    ],
)
def test_dns_urls_are_taken_where_backends_are_configured(url: str) -> None:
    assert check_backend_url(url, CONFIGURED_SCHEMES) == url
    assert is_discovered(url)
    config = load_config(environ={}, overrides={"workers": [url]})
    assert config.workers == (url,)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("dns+http://vllm/v1", "a dns+ backend needs its port: dns+http://NAME:PORT/PATH"),
        ("dns+ws://trio-gateway-worker", "needs its port: dns+ws://NAME:PORT[/PATH]"),
        ("dns+http://[::1]:8000/v1", "names a host to resolve, not an address"),
        ("dns+redis://cache:6379", "expected"),
        ("dns+ws://token@w:9001", "no user info"),
    ],
)
def test_a_bad_dns_url_is_one_line(url: str, message: str) -> None:
    with pytest.raises(BadURL, match=re.escape(message)) as raised:
        check_backend_url(url, CONFIGURED_SCHEMES)
    assert "\n" not in str(raised.value) and "pw" not in str(raised.value)


def test_dns_urls_only_where_backends_are_configured() -> None:
    """`POST /admin/workers` and a worker's `--upstream` dial one address: no dns+ there."""
    assert not is_discovered("ws://w:9001")
    with pytest.raises(BadURL, match="expected"):
        check_backend_url("dns+ws://w:9001")
    with pytest.raises(ConfigError, match=r"^upstream: "):
        load_config(WorkerConfig, environ={}, overrides={"upstream": "dns+http://vllm:8000/v1"})


def test_the_refresh_interval_is_a_positive_setting() -> None:
    assert GatewayConfig().dns_refresh_s == 5.0
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match=r"^dns_refresh_s: must be above 0"):
            GatewayConfig(dns_refresh_s=bad)
