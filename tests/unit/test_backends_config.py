"""The `[[backends]]` section: parsing, one-line errors naming the key, keys from the
environment or a file (never shown), `--worker` URLs as unnamed entries, and the diff a
reload applies. Pure: no socket, no trio."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from trio_gateway.backends_config import (
    BackendsError,
    BackendSpec,
    diff_backends,
    parse_backends,
    resolve_keys,
    served_names,
    specs_from_urls,
)
from trio_gateway.cli import effective_settings, main
from trio_gateway.config import ConfigError, GatewayConfig, load_config

EXAMPLE = """
[[backends]]
name = "vllm-a"
url = "http://10.0.0.1:8000/v1"
api_key_env = "VLLM_KEY"
capacity = 128
weight = 2
aliases = { llama = "meta-llama/Llama-3.1-8B-Instruct" }
max_model_len = { llama = 8192 }

[[backends]]
name = "worker-1"
url = "ws://10.0.0.3:9001"
models = ["mock"]
"""


def parsed(text: str) -> tuple[BackendSpec, ...]:
    return parse_backends(tomllib.loads(text)["backends"])


def entry(**fields: Any) -> list[dict[str, Any]]:
    return [{"name": "b", "url": "http://10.0.0.1:8000/v1", **fields}]


def test_a_worked_example_parses() -> None:
    upstream, worker = parsed(EXAMPLE)
    assert upstream.name == "vllm-a" and upstream.capacity == 128 and upstream.weight == 2
    assert upstream.alias_map() == {"llama": "meta-llama/Llama-3.1-8B-Instruct"}
    assert upstream.backend_models() == ("meta-llama/Llama-3.1-8B-Instruct",)
    assert upstream.context_lengths() == {"llama": 8192}
    assert not upstream.is_worker and upstream.declares_models
    assert worker.is_worker and worker.models == ("mock",) and worker.weight == 1
    assert worker.capacity is None  # the worker's hello says


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"backends": {}}, "backends: expected an array of tables"),
        (entry(url=None), "backends[0].url: required"),
        ([{"url": "http://h:1/v1"}], "backends[0].name: required"),
        (entry(url="ftp://h/v1"), "backends[0].url: 'ftp://h/v1': expected"),
        (entry(api_key="sk-1"), "backends[0].api_key: a key is never written in the file"),
        (entry(apikey_env="K"), "backends[0].apikey_env: unknown key"),
        (entry(api_key_env="A", api_key_file="/f"), "backends[0].api_key_file: give"),
        (entry(capacity=0), "backends[0].capacity: expected a whole number of at least 1"),
        (entry(weight=1.5), "backends[0].weight: expected a whole number"),
        (entry(weight=True), "backends[0].weight: expected a whole number"),
        (entry(models="m"), "backends[0].models: expected a list of model names"),
        (entry(models=["m", "m"]), "backends[0].models: a model is listed twice"),
        (entry(aliases={"a": 1}), "backends[0].aliases.a: expected a model name"),
        (entry(models=["a"], aliases={"a": "x"}), "backends[0].aliases.a: 'a' is also in"),
        (entry(max_model_len={"m": 0}), "backends[0].max_model_len.m: must be at least 1"),
        (entry(models=["m"], max_model_len={"x": 9}), "backends[0].max_model_len.x: not a model"),
        (
            [{"name": "w", "url": "ws://h:9001", "aliases": {"a": "b"}}],
            "backends[0].aliases: only an http(s) upstream takes aliases",
        ),
        (entry() + entry(), "backends[1].name: 'b' is already the name of a backend"),
    ],
)
def test_a_bad_entry_is_one_line_naming_its_key(raw: Any, message: str) -> None:
    if isinstance(raw, dict):
        raw = raw["backends"]
    with pytest.raises(BackendsError) as caught:
        parse_backends(raw)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_keys_come_from_the_environment_or_a_file_and_are_never_shown(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    specs = parse_backends(
        entry(name="e", api_key_env="KEY") + entry(name="f", api_key_file=str(key_file))
    )
    env_spec, file_spec = resolve_keys(specs, {"KEY": "sk-from-env"}, lambda p: Path(p).read_text())
    assert env_spec.api_key == "sk-from-env" and file_spec.api_key == "sk-from-file"
    for spec in (env_spec, file_spec):
        assert "sk-from" not in repr(spec)
        assert "sk-from" not in str(spec.described())


def test_a_missing_key_is_named() -> None:
    specs = parse_backends(entry(api_key_env="NOPE") + entry(name="c", api_key_file="/no/such"))
    with pytest.raises(BackendsError, match=r"^backends\[0\].api_key_env: NOPE is not set$"):
        resolve_keys(specs, {}, lambda p: Path(p).read_text())
    with pytest.raises(BackendsError, match=r"^backends\[1\].api_key_file: cannot read /no/such"):
        resolve_keys(specs, {"NOPE": "k"}, lambda p: Path(p).read_text())
    with pytest.raises(BackendsError, match="the key of 'b' is empty"):
        resolve_keys(specs[:1], {"NOPE": " "}, lambda p: "")


def test_served_names_put_aliases_in_place_of_their_targets() -> None:
    aliases = {"llama": "meta/llama-8b", "fast": "meta/llama-8b", "big": "meta/llama-70b"}
    assert served_names(["meta/llama-8b", "other"], aliases) == ("llama", "fast", "other")
    assert served_names(["a"], {}) == ("a",)


def test_worker_urls_are_unnamed_backends_named_by_their_url() -> None:
    (worker, upstream) = specs_from_urls(["ws://h:9001", "http://u:pw@h:8000/v1"])
    assert worker.name == "ws://h:9001" and worker.from_flags
    assert upstream.name == "http://h:8000/v1"  # no password in a metrics label


def test_the_diff_is_by_name() -> None:
    a, b, c = (BackendSpec(name=n, url=f"http://{n}:1/v1") for n in "abc")
    b2 = BackendSpec(name="b", url="http://b:1/v1", weight=3)
    diff = diff_backends([a, b], [b2, c])
    assert [s.name for s in diff.added] == ["c"]
    assert [s.name for s in diff.removed] == ["a"]
    assert diff.changed == (b2,)
    assert diff.unchanged == ()
    assert diff.summary() == "added c; removed a; changed b"
    same = diff_backends([a, b], [a, b])
    assert same.empty and same.unchanged == ("a", "b") and same.summary() == "no change"


def test_a_rotated_key_is_a_change() -> None:
    old = BackendSpec(name="a", url="http://a:1/v1", api_key_env="K", api_key="one")
    new = BackendSpec(name="a", url="http://a:1/v1", api_key_env="K", api_key="two")
    assert diff_backends([old], [new]).changed == (new,)


def test_the_config_file_holds_backends_beside_flags(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('routing_policy = "round_robin"\n' + EXAMPLE)
    config = load_config(
        file=path, environ={"VLLM_KEY": "sk-1"}, overrides={"workers": ["ws://h:9002"]}
    )
    names = [spec.name for spec in config.backend_specs()]
    assert names == ["vllm-a", "worker-1", "ws://h:9002"]
    assert config.backends[0].api_key == "sk-1"


def test_a_flag_worker_may_not_take_a_configured_name(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[[backends]]\nname = "ws://h:9002"\nurl = "ws://h:9002"\n')
    with pytest.raises(ConfigError, match=r"^workers: 'ws://h:9002' is already the name"):
        load_config(file=path, environ={}, overrides={"workers": ["ws://h:9002"]})


def test_backends_are_not_a_worker_setting(tmp_path: Path) -> None:
    from trio_gateway.config import WorkerConfig

    path = tmp_path / "worker.toml"
    path.write_text(EXAMPLE)
    with pytest.raises(ConfigError, match=r"^backends: unknown setting"):
        load_config(WorkerConfig, file=path, environ={})


def test_check_config_prints_backends_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(EXAMPLE.replace("10.0.0.1", "user:pw@10.0.0.1"))
    monkeypatch.setenv("VLLM_KEY", "sk-secret")
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sk-secret" not in out and ":pw@" not in out
    # What it prints is a config file again: the same backends, read back.
    monkeypatch.setenv("TRIO_GATEWAY_CONFIG", "")
    printed = tomllib.loads(out)
    assert [b["name"] for b in printed["backends"]] == ["vllm-a", "worker-1"]
    assert printed["backends"][0]["url"] == "http://****@10.0.0.1:8000/v1"
    assert printed["backends"][0]["api_key_env"] == "VLLM_KEY"
    assert printed["backends"][0]["aliases"] == {"llama": "meta-llama/Llama-3.1-8B-Instruct"}


def test_check_config_refuses_a_bad_backend_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[[backends]]\nname = "a"\nurl = "http://h:1/v1"\nweight = 0\n')
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trio-gateway: backends[0].weight: expected a whole number")
    assert "\n" not in err


def test_effective_settings_without_backends_has_no_table() -> None:
    assert "[[backends]]" not in effective_settings(GatewayConfig())
