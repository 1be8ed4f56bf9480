"""Log records of the server: each carries the id of the HTTP request it was written for, and
`--log-format json` writes one JSON object per line for log collectors."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

# The request being served in this context ("-" outside one: start-up, the worker thread).
# A context variable, not shared state: every request's task and the threads it hands work
# to (sync routes) see their own value.
request_id: ContextVar[str] = ContextVar("foleyrt_request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id` to every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, request id,
    and the traceback, if any, as one string."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", request_id.get()),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class RequestIdText(logging.Formatter):
    """`message [request id]` for records written while serving a request."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", "-")
        return text if rid == "-" else f"{text} [request {rid}]"


def tag_request_ids() -> None:
    """Show the request id on the lines of the handlers already set up (text logs)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(RequestIdText("%(message)s"))


def use_json_logs(level: int) -> None:
    """Replace the root handlers with one writing JSON lines to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("foleyrt").setLevel(level)
