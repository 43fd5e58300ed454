"""Logs as hclog JSON lines on stderr (docs/protocol.md section 9.2)."""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys

LEVEL_ENV = "PHASED_LOG_LEVEL"
TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
           "warn": logging.WARNING, "error": logging.ERROR}
_NAMES = {TRACE: "trace", logging.DEBUG: "debug", logging.INFO: "info",
          logging.WARNING: "warn", logging.ERROR: "error", logging.CRITICAL: "error"}
# Attributes every LogRecord has: whatever else is on a record came from
# `extra=` and becomes a field of the line.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def level_from_env(environ=os.environ) -> int:
    """PHASED_LOG_LEVEL as a logging level; empty or unknown is info."""
    return _LEVELS.get(environ.get(LEVEL_ENV, "").strip().lower(), logging.INFO)


class JSONFormatter(logging.Formatter):
    """One JSON object a line: @level, @message, @module, @timestamp, and
    the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        line = {
            "@level": _NAMES.get(record.levelno, "info" if record.levelno < logging.ERROR else "error"),
            "@message": record.getMessage(),
            "@module": record.name,
            "@timestamp": ts.isoformat(timespec="microseconds"),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def plugin_logger(name: str, stream=None, environ=os.environ) -> logging.Logger:
    """The plugin's root logger: JSON lines on stderr at PHASED_LOG_LEVEL."""
    logger = logging.getLogger(name)
    logger.setLevel(level_from_env(environ))
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter())
    logger.addHandler(handler)
    return logger
