"""End to end through HTTP: API (uvicorn) + a real Celery worker process on PostgreSQL, Redis and moto S3.

A generated video with known events goes to the moto S3 server; a grounding job with several queries
is submitted over HTTP with a webhook; the test waits for the webhook, verifies its signature with the
`standardwebhooks` library, then checks the job over HTTP and its chunks and segments in PostgreSQL.
With the shipped small trained model the found segments must match the ground truth (IoU ≥ 0.5 for
most queries); with the tiny random-weight checkpoint (until that model ships) the answers are noise,
so only the plumbing is checked: every chunk processed once, job succeeded, webhook verified.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook

from tests.conftest import upload_video
from workers.embedded import SMALL_MODEL_SAMPLING, checkpoint_video_sampling

from .conftest import SAMPLING, Service

pytestmark = pytest.mark.timeout(180)


def _iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def test_submit_run_store_and_webhook(
    service: Service,
    e2e_env: dict[str, str],
    checkpoint: tuple[Path, bool],
    s3_endpoint: str,
    s3_bucket: str,
    webhook_receiver: Any,
    tmp_path: Path,
) -> None:

    from core.db import make_engine, make_sessionmaker
    from core.models import Chunk, Job, Segment
    from core.security import create_api_key
    from core.settings import Settings
    from core.webhooks import generate_secret
    from model_runtime.video import make_synthetic_video
    from model_runtime.video.synthetic import make_event

    trained = checkpoint[1]
    # A video with three known events, uploaded to the moto S3 server. With the trained model: its
    # training look (160×96, 30–80 s) and sampling (8-s windows, so several chunks whose answers are
    # merged); otherwise the tiny model's small contexts.
    if trained:
        events = [
            make_event("circle", "red", 3.0, 11.0),
            make_event("square", "blue", 16.0, 24.0),
            make_event("star", "yellow", 28.0, 36.0),
        ]
        duration_s, sampling = 40.0, checkpoint_video_sampling(checkpoint[0]) or SMALL_MODEL_SAMPLING
    else:
        events = [
            make_event("circle", "red", 1.0, 5.0),
            make_event("square", "blue", 7.0, 11.0),
            make_event("star", "yellow", 12.0, 15.0),
        ]
        duration_s, sampling = 16.0, SAMPLING
    truth = make_synthetic_video(
        tmp_path / "events.mp4", duration_s=duration_s, events=events, seed=11, width=160, height=96
    )
    source = upload_video(s3_endpoint, s3_bucket, truth.path)

    settings = Settings(database_url=e2e_env["TIMEMARK_DATABASE_URL"], secret_key="x" * 32)
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        api_key = create_api_key(session, f"e2e-{uuid.uuid4().hex[:8]}")

    secret = generate_secret()
    queries = [f"When does the {e.label} appear?" for e in events]
    started = time.monotonic()
    with httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as client:
        answer = client.post(
            "/v1/jobs",
            json={
                "source": source,
                "queries": queries,
                "sampling": sampling,
                "webhook": {"url": webhook_receiver.url, "secret": secret},
                "client_ref": "e2e",
            },
            headers={"Idempotency-Key": f"e2e-{uuid.uuid4().hex}"},
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        assert answer.headers["location"].endswith(f"/v1/jobs/{job_id}")

        # The webhook arrives once the job is done; it verifies with the Standard Webhooks library.
        (request,) = webhook_receiver.wait_for(1, timeout_s=150)
        event = Webhook(secret).verify(request.body, request.headers)
        assert event["type"] == "job.succeeded", event
        assert event["data"]["id"] == job_id and event["data"]["client_ref"] == "e2e"

        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded" and job["terminal"]
        assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"] >= 2
        final = client.get(f"/v1/jobs/{job_id}/segments", params={"page_size": 1000}).json()["data"]
    elapsed = time.monotonic() - started

    with sessions() as session:
        chunks = session.scalars(select(Chunk).where(Chunk.job_id == uuid.UUID(job_id))).all()
        assert {c.state for c in chunks} == {"done"} and all(c.attempts == 1 for c in chunks)
        stored_final = session.scalar(
            select(func.count())
            .select_from(Segment)
            .where(Segment.job_id == uuid.UUID(job_id), Segment.final.is_(True))
        )
        assert stored_final == len(final)
        duplicates = session.execute(
            select(Segment.chunk_index, Segment.query_index, Segment.start_s, Segment.end_s, func.count())
            .where(Segment.job_id == uuid.UUID(job_id))
            .group_by(Segment.chunk_index, Segment.query_index, Segment.start_s, Segment.end_s)
            .having(func.count() > 1)
        ).all()
        assert duplicates == []
        db_job = session.get(Job, uuid.UUID(job_id))
        assert db_job.tokens > 0 and db_job.gpu_seconds > 0
    engine.dispose()
    assert event["data"]["segment_count"] == len(final)
    for seg in final:
        assert 0 <= seg["start_s"] < seg["end_s"] <= truth.duration_s + 0.5 and 0 <= seg["confidence"] <= 1

    print(
        f"e2e job done in {elapsed:.1f} s, {len(chunks)} chunks, {len(final)} final segments, trained={trained}"
    )
    if trained:
        top1 = {s["query_index"]: (s["start_s"], s["end_s"]) for s in final if s["rank"] == 1}
        hits = sum(_iou(top1[i], (e.start_s, e.end_s)) >= 0.5 for i, e in enumerate(events) if i in top1)
        message = f"top-1 segments {top1} vs truth {[(e.start_s, e.end_s) for e in events]}"
        assert hits >= 2, message


def test_batch_from_an_s3_prefix_ends_with_a_verified_batch_webhook(
    service: Service,
    e2e_env: dict[str, str],
    s3_endpoint: str,
    s3_bucket: str,
    webhook_receiver: Any,
    tmp_path: Path,
) -> None:
    import boto3

    from core.db import make_engine, make_sessionmaker
    from core.security import create_api_key
    from core.settings import Settings
    from core.webhooks import generate_secret
    from model_runtime.video import make_synthetic_video

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    prefix = f"batch-e2e-{uuid.uuid4().hex[:8]}/"
    video = make_synthetic_video(tmp_path / "a.mp4", duration_s=12.0, seed=21, width=160, height=96)
    body = Path(video.path).read_bytes()
    s3.put_object(Bucket=s3_bucket, Key=prefix + "a.mp4", Body=body)
    s3.put_object(Bucket=s3_bucket, Key=prefix + "again/a-copy.mp4", Body=body)  # same ETag: no second job
    s3.put_object(Bucket=s3_bucket, Key=prefix + "readme.txt", Body=b"these are the clips\n")
    engine = make_engine(Settings(database_url=e2e_env["TIMEMARK_DATABASE_URL"], secret_key="x" * 32))
    with make_sessionmaker(engine)() as session:
        api_key = create_api_key(session, f"batch-{uuid.uuid4().hex[:8]}")
    engine.dispose()

    secret = generate_secret()
    with httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as client:
        answer = client.post(
            "/v1/batches",
            json={
                "source": f"s3://{s3_bucket}/{prefix}",
                "job": {"queries": ["When does the red circle appear?"], "sampling": SAMPLING},
                "webhook": {"url": webhook_receiver.url, "secret": secret},
            },
        )
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["id"]
        (request,) = webhook_receiver.wait_for(1, timeout_s=150)
        event = Webhook(secret).verify(request.body, request.headers)
        assert event["type"] == "batch.completed" and event["data"]["id"] == batch_id
        batch = client.get(f"/v1/batches/{batch_id}").json()
    assert batch["state"] == "completed"
    assert batch["counts"]["total"] == 1 and batch["counts"]["succeeded"] == 1
    assert [e["object_uri"].rsplit("/", 1)[-1] for e in batch["errors"]] == ["readme.txt"]


def _api_key(e2e_env: dict[str, str], tenant: str) -> str:
    from core.db import make_engine, make_sessionmaker
    from core.security import create_api_key
    from core.settings import Settings

    engine = make_engine(Settings(database_url=e2e_env["TIMEMARK_DATABASE_URL"], secret_key="x" * 32))
    try:
        with make_sessionmaker(engine)() as session:
            return create_api_key(session, tenant)
    finally:
        engine.dispose()


def _wait_terminal(client: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["terminal"]:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s: {job}")


def test_a_job_whose_message_was_lost_is_recovered_by_the_sweeper(
    service: Service, e2e_env: dict[str, str], s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    """The API committed the row but the broker never got `probe` (an outage): beat's sweep sends it."""

    from core.db import make_engine, make_sessionmaker
    from core.models import Job, Tenant
    from core.settings import Settings
    from model_runtime.video import make_synthetic_video

    video = make_synthetic_video(tmp_path / "lost.mp4", duration_s=8.0, seed=31, width=160, height=96)
    source = upload_video(s3_endpoint, s3_bucket, video.path)
    tenant_name = f"lost-{uuid.uuid4().hex[:8]}"
    api_key = _api_key(e2e_env, tenant_name)
    engine = make_engine(Settings(database_url=e2e_env["TIMEMARK_DATABASE_URL"], secret_key="x" * 32))
    with make_sessionmaker(engine)() as session:
        tenant = session.query(Tenant).filter_by(name=tenant_name).one()
        job = Job(
            tenant_id=tenant.id,
            source=source,
            source_uri=source,
            queries=["When does the red circle appear?"],
            sampling=dict(SAMPLING),
            strategy="chunked",
        )  # a committed row with enqueued_at NULL and no message anywhere
        session.add(job)
        session.commit()
        job_id = str(job.id)
    engine.dispose()
    with httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as client:
        finished = _wait_terminal(client, job_id)
    assert finished["state"] == "succeeded", finished


def test_cancel_stops_a_running_job_between_chunks(
    service: Service,
    e2e_env: dict[str, str],
    s3_endpoint: str,
    s3_bucket: str,
    webhook_receiver: Any,
    tmp_path: Path,
) -> None:

    from core.webhooks import generate_secret
    from model_runtime.video import make_synthetic_video

    video = make_synthetic_video(tmp_path / "long.mp4", duration_s=40.0, seed=41, width=160, height=96)
    source = upload_video(s3_endpoint, s3_bucket, video.path)
    api_key = _api_key(e2e_env, f"cancel-{uuid.uuid4().hex[:8]}")
    secret = generate_secret()
    with httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as client:
        job_id = client.post(
            "/v1/jobs",
            json={
                "source": source,
                "queries": ["When does the red circle appear?", "When does the blue square appear?"],
                "sampling": SAMPLING,
                "webhook": {"url": webhook_receiver.url, "secret": secret},
            },
        ).json()["id"]
        deadline = time.monotonic() + 90
        while (job := client.get(f"/v1/jobs/{job_id}").json())["progress"]["chunks_done"] < 1:
            assert time.monotonic() < deadline and not job["terminal"], job
            time.sleep(0.2)
        assert client.post(f"/v1/jobs/{job_id}:cancel").status_code == 202
        finished = _wait_terminal(client, job_id, timeout_s=60)
        assert finished["state"] == "canceled"
        assert finished["progress"]["chunks_done"] < finished["progress"]["chunks_total"]
        (request,) = webhook_receiver.wait_for(1, timeout_s=30)
    assert Webhook(secret).verify(request.body, request.headers)["type"] == "job.canceled"
