"""Batch ingest from a moto S3 prefix: one job per video object, ETag dedupe, per-item errors, paging."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from core.models import Batch, BatchItem, Delivery, Job
from core.queue import queue_length
from core.webhooks import generate_secret
from workers.ingest import ingest_batch

TEMPLATE = {"task": "grounding", "queries": ["When does the red circle appear?"], "sampling": {"fps": 1.0}}


def _batch(session_factory: Any, tenant: uuid.UUID, prefix: str, **extra: Any) -> uuid.UUID:
    with session_factory() as session:
        batch = Batch(
            tenant_id=tenant, source_prefix=prefix, job_template=dict(TEMPLATE), max_objects=5000, **extra
        )
        session.add(batch)
        session.commit()
        return batch.id


def _queue_messages(settings: Any, queue: str) -> int:
    return int(queue_length(queue, settings))


def test_one_job_per_distinct_video_and_errors_per_item(
    ctx: Any,
    session_factory: Any,
    tenant: uuid.UUID,
    s3: Any,
    s3_bucket: str,
    synthetic_video: Any,
) -> None:
    prefix = f"batch-{uuid.uuid4().hex[:8]}/"
    video = synthetic_video[0].read_bytes()
    s3.put_object(Bucket=s3_bucket, Key=prefix + "a.mp4", Body=video)
    s3.put_object(Bucket=s3_bucket, Key=prefix + "copy-of-a.mp4", Body=video)  # same ETag: one job
    s3.put_object(Bucket=s3_bucket, Key=prefix + "sub/b.mp4", Body=video + b"\0")  # other bytes: own job
    s3.put_object(Bucket=s3_bucket, Key=prefix + "notes.txt", Body=b"just some text, not a video\n")
    s3.put_object(Bucket=s3_bucket, Key=prefix + "empty.mp4", Body=b"")
    batch_id = _batch(session_factory, tenant, f"s3://{s3_bucket}/{prefix}")
    before = _queue_messages(ctx.settings, "cpu")

    assert ingest_batch(ctx, str(batch_id)) == []

    with session_factory() as session:
        batch = session.get(Batch, batch_id)
        items = session.scalars(select(BatchItem).where(BatchItem.batch_id == batch_id)).all()
        jobs = session.scalars(select(Job).where(Job.batch_id == batch_id)).all()
    assert batch.state == "running" and batch.items_total == 4
    assert len(jobs) == 2
    assert {j.source_uri.rsplit("/", 1)[-1] for j in jobs} <= {"a.mp4", "copy-of-a.mp4", "b.mp4"}
    assert all(j.state == "queued" and j.enqueued_at is not None for j in jobs)
    assert all(j.queries == TEMPLATE["queries"] and j.sampling["fps"] == 1.0 for j in jobs)
    assert all(j.sampling["max_pixels"] == ctx.settings.sampling_max_pixels for j in jobs)  # defaults filled
    errors = {i.object_uri.rsplit("/", 1)[-1]: i.error for i in items if i.job_id is None}
    assert set(errors) == {"notes.txt", "empty.mp4"}
    assert errors["notes.txt"]["type"].endswith("source-not-video")
    assert _queue_messages(ctx.settings, "cpu") - before == 2  # one probe per job

    # A redelivered ingest message: the batch is no longer ingesting, nothing is added.
    assert ingest_batch(ctx, str(batch_id)) == []
    with session_factory() as session:
        assert len(session.scalars(select(Job).where(Job.batch_id == batch_id)).all()) == 2


@pytest.mark.slow  # ~10 s: 1,003 objects written to and read back from moto
def test_listing_pages_past_1000_objects(
    ctx: Any, session_factory: Any, tenant: uuid.UUID, s3: Any, s3_bucket: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    prefix = f"many-{uuid.uuid4().hex[:8]}/"

    def put(i: int) -> None:  # distinct text bodies: every one an error item, none a job
        s3.put_object(Bucket=s3_bucket, Key=f"{prefix}{i:05d}.txt", Body=f"not a video {i}\n".encode())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(1003)))
    batch_id = _batch(session_factory, tenant, f"s3://{s3_bucket}/{prefix}")
    ingest_batch(ctx, str(batch_id))
    with session_factory() as session:
        batch = session.get(Batch, batch_id)
        assert batch.items_total == 1003
        # No child jobs at all: the batch completes at once.
        assert batch.state == "completed" and batch.completed_at is not None


def test_empty_batch_completes_and_announces(
    ctx: Any, session_factory: Any, tenant: uuid.UUID, s3_bucket: str, receiver: Any
) -> None:
    batch_id = _batch(
        session_factory,
        tenant,
        f"s3://{s3_bucket}/nothing-here-{uuid.uuid4().hex}/",
        webhook_url=receiver.url,
        webhook_secret=generate_secret(),
    )
    (send,) = ingest_batch(ctx, str(batch_id))
    assert send.task == "timemark.deliver"
    with session_factory() as session:
        delivery = session.get(Delivery, uuid.UUID(send.args[0]))
        assert delivery.event_type == "batch.completed" and delivery.payload["data"]["counts"]["total"] == 0


def test_missing_bucket_fails_the_batch(ctx: Any, session_factory: Any, tenant: uuid.UUID) -> None:
    batch_id = _batch(session_factory, tenant, f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x/")
    ingest_batch(ctx, str(batch_id))
    with session_factory() as session:
        batch = session.get(Batch, batch_id)
        assert batch.state == "failed" and batch.error["stage"] == "ingest"
