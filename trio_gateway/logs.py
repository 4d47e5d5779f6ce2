"""Logging: one line per event, human-readable or JSON, every line tagged with its request id.

The request id lives in a context variable set by the request's handler; trio copies a task's
context into the tasks it starts, so the flight and its engine work log with the same id.
Lines never carry prompt or completion text, nor API keys, unless `--log-prompts` asks for the
text (keys never).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "trio_gateway_request_id", default=None
)

# Fields a log call may attach with `extra=`; the formatters print exactly these.
FIELDS = (
    "model",
    "endpoint",
    "worker",
    "status",
    "error_type",
    "ttft_s",
    "duration_s",
    "prompt_tokens",
    "completion_tokens",
    "prompt",
    "completion",
)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        tagged = f" [{request_id}]" if request_id else ""
        if tagged or extras:
            head, _, rest = text.partition("\n")
            text = head + tagged + (" " + extras if extras else "") + ("\n" + rest if rest else "")
        return text


class NotWrittenYet(logging.Filter):
    """Passes a record no handler below the root has written already.

    Under a bare `hypercorn`, hypercorn gives `hypercorn.error` a stderr handler of its own
    (`--error-logfile`) and lets it propagate: the root's handler would print each of its
    lines a second time. Under `serve` it has none (`hypercorn_config`), so ours writes them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger.parent is not None:  # up to the root, excluded
            if logger.handlers:
                return False
            if not logger.propagate:
                break
            logger = logger.parent
        return True


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(NotWrittenYet())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def configure_logging_once(level: str, log_format: str = "text") -> bool:
    """`configure_logging`, unless this process has configured logging already (the root
    logger has a handler: a test runner, a program embedding the app, `logging.basicConfig`);
    True when it did."""
    if logging.getLogger().handlers:
        return False
    configure_logging(level, log_format)
    return True
