"""core.logging: JSON lines carry the context ids, and neither format lets a secret through."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest

from core.logging import configure_logging, logging_config, make_formatter
from core.security import generate_api_key
from core.webhooks import generate_secret

PRESIGNED = (
    "http://127.0.0.1:9000/bucket/videos/a.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20261129&X-Amz-Signature=0123456789abcdef0123456789abcdef"
)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.core.logging")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_json_lines_carry_level_logger_message_and_ids(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(make_formatter("json"))
    logger.info("chunk %d of job %s done", 3, "j-1", extra={"job_id": "j-1", "chunk_index": 3})
    logger.warning("no ids here")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "chunk 3 of job j-1 done"
    assert (first["level"], first["logger"], first["job_id"], first["chunk_index"]) == (
        "INFO",
        "tests.core.logging",
        "j-1",
        3,
    )
    assert first["timestamp"].endswith("+00:00")
    assert "job_id" not in second and second["level"] == "WARNING"


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_secrets_never_reach_the_log(captured, log_format: str) -> None:
    logger, stream, handler = captured
    handler.setFormatter(make_formatter(log_format))
    webhook_secret = generate_secret()
    api_key = generate_api_key()[0]
    logger.info("delivering with %s for key %s", webhook_secret, api_key)
    logger.info("opening %s", PRESIGNED)
    logger.info("header Authorization: Bearer abc.def-ghi")
    logger.info('"GET /objects/a.mp4?X-Amz-Signature=feedface&X-Amz-Security-Token=cafebabe HTTP/1.1" 200')
    try:
        raise ConnectionError(f"cannot open {PRESIGNED} (secret {webhook_secret})")
    except ConnectionError:
        logger.exception("infer failed", extra={"job_id": "j-2"})
    text = stream.getvalue()
    for secret in (
        webhook_secret,
        api_key,
        "0123456789abcdef0123456789abcdef",  # the presigned URL's signature
        "AKIAEXAMPLE",
        "abc.def-ghi",
        "feedface",
        "cafebabe",
    ):
        assert secret not in text, f"{secret!r} leaked into the {log_format} log"
    # What is not secret stays readable: the object's path, the key's public prefix.
    assert "http://127.0.0.1:9000/bucket/videos/a.mp4?<redacted>" in text
    assert api_key[:15] in text
    if log_format == "json":
        last = json.loads(text.splitlines()[-1])
        assert "ConnectionError" in last["exception"] and last["job_id"] == "j-2"


def test_bad_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json, text"):
        make_formatter("xml")
    with pytest.raises(ValueError):
        logging_config("yaml")


def test_configure_logging_replaces_root_handlers() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        configure_logging("json", "warning")
        assert len(root.handlers) == 1 and root.level == logging.WARNING
        logging.config.dictConfig(logging_config("text"))  # the uvicorn form is a valid dictConfig
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
