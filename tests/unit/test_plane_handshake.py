"""The request plane's handshake as pure functions: the gateway's opening headers, and the
worker's verdict on them (token, protocol version)."""

from __future__ import annotations

from trio_gateway.plane.frames import PROTOCOL_VERSION
from trio_gateway.plane.handshake import PROTOCOL_HEADER, opening_headers, refusal

VERSION = str(PROTOCOL_VERSION).encode()


def test_the_gateways_headers_are_accepted_by_a_worker_with_the_same_token() -> None:
    assert opening_headers(None) == [(PROTOCOL_HEADER, VERSION)]
    assert opening_headers("s3cret") == [
        (PROTOCOL_HEADER, VERSION),
        (b"authorization", b"Bearer s3cret"),
    ]
    assert refusal(opening_headers("s3cret"), "s3cret") is None
    assert refusal(opening_headers(None), None) is None
    assert refusal(opening_headers("any"), None) is None  # a worker without a token takes all


def test_a_wrong_or_missing_token_is_401() -> None:
    for headers in (opening_headers("wrong"), opening_headers(None), [(b"authorization", b"")]):
        refused = refusal(headers, "s3cret")
        assert refused is not None
        assert (refused.status, refused.body) == (401, b"wrong or missing worker token")


def test_header_names_are_case_insensitive_and_the_scheme_too() -> None:
    headers = [(b"X-Trio-Gateway-Protocol", VERSION), (b"Authorization", b"bearer  s3cret ")]
    assert refusal(headers, "s3cret") is None


def test_another_protocol_version_is_400_and_says_both() -> None:
    refused = refusal([(PROTOCOL_HEADER, b"2")], None)
    assert refused is not None
    assert refused.status == 400
    assert refused.body == f"this worker speaks protocol {PROTOCOL_VERSION}".encode()
    assert refused.reason == f"it speaks protocol 2, this worker {PROTOCOL_VERSION}"


def test_no_version_header_means_ours() -> None:
    assert refusal([], None) is None


def test_the_token_is_checked_before_the_version() -> None:
    # A gateway without the token learns nothing about the worker, not even its version.
    refused = refusal([(PROTOCOL_HEADER, b"2")], "s3cret")
    assert refused is not None and refused.status == 401
