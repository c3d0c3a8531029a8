"""Private servers for the fault tests: a Redis and a PostgreSQL cluster these tests may stop and restart.

The machine's shared PostgreSQL (5432) and Redis (6379) serve other people's test runs, so they are never
touched here. `redis_server` is a `redis-server` child on a free port (no persistence, like a cache that
lost everything on restart); `pg_cluster` is a cluster made with `initdb` in a temporary folder owned by
the `postgres` OS user (initdb refuses root) and run with `pg_ctl` on a free port. `start_service`
launches uvicorn + a real Celery worker (prefork, one child, beat inside) on them, with time limits,
sweep interval and webhook schedule shortened so recovery happens within seconds.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import S3_TEST_KEY_ID, S3_TEST_SECRET, free_port, s3_client
from workers.embedded import TRAINED_CHECKPOINT, stop_process, wait_ready

# 6 frames of 224x224 per chunk at 1 fps: a 12 s video is 5 chunks of ~1 s of model time each.
SAMPLING = {"fps": 1.0, "min_pixels": 50_176, "max_pixels": 50_176, "video_total_pixels": 50_176 * 6}
TERMINAL = ("succeeded", "failed", "canceled")


# ------------------------------------------------------------------------------------------- Redis


@dataclass
class RedisServer:
    """A redis-server child process on `port` that a test may stop and start again (data not kept)."""

    port: int
    log: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ],  # fmt: skip
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        import redis

        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.5).ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # an abrupt loss, like a crashed or evicted broker pod
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis") / "redis.log")
    server.start()
    yield server
    server.stop()


# -------------------------------------------------------------------------------------- PostgreSQL


@dataclass
class PgCluster:
    """A private PostgreSQL cluster (trust auth, loopback, fsync off) run as the `postgres` OS user."""

    root: Path
    port: int
    bindir: Path

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    def init(self) -> None:
        result = self._run("initdb", "-D", str(self.root / "data"), "-U", "postgres", "--auth=trust",
                           "-E", "UTF8", "--no-sync", "--no-instructions")  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr[-2000:]}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        result = self._run("pg_ctl", "-D", str(self.root / "data"), "-o", options,
                           "-l", str(self.root / "pg.log"), "-w", "-t", "30", "start")  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stdout}{result.stderr}")

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", mode, "-w", "-t", "30", "stop")

    def create_database(self) -> str:
        import psycopg

        name = f"rel_{uuid.uuid4().hex[:10]}"
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)")
    root = Path(tempfile.mkdtemp(prefix="tm-rel-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PgCluster(root, free_port(), Path(bins[-1]).parent)
    try:
        cluster.init()
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"a private PostgreSQL cluster could not be started here: {exc}")
    yield cluster
    cluster.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------ Service


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped small trained model, else a tiny random one (the real native engine either way)."""
    if (TRAINED_CHECKPOINT / "config.json").is_file():
        return TRAINED_CHECKPOINT
    from model_runtime.checkpoint import init_checkpoint

    return init_checkpoint(tmp_path_factory.mktemp("rel-ckpt") / "tiny", seed=0)


def reliability_env(
    *, database_url: str, broker_url: str, s3_endpoint: str, s3_bucket: str, checkpoint: Path
) -> dict[str, str]:
    """TIMEMARK_* for a service whose recovery knobs are shortened to seconds."""
    return {
        "TIMEMARK_EMBEDDED": "0",
        "TIMEMARK_DATABASE_URL": database_url,
        "TIMEMARK_BROKER_URL": broker_url,
        "TIMEMARK_STORAGE_URL": f"s3://{s3_bucket}/objects",
        "TIMEMARK_S3_ENDPOINT_URL": s3_endpoint,
        "TIMEMARK_S3_REGION": "us-east-1",
        "TIMEMARK_S3_ACCESS_KEY_ID": S3_TEST_KEY_ID,
        "TIMEMARK_S3_SECRET_ACCESS_KEY": S3_TEST_SECRET,
        "TIMEMARK_SECRET_KEY": secrets.token_urlsafe(32),
        "TIMEMARK_URL_ALLOW_CIDRS": json.dumps(["127.0.0.0/8"]),
        "TIMEMARK_ENGINE_CHECKPOINT": str(checkpoint),
        "TIMEMARK_DB_POOL_SIZE": "5",
        "TIMEMARK_TASK_SOFT_TIME_LIMIT_S": "40",
        "TIMEMARK_TASK_TIME_LIMIT_S": "50",
        "TIMEMARK_VISIBILITY_TIMEOUT_S": "60",
        "TIMEMARK_SWEEP_INTERVAL_S": "1",
        "TIMEMARK_QUEUED_STALE_AFTER_S": "3",
        "TIMEMARK_CHUNK_MAX_ATTEMPTS": "6",
        "TIMEMARK_WEBHOOK_RETRY_SCHEDULE_S": json.dumps([0, 1, 2, 3, 4, 5]),
        "TIMEMARK_WEBHOOK_JITTER_FRACTION": "0",
        "TIMEMARK_WEBHOOK_TIMEOUT_S": "3",
        "TIMEMARK_AUTH_CACHE_TTL_S": "0",
    }


def make_database(database_url: str) -> None:
    from core.db import make_engine
    from core.models import Base
    from core.settings import Settings

    engine = make_engine(Settings(database_url=database_url, secret_key="x" * 32))
    Base.metadata.create_all(engine)
    engine.dispose()


@dataclass
class Service:
    """uvicorn (the API) and one Celery worker (prefork, one child, beat inside) as child processes."""

    env: dict[str, str]
    logs: Path
    port: int = field(default_factory=free_port)
    api: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    _files: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TIMEMARK_")}
        env = {**base, **self.env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "TIMEMARK_DATA_DIR": str(self.logs)}  # fmt: skip
        log = (self.logs / log_name).open("ab")
        self._files.append(log)
        return subprocess.Popen(
            [sys.executable, *argv], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start_api(self) -> None:
        self.api = self._spawn(
            [
                "-m",
                "uvicorn",
                "--factory",
                "api.main:create_app",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],  # fmt: skip
            "api.log",
        )
        wait_ready(self.url, timeout_s=60, process=self.api)

    def start_worker(self) -> None:
        self.worker = self._spawn(
            [
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
            ],  # fmt: skip
            "worker.log",
        )

    def stop(self) -> None:
        for process in (self.worker, self.api):
            if process is not None:
                stop_process(process, grace_s=10)
        for handle in self._files:
            handle.close()

    def worker_log(self) -> str:
        path = self.logs / "worker.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def worker_children(self) -> list[int]:
        assert self.worker is not None
        return children_of(self.worker.pid)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def start_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Service]]:
    """Factory: `start_service(env, worker=True)` → a running API (+ worker); all stopped at the end of the module."""
    started: list[Service] = []

    def start(env: dict[str, str], *, worker: bool = True) -> Service:
        make_database(env["TIMEMARK_DATABASE_URL"])
        service = Service(env, tmp_path_factory.mktemp("rel-logs"))
        started.append(service)
        service.start_api()
        if worker:
            service.start_worker()
        return service

    yield start
    for service in started:
        service.stop()
        if os.environ.get("TIMEMARK_E2E_SHOW_LOGS"):
            print(service.worker_log()[-5000:])


# ------------------------------------------------------------------------------------------ Helpers


def create_key(database_url: str) -> str:
    """A new tenant with an API key in `database_url`."""
    from core.db import make_engine, make_sessionmaker
    from core.security import create_api_key
    from core.settings import Settings

    engine = make_engine(Settings(database_url=database_url, secret_key="x" * 32))
    try:
        with make_sessionmaker(engine)() as session:
            return create_api_key(session, f"rel-{uuid.uuid4().hex[:8]}")
    finally:
        engine.dispose()


def put_video(s3_endpoint: str, bucket: str, path: Path) -> str:
    key = f"rel/{uuid.uuid4().hex}{path.suffix}"
    s3_client(s3_endpoint).put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    return f"s3://{bucket}/{key}"


@pytest.fixture(scope="module")
def small_video(s3_endpoint: str, s3_bucket: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 12 s 160x96 synthetic video in the session's S3 bucket (5 chunks with `SAMPLING`)."""
    from model_runtime.video import make_synthetic_video

    truth = make_synthetic_video(tmp_path_factory.mktemp("rel-video") / "v.mp4", duration_s=12.0, seed=3)
    return put_video(s3_endpoint, s3_bucket, Path(truth.path))


def wait_terminal(client: httpx.Client, job_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Poll until every job is terminal (or the time is up); returns the last view of each."""
    views: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    pending = list(job_ids)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            try:
                answer = client.get(f"/v1/jobs/{job_id}")
            except httpx.TransportError:
                continue
            if answer.status_code == 200:
                views[job_id] = answer.json()
                if views[job_id]["state"] in TERMINAL:
                    pending.remove(job_id)
        time.sleep(0.3)
    return views


def duplicate_segments(database_url: str) -> list[Any]:
    """Chunk segments stored twice for one (job, chunk, query, start, end): must be empty."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                text(
                    "SELECT job_id, chunk_index, query_index, start_s, end_s, count(*) FROM segments "
                    "WHERE chunk_index >= 0 GROUP BY 1,2,3,4,5 HAVING count(*) > 1"
                )
            ).all()
    finally:
        engine.dispose()


def start_outage_run(
    start_service: Any,
    redis_server: RedisServer,
    pg_cluster: PgCluster,
    s3_endpoint: str,
    s3_bucket: str,
    checkpoint: Path,
    small_video: str,
) -> tuple[Any, dict[str, str], dict[str, Any], list[str], str]:
    """The common start of the broker/database restart tests: a service on the private Redis and
    PostgreSQL with short task limits, three accepted jobs, and the first one running.

    Returns (service, auth headers, job body, accepted job ids, database URL).
    """
    database_url = pg_cluster.create_database()
    env = reliability_env(
        database_url=database_url,
        broker_url=redis_server.url,
        s3_endpoint=s3_endpoint,
        s3_bucket=s3_bucket,
        checkpoint=checkpoint,
    )
    # A chunk running when a dependency vanished is re-sent after the hard limit (+ a margin): keep it short.
    env["TIMEMARK_TASK_SOFT_TIME_LIMIT_S"] = "10"
    env["TIMEMARK_TASK_TIME_LIMIT_S"] = "15"
    service = start_service(env)
    headers = {"Authorization": f"Bearer {create_key(database_url)}"}
    body = {"source": small_video, "queries": ["When does the red circle appear?"], "sampling": SAMPLING}
    accepted = []
    with httpx.Client(base_url=service.url, headers=headers, timeout=20) as client:
        for _ in range(3):
            answer = client.post("/v1/jobs", json=body)
            assert answer.status_code == 202, answer.text
            accepted.append(answer.json()["id"])
        deadline = time.monotonic() + 60  # let work start: a chunk in flight when the dependency goes
        while time.monotonic() < deadline:
            if client.get(f"/v1/jobs/{accepted[0]}").json()["state"] == "running":
                break
            time.sleep(0.2)
    return service, headers, body, accepted, database_url
