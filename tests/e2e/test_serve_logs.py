"""`timemark serve` (production mode) logs JSON lines: uvicorn's own and the access log alike.

The server runs as the CLI starts it, on the session's PostgreSQL and Redis; the test asks for a page
with a query string that looks like a presigned URL's and checks every stderr line parses as JSON and
that the signature did not reach the log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from workers.embedded import stop_process, wait_ready

pytestmark = pytest.mark.timeout(90)


def test_serve_writes_json_lines(service_env: dict[str, str], db_engine: object, tmp_path: Path) -> None:
    from tests.conftest import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMEMARK_")}
    env.update(service_env, PYTHONUNBUFFERED="1")
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", "from timemark.cli import main; main()", "serve", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, timeout_s=60, process=process)
            url = f"{base}/healthz?X-Amz-Signature=deadbeef&source=http://example.com/v.mp4?Signature=feed"
            assert httpx.get(url, timeout=5).status_code == 200
        finally:
            stop_process(process)
    lines = log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line: a JSON object
    assert any(e["logger"] == "uvicorn.access" and "/healthz" in e["message"] for e in entries), lines
    assert any(e["logger"] == "uvicorn.error" and "Uvicorn running" in e["message"] for e in entries), lines
    assert "deadbeef" not in log_path.read_text() and "feed" not in log_path.read_text()
