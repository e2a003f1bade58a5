"""Structured logs: one JSON object per line on stderr, for the API, the worker and beat.

Every line carries ``ts``, ``level``, ``logger``, ``message`` and ``service``; a process adds
its own context (the API its request id, the worker its name and the current task), and any
``extra={...}`` given to a log call (``booking_id``, ``event_id``, ...) becomes a field too.
The level is ``LOG_LEVEL`` (see docs/OPERATIONS.md for the worker's ``--loglevel``). A token in
a URL's query string (``?token=``) is written as ``token=[redacted]``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra=`` or a filter.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_STANDARD |= {"color_message"}  # uvicorn's ANSI-coloured copy of the message

ContextProvider = Callable[[], object]

# Credentials that can ride in a URL (`/ws?token=JWT`): uvicorn logs the path with its query
# string, so every line's message is cleaned of them before it is written.
SECRET_PARAMS = re.compile(r"([?&](?:token|access_token)=)[^&\s\"']*", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(message: str) -> str:
    return SECRET_PARAMS.sub(lambda m: m.group(1) + REDACTED, message)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "service": self.service,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class ContextFilter(logging.Filter):
    """Adds per-process or per-request fields, read when the record is made (contextvars work)."""

    def __init__(self, providers: Mapping[str, ContextProvider]) -> None:
        super().__init__()
        self.providers = dict(providers)

    def filter(self, record: logging.LogRecord) -> bool:
        for key, provider in self.providers.items():
            if getattr(record, key, None) is None:
                try:
                    setattr(record, key, provider())
                except Exception:  # a log line must never fail because of its context
                    setattr(record, key, None)
        return True


def parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}")
    return value


def configure_logging(
    level: str | int,
    *,
    service: str,
    context: Mapping[str, ContextProvider] | None = None,
    stream: Any = None,
    access_log: bool = True,
) -> logging.Handler:
    """Send every logger's records through one JSON handler on the root logger.

    Safe to call again (the handler is replaced, not added twice). Loggers that bring their own
    handlers (uvicorn's) are made to propagate to root instead, so their lines are JSON too.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(ContextFilter(context or {}))
    handler.set_name("ebs-json")

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "ebs-json"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "flower"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # uvicorn's --no-access-log only removes its own handler; this is the switch (ACCESS_LOG).
    access = logging.getLogger("uvicorn.access")
    access.disabled = not access_log
    access.propagate = access_log  # uvicorn skips formatting the line when nothing listens
    return handler
