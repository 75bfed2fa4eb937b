"""Structured logs: Google Cloud's structured handler on Google Cloud, JSON lines elsewhere.

Both take the same call style, `log.info("...", extra={"json_fields": {...}})`, so
library code never asks where it runs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

# The loggers of this project; configured once, on first use (not at import).
_PACKAGES = ("config_watch", "gateway", "main", "processor")
_configured = False
_lock = threading.Lock()


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line, with Cloud Logging's field names."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "json_fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _handler() -> logging.Handler:
    if os.environ.get("K_SERVICE"):
        # On Cloud Run functions: stdout lines the logging agent parses, with the
        # request's trace taken from the Flask request context.
        from google.cloud.logging_v2.handlers import StructuredLogHandler

        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCP_PROJECT")
        return StructuredLogHandler(project_id=project, stream=sys.stdout)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLineFormatter())
    return handler


def configure_logging(level: str = "INFO", force: bool = False) -> None:
    """Send every log record, as structured lines, to stdout; once per process.

    The handler goes on the root logger so library records (gRPC, Google) come out in
    the same format; this project's loggers get `level`, the rest keep WARNING.
    """
    global _configured
    with _lock:
        if _configured and not force:
            return
        root = logging.getLogger()
        for old in [h for h in root.handlers if getattr(h, "_config_watch", False)]:
            root.removeHandler(old)
        handler = _handler()
        handler._config_watch = True
        root.addHandler(handler)
        for name in _PACKAGES:
            logging.getLogger(name).setLevel(level if level in logging._nameToLevel else "INFO")
        _configured = True
