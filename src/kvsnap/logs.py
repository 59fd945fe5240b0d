"""Logging set-up: lines on stderr, text or JSON, with secrets masked.

Library modules log through ``logging.getLogger(__name__)`` and pass context
(run, namespace, snapshot) in ``extra``. Every secret kvsnap reads is
registered with `register_secret`, and a filter replaces it in every record,
so a token that slips into an exception message is still never printed.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator

_secrets: set[str] = set()
MASK = "***"

# Context fields that a log call may pass in ``extra``, shown after the message.
CONTEXT_FIELDS = ("run", "namespace", "snapshot", "keys", "bytes", "duration", "error")


# The id of the policy run in progress, added to every line logged within it.
_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kvsnap_run_id", default=None
)


@contextlib.contextmanager
def run_context(run_id: str) -> Iterator[None]:
    """Tag every log line of this block (and the tasks it starts) with `run_id`."""
    token = _run_id.set(run_id)
    try:
        yield
    finally:
        _run_id.reset(token)


def register_secret(value: str | None) -> None:
    """Mask this value wherever it would appear in a log line."""
    if value and len(value) >= 4:
        _secrets.add(value)


def mask(text: str) -> str:
    """Return text with every registered secret replaced by ***."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class _MaskFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "run", None) is None and _run_id.get() is not None:
            record.run = _run_id.get()
        record.msg = mask(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields = [
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
            and str(value) not in message
        ]
        line = f"{record.levelname.lower()}: {message}"
        if fields:
            line += " " + " ".join(fields)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_text:
            entry["traceback"] = record.exc_text
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO, log_format: str = "text") -> None:
    """Send kvsnap's log lines to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_MaskFilter())
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    root = logging.getLogger("kvsnap")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # The SDK and HTTP client log every request, which would drown kvsnap's lines.
    for name in ("cloudflare", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
