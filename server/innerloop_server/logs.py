"""Structured logs: one JSON object per line on stderr, never a request payload.

The HTTP process logs one ``http_request`` line per request (method, path, status, ms, body
size, request id); the inference workers log one ``batch`` line per batch (requests, groups,
ms). Images, vectors and labels are never logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "innerloop.server"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "info") -> logging.Logger:
    """Send the ``innerloop.server`` logger to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    if not any(getattr(h, "_innerloop", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._innerloop = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
    return logger


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a structured event: ``{"event": name, **fields}``."""
    logging.getLogger(LOGGER_NAME).log(level, name, extra={"fields": {"event": name, **fields}})
