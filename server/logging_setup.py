"""Log output of the `dualvec` command: plain text lines, or JSON (``serve --log-format json``) with one object
per event on one line (a traceback goes into the ``exception`` field), for a log collector to read."""
from __future__ import annotations

import json
import logging
import sys
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601 with milliseconds), level, logger, message, pid, and the
    exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        event = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage(),
                 "pid": record.process}
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            event["exception"] = record.exc_text
        if record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        return json.dumps(event, ensure_ascii=False, default=str)


def configure_logging(level: int, fmt: str = "text", stream=None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as ``fmt`` ("text" or "json"). Text, like
    ``logging.basicConfig``, leaves logging as it is when it already has a handler; JSON replaces the handlers."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=fmt == "json")
