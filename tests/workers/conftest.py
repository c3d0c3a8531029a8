"""Fixtures for the worker tests: a worker context on the session's real services, tenants, jobs, videos.

The context uses the shared PostgreSQL database, Redis DB index and moto S3 bucket of `tests/conftest.py`,
and the native engine on a tiny random-weight checkpoint (its answers are noise; the tests check the
plumbing, not the answers). Videos are real H.264 files from the synthetic generator, stored in S3.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

QUERIES = ["When does the red circle appear?", "When does the blue square appear?"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_runtime.checkpoint import init_checkpoint

    return init_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


def prefixed_broker(redis_url: str) -> tuple[str, str]:
    """`redis_url` with a fresh key prefix: a Redis DB shared with other sessions, keys of our own."""
    prefix = f"tmw-{uuid.uuid4().hex[:10]}:"
    return f"{redis_url}?key_prefix={prefix}", prefix


def delete_prefixed(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
def worker_broker(redis_url: str) -> Iterator[tuple[str, str]]:
    """The worker tests' broker URL and key prefix; the keys are deleted at the end of the session."""
    url, prefix = prefixed_broker(redis_url)
    yield url, prefix
    delete_prefixed(redis_url, prefix)


@pytest.fixture(scope="session")
def worker_settings(service_settings: Any, tiny_checkpoint: Path, worker_broker: tuple[str, str]) -> Any:
    """The session's settings plus the tiny checkpoint, short retry schedule, small chunks, own key prefix."""
    return service_settings.model_copy(
        update={
            "broker_url": worker_broker[0],
            "engine_checkpoint": str(tiny_checkpoint),
            "chunk_overlap_s": 2.0,
            "webhook_retry_schedule_s": (0.0, 1.0, 2.0),
            "webhook_timeout_s": 5.0,
        }
    )


@pytest.fixture(scope="session")
def ctx(worker_settings: Any, db_engine: Any) -> Iterator[Any]:
    import torch

    from workers.context import WorkerContext

    torch.set_num_threads(1)  # 2 shared cores: more threads only spin against other people's work
    context = WorkerContext(worker_settings)
    yield context
    context.close()


@pytest.fixture
def tenant(session_factory: Any) -> uuid.UUID:
    from core.models import Tenant

    with session_factory() as session:
        row = Tenant(name=f"t-{uuid.uuid4().hex[:10]}")
        session.add(row)
        session.commit()
        return row.id


# Small sampling so a chunk holds a few small frames: 1 fps, 64 tokens per frame, 6 frames a context.
SMALL_SAMPLING = {
    "fps": 1.0,
    "min_pixels": 50_176,
    "max_pixels": 50_176,
    "video_total_pixels": 50_176 * 6,
    "min_frames": 2,
    "max_frames": None,
}


@pytest.fixture
def make_job(session_factory: Any, tenant: uuid.UUID) -> Callable[..., uuid.UUID]:
    """Insert a `queued` job row (as the API would) and return its id."""
    from core.models import Job

    def make(source_uri: str, **overrides: Any) -> uuid.UUID:
        values: dict[str, Any] = {
            "tenant_id": tenant,
            "source": source_uri,
            "source_uri": source_uri,
            "queries": list(QUERIES),
            "sampling": dict(SMALL_SAMPLING),
            "strategy": "chunked",
        }
        values.update(overrides)
        with session_factory() as session:
            job = Job(**values)
            session.add(job)
            session.commit()
            return job.id

    return make


@pytest.fixture(scope="session")
def s3(s3_endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="session")
def synthetic_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A 16 s synthetic H.264 video with known events, and its ground truth."""
    from model_runtime.video import make_synthetic_video

    path = tmp_path_factory.mktemp("video") / "events.mp4"
    truth = make_synthetic_video(path, duration_s=16.0, seed=3)
    return path, truth


@pytest.fixture(scope="session")
def video_uri(s3: Any, s3_bucket: str, synthetic_video: tuple[Path, Any]) -> str:
    key = f"inputs/{uuid.uuid4().hex}.mp4"
    s3.put_object(Bucket=s3_bucket, Key=key, Body=synthetic_video[0].read_bytes())
    return f"s3://{s3_bucket}/{key}"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedReceiver:
    """A real HTTP server on loopback recording every POST; answers `(status, headers)` from a script."""

    url: str
    requests: list[Received] = field(default_factory=list)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    default: tuple[int, dict[str, str]] = (204, {})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"receiver got {len(self.requests)} requests, expected {count}")


@pytest.fixture
def receiver() -> Iterator[ScriptedReceiver]:
    port = free_port()
    state = ScriptedReceiver(url=f"http://127.0.0.1:{port}/hooks")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with state.lock:
                state.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status, headers = state.script.pop(0) if state.script else state.default
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
