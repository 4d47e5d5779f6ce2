"""What a set of resolved addresses means for a `dns+` entry: pure code, no resolver."""

from __future__ import annotations

import pytest

from trio_gateway.backends_config import BackendSpec, parse_backends
from trio_gateway.discovery.members import (
    AddressDiff,
    DnsName,
    diff_addresses,
    dns_name,
    member_name,
    member_spec,
    member_specs,
    member_url,
)


def test_the_diff_of_two_address_sets() -> None:
    diff = diff_addresses(frozenset({"10.0.0.1", "10.0.0.2"}), frozenset({"10.0.0.2", "10.0.0.3"}))
    assert diff == AddressDiff(appeared=frozenset({"10.0.0.3"}), vanished=frozenset({"10.0.0.1"}))
    assert not diff.empty
    assert diff.summary() == "appeared 10.0.0.3; vanished 10.0.0.1"
    same = diff_addresses(frozenset({"10.0.0.1"}), frozenset({"10.0.0.1"}))
    assert same.empty and same.summary() == "no change"
    first = diff_addresses(frozenset(), frozenset({"10.0.0.10", "10.0.0.9"}))
    assert first.summary() == "appeared 10.0.0.9, 10.0.0.10"  # numeric order


@pytest.mark.parametrize(
    ("url", "address", "expected"),
    [
        ("dns+http://vllm:8000/v1", "10.1.2.3", "http://10.1.2.3:8000/v1"),
        ("dns+ws://trio-gateway-worker:9001", "10.1.2.3", "ws://10.1.2.3:9001"),
        ("dns+https://u:pw@vllm.ns:8443/v1", "fd00::5", "https://u:pw@[fd00::5]:8443/v1"),
    ],
)
def test_a_member_dials_the_address_with_the_rest_of_the_url(
    url: str, address: str, expected: str
) -> None:
    assert member_url(url, address) == expected


def test_a_member_is_its_entry_at_one_address() -> None:
    (entry,) = parse_backends(
        [
            {
                "name": "vllm",
                "url": "dns+http://vllm:8000/v1",
                "capacity": 64,
                "weight": 2,
                "aliases": {"chat": "meta-llama/Llama-3.1-8B-Instruct"},
                "max_model_len": {"chat": 8192},
            }
        ]
    )
    assert entry.discovered and not entry.is_worker
    assert dns_name(entry.url) == DnsName("vllm", 8000)
    member = member_spec(entry, "10.0.0.5")
    assert member.name == "vllm/10.0.0.5:8000" == member_name("vllm", "10.0.0.5", 8000)
    assert member.url == "http://10.0.0.5:8000/v1" and not member.discovered
    assert member.member_of == "vllm" and member.host_name == "vllm"
    assert (member.capacity, member.weight, member.aliases, member.max_model_len) == (
        entry.capacity,
        entry.weight,
        entry.aliases,
        entry.max_model_len,
    )
    assert member_name("vllm", "fd00::5", 8000) == "vllm/[fd00::5]:8000"
    names = [m.name for m in member_specs(entry, {"10.0.0.10", "10.0.0.9"})]
    assert names == ["vllm/10.0.0.9:8000", "vllm/10.0.0.10:8000"]


def test_a_dns_worker_is_a_worker_and_takes_no_aliases() -> None:
    (entry,) = parse_backends([{"name": "w", "url": "dns+ws://trio-gateway-worker:9001"}])
    assert entry.is_worker and entry.discovered
    assert member_spec(entry, "10.0.0.4").is_worker
    with pytest.raises(ValueError, match="only an http"):
        parse_backends(
            [{"name": "w", "url": "dns+ws://trio-gateway-worker:9001", "aliases": {"a": "b"}}]
        )
    with pytest.raises(ValueError, match="not a dns"):
        dns_name(BackendSpec(name="x", url="http://vllm:8000/v1").url)
