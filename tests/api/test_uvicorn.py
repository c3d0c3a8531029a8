"""The API as production runs it: `uvicorn api.main:app`, configured only by TIMEMARK_* variables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import free_port


def test_uvicorn_serves_the_app_from_the_environment(service_env, db_engine, make_tenant) -> None:
    tenant = make_tenant()
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**os.environ, **service_env},
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, "uvicorn exited"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.2)
        created = httpx.post(
            f"{base}/v1/jobs",
            headers=tenant.headers,
            json={"source": "http://127.0.0.1:9/v.mp4", "queries": ["a door opens"]},
        )
        assert created.status_code == 202, created.text
        polled = httpx.get(base + created.headers["location"], headers=tenant.headers)
        assert polled.status_code == 200 and polled.json()["state"] == "queued"
        problem = httpx.post(
            f"{base}/v1/jobs", headers={**tenant.headers, "Content-Type": "application/json"}, content=b"\xff"
        )
        assert problem.status_code == 400 and problem.headers["content-type"] == "application/problem+json"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
