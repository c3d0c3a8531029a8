"""Shared pieces of the end-to-end tests: their own database and Redis DB, the API and a real worker.

`service` starts uvicorn (the API) and `timemark worker` (Celery prefork with one child, both
queues, beat inside) as child processes on this module's PostgreSQL database, its own Redis key
prefix and the session's moto S3 bucket; logs go to files the failing test can print.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from workers.embedded import TRAINED_CHECKPOINT, stop_process, wait_ready

SAMPLING = {"fps": 1.0, "min_pixels": 50_176, "max_pixels": 50_176, "video_total_pixels": 50_176 * 6}


@dataclass
class Service:
    url: str
    api: subprocess.Popen
    worker: subprocess.Popen
    logs: Path

    def worker_log(self) -> str:
        return (self.logs / "worker.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def isolated_broker_url() -> Iterator[str]:
    """A Redis URL whose every key carries this module's own prefix; its keys are deleted after."""
    index = random.randint(1, 15)
    prefix = f"tm-e2e-{uuid.uuid4().hex[:10]}:"
    yield f"redis://127.0.0.1:6379/{index}?key_prefix={prefix}"
    client = redis.Redis(host="127.0.0.1", db=index)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """The shipped trained small model if present (answers checked), else a tiny random one (plumbing only)."""
    if (TRAINED_CHECKPOINT / "config.json").is_file():
        return TRAINED_CHECKPOINT, True
    from model_runtime.checkpoint import init_checkpoint

    return init_checkpoint(tmp_path_factory.mktemp("e2e-ckpt") / "tiny", seed=0), False


@pytest.fixture(scope="module")
def e2e_env(
    service_env: dict[str, str],
    make_pg_database: Any,
    checkpoint: tuple[Path, bool],
    isolated_broker_url: str,
) -> dict[str, str]:
    """This module's own database and Redis key prefix, so no other test's messages reach its worker."""
    from core.db import make_engine
    from core.models import Base
    from core.settings import Settings

    env = dict(service_env)
    env["TIMEMARK_DATABASE_URL"] = make_pg_database()
    env["TIMEMARK_BROKER_URL"] = isolated_broker_url
    env["TIMEMARK_ENGINE_CHECKPOINT"] = str(checkpoint[0])
    env["TIMEMARK_SWEEP_INTERVAL_S"] = "2"
    env["TIMEMARK_QUEUED_STALE_AFTER_S"] = "4"
    engine = make_engine(Settings(database_url=env["TIMEMARK_DATABASE_URL"], secret_key="x" * 32))
    Base.metadata.create_all(engine)
    engine.dispose()
    return env


def _child_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIMEMARK_")}
    # One torch thread: two shared cores; more threads only spin against each other.
    return {**base, **env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def service(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """uvicorn serving the API and a Celery worker (prefork, one child, both queues, beat inside)."""
    from tests.conftest import free_port

    logs = tmp_path_factory.mktemp("e2e-logs")
    port = free_port()
    env = _child_env({**e2e_env, "TIMEMARK_DATA_DIR": str(logs)})
    api_log = (logs / "api.log").open("wb")
    worker_log = (logs / "worker.log").open("wb")
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "api.main:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=api_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from timemark.cli import main; main()",
            "worker",
            "--queues",
            "cpu,gpu",
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "--beat",
        ],
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout_s=60, process=api)
        yield Service(f"http://127.0.0.1:{port}", api, worker, logs)
    finally:
        stop_process(worker, grace_s=15)
        stop_process(api)
        api_log.close()
        worker_log.close()
        if os.environ.get("TIMEMARK_E2E_SHOW_LOGS"):
            print((logs / "worker.log").read_text(errors="replace")[-5000:])
