"""Settings: defaults < TOML file < TRIO_GATEWAY_* < overrides, and errors that name the key."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from trio_gateway.config import (
    ENV_PREFIX,
    ConfigError,
    GatewayConfig,
    WorkerConfig,
    add_config_flags,
    config_from_args,
    load_config,
    setting_help,
)
from trio_gateway.router.policies import CacheAwareOptions

NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config(environ=NO_ENV)
    assert config == GatewayConfig()
    assert config.host == "127.0.0.1"
    assert config.port == 8000
    assert config.model == "mock"
    assert config.mock_ttft_ms == 5.0
    assert config.mock_itl_ms == 10.0
    assert config.mock_max_num_seqs == 256
    assert config.mock_tokens == 100
    assert config.max_model_len == 32768
    assert config.inactivity_timeout_s == 60.0
    assert config.stream_buffer == 64
    assert config.max_body_bytes == 4 * 1024 * 1024
    assert config.keep_alive_timeout_s == 5.0
    assert config.graceful_timeout_s == 5.0
    assert config.drain_timeout_s == 30.0
    assert config.api_keys == ()
    assert config.admin_token == ""
    assert config.backlog == 2048
    assert config.log_level == "info"


def test_config_is_frozen() -> None:
    config = GatewayConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


def test_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'host = "0.0.0.0"\nport = 9000\nmock_itl_ms = 2\nmock-ttft-ms = 1.5\n'
        'log_level = "DEBUG"\nmodel = "llama"\n',
    )
    config = load_config(file=path, environ=NO_ENV)
    assert config.host == "0.0.0.0"
    assert config.port == 9000
    assert config.mock_itl_ms == 2.0
    assert isinstance(config.mock_itl_ms, float)  # an int in TOML becomes a float
    assert config.mock_ttft_ms == 1.5  # dashed keys work too
    assert config.log_level == "DEBUG"
    assert config.model == "llama"
    assert config.backlog == 2048  # untouched


def test_file_path_as_string(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 9001\n")
    assert load_config(file=str(path), environ=NO_ENV).port == 9001


def test_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 9002\n")
    config = load_config(environ={ENV_PREFIX + "CONFIG": str(path)})
    assert config.port == 9002


def test_explicit_file_beats_config_env(tmp_path: Path) -> None:
    explicit = write(tmp_path, "port = 1111\n", "a.toml")
    from_env = write(tmp_path, "port = 2222\n", "b.toml")
    config = load_config(file=explicit, environ={ENV_PREFIX + "CONFIG": str(from_env)})
    assert config.port == 1111


def test_environment() -> None:
    environ = {
        "TRIO_GATEWAY_PORT": " 8123 ",
        "TRIO_GATEWAY_MOCK_ITL_MS": "0.5",
        "TRIO_GATEWAY_HOST": "::1",
        "TRIO_GATEWAY_LOG_LEVEL": "warning",
        "UNRELATED": "x",
        "PORT": "1",
    }
    config = load_config(environ=environ)
    assert config.port == 8123
    assert config.mock_itl_ms == 0.5
    assert config.host == "::1"
    assert config.log_level == "warning"


def test_overrides() -> None:
    config = load_config(environ=NO_ENV, overrides={"port": "7000", "mock_tokens": 3})
    assert config.port == 7000
    assert config.mock_tokens == 3


def test_none_overrides_are_ignored() -> None:
    config = load_config(environ={"TRIO_GATEWAY_PORT": "7001"}, overrides={"port": None})
    assert config.port == 7001


def test_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 1001\nbacklog = 11\nstream_buffer = 5\n")
    environ = {"TRIO_GATEWAY_BACKLOG": "22", "TRIO_GATEWAY_STREAM_BUFFER": "6"}
    config = load_config(file=path, environ=environ, overrides={"stream_buffer": "7"})
    assert config.mock_tokens == 100  # default
    assert config.port == 1001  # file over default
    assert config.backlog == 22  # env over file
    assert config.stream_buffer == 7  # override over env


def test_inactivity_timeout_property() -> None:
    assert GatewayConfig(inactivity_timeout_s=2.5).inactivity_timeout == 2.5
    assert GatewayConfig(inactivity_timeout_s=0).inactivity_timeout == math.inf
    assert load_config(environ={"TRIO_GATEWAY_INACTIVITY_TIMEOUT_S": "0"}).inactivity_timeout == (
        math.inf
    )


# --- bad values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"port": -1}, "port"),
        ({"port": 65536}, "port"),
        ({"mock_max_num_seqs": 0}, "mock_max_num_seqs"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"stream_buffer": 0}, "stream_buffer"),
        ({"backlog": -1}, "backlog"),
        ({"mock_ttft_ms": -1.0}, "mock_ttft_ms"),
        ({"mock_itl_ms": -1.0}, "mock_itl_ms"),
        ({"mock_itl_ms": 0.0}, "mock_itl_ms"),
        ({"mock_tokens": -1}, "mock_tokens"),
        ({"mock_prefix_block_tokens": 0}, "mock_prefix_block_tokens"),
        ({"mock_prefix_cache_blocks": -1}, "mock_prefix_cache_blocks"),
        ({"mock_prefill_ms_per_1k_tokens": -0.5}, "mock_prefill_ms_per_1k_tokens"),
        ({"inactivity_timeout_s": -0.5}, "inactivity_timeout_s"),
        ({"max_body_bytes": -1}, "max_body_bytes"),
        ({"keep_alive_timeout_s": -1.0}, "keep_alive_timeout_s"),
        ({"graceful_timeout_s": -1.0}, "graceful_timeout_s"),
        ({"model": ""}, "model"),
        ({"log_level": "loud"}, "log_level"),
    ],
)
def test_bad_values_name_the_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        GatewayConfig(**values)
    assert str(caught.value).startswith(key + ":")
    with pytest.raises(ConfigError) as caught:
        load_config(environ=NO_ENV, overrides=values)
    assert str(caught.value).startswith(key + ":")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mock_prefix_block_tokens": 0}, "mock_prefix_block_tokens: must be at least 1, got 0"),
        ({"mock_prefix_cache_blocks": -1}, "mock_prefix_cache_blocks: must not be negative"),
        ({"mock_prefill_ms_per_1k_tokens": -1.0}, "mock_prefill_ms_per_1k_tokens: must not be"),
    ],
)
def test_the_worker_checks_the_mock_prefix_cache_settings(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match="^" + message):
        WorkerConfig(**values)
    assert WorkerConfig(mock_prefix_block_tokens=1, mock_prefix_cache_blocks=0)


def test_mock_prefix_cache_settings_are_flags_and_env_of_serve_and_worker() -> None:
    flags = ["--mock-prefix-block-tokens", "32", "--mock-prefix-cache-blocks", "100"]
    for kind, env in ((GatewayConfig, ENV_PREFIX), (WorkerConfig, "TRIO_GATEWAY_WORKER_")):
        p = argparse.ArgumentParser()
        add_config_flags(p, kind)
        environ = {env + "MOCK_PREFILL_MS_PER_1K_TOKENS": "2.5"}
        config = config_from_args(p.parse_args(flags), environ, kind)
        assert (config.mock_prefix_block_tokens, config.mock_prefix_cache_blocks) == (32, 100)
        assert config.mock_prefill_ms_per_1k_tokens == 2.5
        defaults = kind()
        assert (defaults.mock_prefix_block_tokens, defaults.mock_prefix_cache_blocks) == (16, 8192)
        assert defaults.mock_prefill_ms_per_1k_tokens == 0.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"routing_policy": "cache-aware"}, "routing_policy: unknown 'cache-aware'"),
        ({"cache_aware_threshold": -0.1}, "cache_aware_threshold: must be between 0 and 1"),
        ({"cache_aware_threshold": 1.5}, "cache_aware_threshold: must be between 0 and 1"),
        ({"cache_aware_balance_abs": -1}, "cache_aware_balance_abs: must not be negative"),
        ({"cache_aware_balance_rel": 0.9}, "cache_aware_balance_rel: must be at least 1"),
        ({"cache_aware_block_chars": 0}, "cache_aware_block_chars: must be at least 1"),
        ({"cache_aware_capacity_blocks": 0}, "cache_aware_capacity_blocks: must be at least 1"),
        ({"cache_aware_ttl_s": 0.0}, "cache_aware_ttl_s: must be above 0"),
        ({"cache_aware_load_factor": 0.99}, "cache_aware_load_factor: must be 0 .off. or at"),
        ({"cache_aware_load_factor": -1.0}, "cache_aware_load_factor: must be 0 .off. or at"),
    ],
)
def test_cache_aware_settings_are_checked(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message):
        GatewayConfig(**values)


def test_cache_aware_settings() -> None:
    defaults = GatewayConfig()
    assert defaults.cache_aware() == CacheAwareOptions()
    assert (
        defaults.cache_aware_threshold,
        defaults.cache_aware_balance_abs,
        defaults.cache_aware_balance_rel,
    ) == (0.3, 64, 1.5)
    assert (defaults.cache_aware_block_chars, defaults.cache_aware_capacity_blocks) == (
        256,
        16384,
    )
    assert defaults.cache_aware_ttl_s == 600.0
    assert defaults.cache_aware_load_factor == 1.5
    assert GatewayConfig(cache_aware_load_factor=0).cache_aware().load_factor == 0
    assert GatewayConfig(cache_aware_load_factor=1).cache_aware().load_factor == 1
    edges = GatewayConfig(
        cache_aware_threshold=1.0,
        cache_aware_balance_abs=0,
        cache_aware_balance_rel=1.0,
        cache_aware_block_chars=1,
        cache_aware_capacity_blocks=1,
    )
    assert edges.cache_aware_threshold == 1.0
    p = argparse.ArgumentParser()
    add_config_flags(p)
    flags = ["--routing-policy", "cache_aware", "--cache-aware-threshold", "0.6"]
    flags += ["--cache-aware-load-factor", "2"]
    environ = {ENV_PREFIX + "CACHE_AWARE_BLOCK_CHARS": "128"}
    config = config_from_args(p.parse_args(flags), environ)
    assert config.routing_policy == "cache_aware"
    assert config.cache_aware() == CacheAwareOptions(
        threshold=0.6, load_factor=2.0, block_chars=128
    )


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_boundaries_are_accepted() -> None:
    config = GatewayConfig(
        port=65535,
        mock_max_num_seqs=1,
        max_model_len=1,
        stream_buffer=1,
        backlog=1,
        mock_ttft_ms=0.0,
        mock_tokens=0,
        mock_prefix_block_tokens=1,
        mock_prefix_cache_blocks=0,
        mock_prefill_ms_per_1k_tokens=0.0,
        inactivity_timeout_s=0.0,
        max_body_bytes=0,
        log_level="CRITICAL",
    )
    assert (config.port, config.mock_tokens, config.log_level) == (65535, 0, "CRITICAL")


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("PORT", "eighty"),
        ("PORT", "80.5"),
        ("PORT", ""),
        ("MOCK_ITL_MS", "fast"),
        ("MOCK_TOKENS", "1e3"),
    ],
)
def test_env_bad_type_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={ENV_PREFIX + name: raw})
    message = str(caught.value)
    assert message.startswith(ENV_PREFIX + name + ": expected ")
    assert repr(raw) in message


def test_env_bad_value_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^port: must be between 0 and 65535, got -1$"):
        load_config(environ={"TRIO_GATEWAY_PORT": "-1"})


def test_port_zero_asks_for_an_ephemeral_port() -> None:
    assert load_config(environ={"TRIO_GATEWAY_PORT": "0"}).port == 0


def test_api_keys_from_env_file_and_flags(tmp_path: Path) -> None:
    keys_file = write(tmp_path, "k3\n\n  k4  \n", "keys.txt")
    config = load_config(
        environ={"TRIO_GATEWAY_API_KEYS": "k1, k2", "TRIO_GATEWAY_API_KEYS_FILE": str(keys_file)}
    )
    assert config.api_keys == ("k1", "k2")
    assert config.accepted_api_keys() == {"k1", "k2", "k3", "k4"}
    args = parser().parse_args(["--api-key", "a", "--api-key", "b"])
    assert config_from_args(args, environ={}).api_keys == ("a", "b")
    assert "k1" not in repr(config)


def test_unreadable_api_keys_file_names_the_key(tmp_path: Path) -> None:
    config = load_config(environ={"TRIO_GATEWAY_API_KEYS_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"^api_keys_file: cannot read"):
        config.accepted_api_keys()


def test_api_keys_must_be_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "api_keys = [1, 2]\n")
    with pytest.raises(ConfigError, match=r"^api_keys: expected a list of strings"):
        load_config(file=str(path), environ={})


@pytest.mark.parametrize(
    ("text", "key", "kind"),
    [
        ("port = 80.0\n", "port", "int"),
        ("port = true\n", "port", "int"),
        ("mock_itl_ms = true\n", "mock_itl_ms", "float"),
        ("host = 5\n", "host", "str"),
        ("mock-tokens = [1]\n", "mock-tokens", "int"),
        ("log_level = { a = 1 }\n", "log_level", "str"),
    ],
)
def test_file_bad_type_names_the_key(tmp_path: Path, text: str, key: str, kind: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(file=write(tmp_path, text), environ=NO_ENV)
    assert str(caught.value).startswith(f"{key}: expected {kind}, got ")


def test_file_strings_are_converted_like_env_values(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = "80"\nmock_itl_ms = " 2.5 "\n')
    config = load_config(file=path, environ=NO_ENV)
    assert (config.port, config.mock_itl_ms) == (80, 2.5)


def test_override_bad_type_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--mock-max-num-seqs: expected int, got 'lots'$"):
        load_config(environ=NO_ENV, overrides={"mock_max_num_seqs": "lots"})


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 1\nturbo = true\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file=path, environ=NO_ENV)
    assert str(caught.value) == f"turbo: unknown setting in {path}"


def test_table_in_file_is_an_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"^server: unknown setting"):
        load_config(file=path, environ=NO_ENV)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(file=missing, environ=NO_ENV)
    assert str(caught.value) == f"config: cannot read {missing}: No such file or directory"
    assert caught.value.__cause__ is None


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: cannot read .*: Is a directory$"):
        load_config(file=tmp_path, environ=NO_ENV)


def test_missing_file_from_environment(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"^config: cannot read"):
        load_config(environ={"TRIO_GATEWAY_CONFIG": str(missing)})


@pytest.mark.parametrize("text", ["port = \n", "port 8000\n", "[unclosed\n", 'host = "a\n'])
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(file=path, environ=NO_ENV)
    assert str(caught.value).startswith(f"config: {path} is not valid TOML: ")
    assert caught.value.__cause__ is None


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(file=write(tmp_path, ""), environ=NO_ENV) == GatewayConfig()


def test_file_value_checked_after_merge(tmp_path: Path) -> None:
    # A bad file value is fine when a later source replaces it.
    path = write(tmp_path, "port = 0\n")
    assert load_config(file=path, environ={"TRIO_GATEWAY_PORT": "8080"}).port == 8080


@pytest.mark.parametrize("name", ["MOCK_ITL_MS", "MOCK_TTFT_MS", "INACTIVITY_TIMEOUT_S"])
def test_nan_is_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match=name.lower()):
        load_config(environ={ENV_PREFIX + name: "nan"})


# --- argparse -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_flags(p)
    return p


def test_flags_default_to_none_so_other_sources_show() -> None:
    args = parser().parse_args([])
    assert args.config is None
    flagged = [f for f in dataclasses.fields(GatewayConfig) if f.name != "backends"]
    assert all(getattr(args, f.name) is None for f in flagged)
    assert not hasattr(args, "backends")  # the file's [[backends]] has no flag
    config = config_from_args(args, environ={"TRIO_GATEWAY_PORT": "8500"})
    assert config.port == 8500


def test_flags_win(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 1\nmock_itl_ms = 3\n")
    args = parser().parse_args(
        ["--config", str(path), "--port", "8600", "--mock-ttft-ms", "0.25", "--log-level", "error"]
    )
    config = config_from_args(args, environ={"TRIO_GATEWAY_PORT": "2"})
    assert config.port == 8600
    assert config.mock_itl_ms == 3.0
    assert config.mock_ttft_ms == 0.25
    assert config.log_level == "error"


def test_bad_flag_value_names_the_flag() -> None:
    args = parser().parse_args(["--stream-buffer", "big"])
    with pytest.raises(ConfigError, match=r"^--stream-buffer: expected int"):
        config_from_args(args, environ=NO_ENV)


def test_check_config_prints_settings_with_secrets_masked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_gateway.cli import main

    monkeypatch.setenv("TRIO_GATEWAY_API_KEYS", "sk-one,sk-two")
    assert main(["check-config", "--port", "9100", "--admin-token", "hush"]) == 0
    out = capsys.readouterr().out
    assert "port = 9100" in out
    assert 'api_keys = ["****", "****"]' in out
    assert 'admin_token = "****"' in out
    assert "sk-one" not in out and "hush" not in out


def test_check_config_bad_value_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_gateway.cli import main

    monkeypatch.setenv("TRIO_GATEWAY_MOCK_ITL_MS", "fast")
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert err == "trio-gateway: TRIO_GATEWAY_MOCK_ITL_MS: expected float, got 'fast'\n"


def test_kubernetes_service_link_variables_are_not_settings() -> None:
    environ = {
        "TRIO_GATEWAY_PORT": "tcp://10.0.0.7:8000",
        "TRIO_GATEWAY_PORT_8000_TCP": "tcp://10.0.0.7:8000",
        "TRIO_GATEWAY_MOCK_ITL_MS": "2",
    }
    config = load_config(environ=environ)
    assert config.port == 8000 and config.mock_itl_ms == 2.0


def test_check_config_hides_a_redis_password(capsys: pytest.CaptureFixture[str]) -> None:
    from trio_gateway.cli import main

    assert main(["check-config", "--session-store", "redis://:pw123@cache:6379/2"]) == 0
    out = capsys.readouterr().out
    assert 'session_store = "redis://****@cache:6379/2"' in out
    assert "pw123" not in out


@pytest.mark.parametrize("kind", [GatewayConfig, WorkerConfig])
def test_every_flag_says_what_it_is_for(kind: type[Any]) -> None:
    """`--help` describes each setting, not only its default and its variable."""
    parser = argparse.ArgumentParser()
    add_config_flags(parser, kind)
    by_dest = {action.dest: action.help or "" for action in parser._actions}
    for f in dataclasses.fields(kind):
        description = setting_help(kind, f.name)
        assert len(description) > 10, f.name
        if f.metadata.get("file_only"):
            assert f.name not in by_dest, f.name
            continue
        assert by_dest[f.name].startswith(description), f.name
        assert "Default" in by_dest[f.name], f.name


def test_otlp_endpoint_is_off_by_default_and_must_be_an_http_url() -> None:
    assert GatewayConfig().otlp_endpoint == ""
    environ = {ENV_PREFIX + "OTLP_ENDPOINT": "http://collector:4318"}
    assert load_config(environ=environ).otlp_endpoint == "http://collector:4318"
    for bad in ("collector:4318", "grpc://collector:4317", "http://"):
        with pytest.raises(ConfigError, match="otlp_endpoint"):
            GatewayConfig(otlp_endpoint=bad)
