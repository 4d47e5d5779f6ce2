"""`POST /admin/workers` refuses a bad backend URL with a 400 naming the `url` parameter,
and a refused worker leaves routing as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trustme

from tests.support.asgi_client import running_gateway
from tests.support.backend_url_cases import BAD_URLS
from tests.support.bodies import chat
from trio_gateway.config import GatewayConfig

CHAT = "/v1/chat/completions"


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


async def test_a_worker_whose_tls_files_went_missing_is_a_500_not_a_traceback(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    async with running_gateway(GatewayConfig(worker_ca_bundle=str(bundle))) as harness:
        bundle.unlink()  # after start-up: an operator's mistake, not the client's
        with trio.fail_after(10):
            answer = await harness.request("POST", "/admin/workers", {"url": "wss://w1:9001"})
        assert answer.status == 500
        assert "worker_ca_bundle" in answer.json()["error"]["message"]
        listed = await harness.request("GET", "/admin/workers")
        assert [w["id"] for w in listed.json()["workers"]] == ["mock"]
