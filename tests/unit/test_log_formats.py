"""The JSON and text log formats both carry the request id and the end line's fields."""

from __future__ import annotations

import json
import logging

from trio_gateway.logs import JsonFormatter, RequestIdFilter, TextFormatter, request_id_var


def test_json_and_text_formats_carry_the_request_id() -> None:
    record = logging.LogRecord(
        "trio_gateway.requests", logging.INFO, __file__, 1, "request end", None, None
    )
    record.model = "mock"
    record.status = "success"
    token = request_id_var.set("rid-7")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "rid-7" and line["model"] == "mock"
    assert line["message"] == "request end" and line["level"] == "info"
    text = TextFormatter().format(record)
    assert "[rid-7]" in text and "model=mock" in text and "status=success" in text
