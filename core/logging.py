"""Log formatting for the API and the workers: one JSON object per line, secrets masked.

Log shippers (Loki, CloudWatch, Elasticsearch) index JSON lines without parsing rules, and an operator
follows one job across processes by its `job_id`. Code passes ids with `extra={"job_id": ...,
"chunk_index": ..., "task": ...}`; the formatter adds those keys when present. Both formats mask what
must never reach a log: webhook secrets (`whsec_...`), API keys (`tm_<prefix>_<secret>`), bearer
tokens, and the query strings of URLs (presigned S3 URLs carry their signature there).
`configure_logging` sets the root logger; `logging_config` is the same as a dictConfig for uvicorn.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[str, ...] = ("json", "text")
CONTEXT_FIELDS: tuple[str, ...] = ("job_id", "chunk_index", "task", "task_id", "delivery_id")

_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "whsec_<redacted>"),
    (re.compile(r"\btm_([0-9a-f]{12})_[A-Za-z0-9_-]{43}"), r"tm_\1_<redacted>"),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 <redacted>"),
    # A URL's query string: presigned GETs carry X-Amz-Signature / credentials there.
    (re.compile(r"((?:https?|s3)://[^\s?#\"'<>]+)\?[^\s#\"'<>]*"), r"\1?<redacted>"),
    # The same parameters in a bare path's query (an access-log line has no scheme).
    (
        re.compile(
            r"(?i)\b((?:x-amz-)?(?:signature|credential|security-token)|awsaccesskeyid|token|secret)=[^&\s\"']+"
        ),
        r"\1=<redacted>",
    ),
)


def redact(text: str) -> str:
    """`text` with webhook secrets, API keys, bearer tokens and URL query strings masked."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFormatter(logging.Formatter):
    """The stdlib text format, secrets masked (message and traceback alike)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp (UTC, ISO 8601), level, logger, message, context ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value if isinstance(value, int | float | bool) else redact(str(value))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    return JsonFormatter() if log_format == "json" else RedactingFormatter(TEXT_FORMAT)


def configure_logging(log_format: str, level: str | int = "INFO") -> None:
    """Root logger → stderr in `log_format`, replacing handlers set before (Celery's, basicConfig's)."""
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


def logging_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` dict doing what `configure_logging` does (uvicorn's `log_config`);
    uvicorn's own loggers propagate to the root handler so they share the format."""
    make_formatter(log_format)  # validates
    formatter = (
        {"()": JsonFormatter} if log_format == "json" else {"()": RedactingFormatter, "fmt": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"timemark": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "timemark"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": level.upper()}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
