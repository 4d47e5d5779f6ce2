"""Auth is one decision in front of both route sets: every route of the inference set and
of the control app is guarded by its path alone, and a route added to either set is
guarded without a line of auth code of its own."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from quart import Response
from quart_trio import QuartTrio

from tests.support.asgi_client import Harness, running_gateway
from tests.support.bodies import chat
from trio_gateway.config import GatewayConfig
from trio_gateway.http import application
from trio_gateway.http.auth import API_ROOT_PATHS
from trio_gateway.http.inference import INFERENCE_ROUTES

# The only routes anyone may call without a credential: probes and the metrics scrape.
OPEN_ROUTES = {"/health", "/live", "/ready", "/metrics"}
KEY = {"authorization": "Bearer k1"}
ADMIN = {"authorization": "Bearer s3cret"}
REMOTE = ("10.1.2.3", 5000)


def guarded() -> GatewayConfig:
    return GatewayConfig(api_keys=("k1",), admin_token="s3cret")


def routes(harness: Harness) -> Iterator[tuple[str, str]]:
    """(method, path) of every route both sets serve, path parameters filled in."""
    for path in INFERENCE_ROUTES:
        yield "POST", path
    for rule in harness.app.control.url_map.iter_rules():
        path = re.sub(r"<[^>]+>", "x", rule.rule)
        for method in sorted(rule.methods or ()):
            if method not in ("HEAD", "OPTIONS"):
                yield method, path


async def test_every_route_is_guarded_or_listed_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(guarded()) as harness:
        table = list(routes(harness))
        assert ("POST", "/v1/chat/completions") in table and ("GET", "/admin/workers") in table
        assert {("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/v1/embeddings")} <= set(
            table
        )
        for method, path in table:
            response = await harness.request(method, path, client=REMOTE)
            if path.startswith("/v1/") or path in API_ROOT_PATHS:
                assert response.status == 401, (method, path)
                assert response.json()["error"]["code"] == "invalid_api_key"
            elif path.startswith("/admin/"):
                assert response.status == 401, (method, path)
                assert response.json()["error"]["code"] == "admin_forbidden"
            else:
                assert path in OPEN_ROUTES, f"{method} {path}: guard it or list it as open"
                assert response.status not in (401, 403), (method, path)
            assert b"x-request-id" in response.headers, (method, path)


async def test_remote_admin_without_a_token_is_forbidden_on_every_admin_route(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway() as harness:
        admin = [(m, p) for m, p in routes(harness) if p.startswith("/admin/")]
        assert len(admin) >= 4
        for method, path in admin:
            response = await harness.request(method, path, client=REMOTE)
            assert response.status == 403, (method, path)
        assert (await harness.request("GET", "/admin/workers")).status == 200  # loopback


@pytest.fixture
def new_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A route added to each set, with no auth code of its own."""
    monkeypatch.setitem(INFERENCE_ROUTES, "/v1/new/completions", "chat")
    build = application.create_control_app

    def with_new_routes(gateway: object) -> QuartTrio:
        app = build(gateway)  # type: ignore[arg-type]

        async def reached() -> Response:
            return Response("reached")

        app.add_url_rule("/v1/new", "v1_new", reached, methods=["GET"])
        app.add_url_rule("/admin/new", "admin_new", reached, methods=["POST"])
        return app

    monkeypatch.setattr(application, "create_control_app", with_new_routes)


@pytest.mark.usefixtures("new_routes")
async def test_a_new_route_in_either_set_is_guarded_by_its_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(guarded()) as harness:
        refused = await harness.request("POST", "/v1/new/completions", chat(max_tokens=1))
        assert refused.status == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        answered = await harness.request(
            "POST", "/v1/new/completions", chat(max_tokens=1), headers=KEY
        )
        assert answered.status == 200
        assert (await harness.request("GET", "/v1/new")).status == 401
        assert (await harness.request("GET", "/v1/new", headers=KEY)).body == b"reached"
        assert (await harness.request("POST", "/admin/new")).status == 401
        assert (await harness.request("POST", "/admin/new", headers=ADMIN)).body == b"reached"


async def test_a_refused_inference_request_is_counted_and_tagged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(guarded()) as harness:
        refused = await harness.request(
            "POST", "/v1/chat/completions", chat(), headers={"x-request-id": "abc"}
        )
        assert refused.status == 401
        assert refused.headers[b"x-request-id"] == b"abc"
        assert (
            harness.metric(
                "trio_gateway_requests_total",
                model="unknown",
                endpoint="chat",
                request_type="unary",
                status="error",
                error_type="unauthorized",
            )
            == 1
        )
        control = await harness.request("GET", "/v1/models", headers={"x-request-id": "def"})
        assert control.status == 401
        assert control.headers[b"x-request-id"] == b"def"


@pytest.mark.parametrize(
    "path",
    [
        "//admin/drain",
        "/admin//drain",
        "/v1/../admin/drain",
        "/./admin/drain",
        "http://127.0.0.1/admin/drain",
    ],
)
async def test_doubled_slashes_reach_no_admin_route_without_the_token(
    autojump_clock: trio.testing.MockClock, path: str
) -> None:
    async with running_gateway(guarded()) as harness:
        response = await harness.request("POST", path, client=REMOTE)
        assert response.status == 401, response.status
        assert harness.gateway.accepting  # nothing drained


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "//v1/models"),
        ("GET", "/v1//models"),
        ("GET", "/x/../v1/models"),
        ("POST", "//tokenize"),
    ],
)
async def test_doubled_slashes_reach_no_api_route_without_a_key(
    autojump_clock: trio.testing.MockClock, method: str, path: str
) -> None:
    async with running_gateway(guarded()) as harness:
        response = await harness.request(method, path, client=REMOTE)
        assert response.status == 401, response.status


@pytest.mark.parametrize("path", ["//v1/chat/completions", "/v1//completions", "//tokenize"])
async def test_doubled_slashes_with_a_key_reach_the_inference_handler(
    autojump_clock: trio.testing.MockClock, path: str
) -> None:
    """Not the control app's placeholder for those paths (a 500)."""
    body = {"model": "mock", "prompt": "hi", "max_tokens": 2}
    if "chat" in path:
        body = chat(max_tokens=2)
    async with running_gateway(guarded()) as harness:
        response = await harness.request("POST", path, body, headers=KEY)
        assert response.status == 200, (response.status, bytes(response.body))


async def test_under_a_root_path_routes_are_judged_as_quart_routes_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # hypercorn --root-path /gw: quart strips the root before routing, so auth must too.
    async with running_gateway(guarded()) as harness:
        refused = await harness.request("POST", "/gw/admin/drain", client=REMOTE, root_path="/gw")
        assert refused.status == 401
        assert harness.gateway.accepting
        no_key = await harness.request("GET", "/gw/v1/models", client=REMOTE, root_path="/gw")
        assert no_key.status == 401
        served = await harness.request(
            "POST",
            "/gw/v1/completions",
            {"model": "mock", "prompt": "hi", "max_tokens": 1},
            headers=KEY,
            root_path="/gw",
        )
        assert served.status == 200
        outside = await harness.request("GET", "/v1/models", headers=KEY, root_path="/gw")
        assert outside.status == 404
