"""The models on the real PostgreSQL: round trips and the unique keys that make retries safe."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.models import FINAL_CHUNK_INDEX, Chunk, Delivery, Job, Segment, Tenant


def make_job(tenant: Tenant, **extra) -> Job:
    return Job(
        tenant_id=tenant.id,
        source="https://example.com/v.mp4",
        source_uri="https://example.com/v.mp4",
        queries=["when does the red circle appear?"],
        sampling={"fps": 2.0},
        **extra,
    )


def test_job_roundtrip_with_chunks_and_segments(db_session) -> None:
    tenant = Tenant(name=f"t-{uuid.uuid4().hex[:8]}")
    db_session.add(tenant)
    db_session.flush()
    job = make_job(tenant, meta={"k": "v"}, client_ref="abc")
    job.chunks = [Chunk(index=0, start_s=0.0, end_s=60.0), Chunk(index=1, start_s=56.0, end_s=120.0)]
    db_session.add(job)
    db_session.flush()
    db_session.add_all(
        [
            Segment(
                job_id=job.id, chunk_index=0, query_index=0, ordinal=0, start_s=1, end_s=2, confidence=0.5
            ),
            Segment(
                job_id=job.id,
                chunk_index=FINAL_CHUNK_INDEX,
                query_index=0,
                ordinal=0,
                final=True,
                start_s=1,
                end_s=2,
                confidence=0.5,
                rank=1,
                chunk_ids=[0],
            ),
        ]
    )
    db_session.commit()
    loaded = db_session.get(Job, job.id)
    assert loaded.state == "queued" and loaded.meta == {"k": "v"} and loaded.created_at.tzinfo is not None
    assert [c.index for c in loaded.chunks] == [0, 1]
    finals = db_session.scalars(select(Segment).where(Segment.job_id == job.id, Segment.final)).all()
    assert [s.chunk_ids for s in finals] == [[0]]
    db_session.delete(loaded)
    db_session.commit()
    assert db_session.scalars(select(Segment).where(Segment.job_id == job.id)).all() == []


def test_idempotency_key_unique_per_tenant_only(db_session) -> None:
    a, b = Tenant(name=f"a-{uuid.uuid4().hex[:8]}"), Tenant(name=f"b-{uuid.uuid4().hex[:8]}")
    db_session.add_all([a, b])
    db_session.flush()
    db_session.add_all([make_job(a, idempotency_key="k1"), make_job(b, idempotency_key="k1")])
    db_session.commit()  # same key, different tenants: fine
    db_session.add(make_job(a, idempotency_key="k1"))
    with pytest.raises(IntegrityError):
        db_session.commit()


def test_segment_slot_is_unique(db_session) -> None:
    tenant = Tenant(name=f"s-{uuid.uuid4().hex[:8]}")
    db_session.add(tenant)
    db_session.flush()
    job = make_job(tenant)
    db_session.add(job)
    db_session.flush()
    for _ in range(2):
        db_session.add(
            Segment(
                job_id=job.id, chunk_index=3, query_index=0, ordinal=0, start_s=0, end_s=1, confidence=0.1
            )
        )
    with pytest.raises(IntegrityError):
        db_session.commit()


def test_delivery_event_key_unique(db_session) -> None:
    tenant = Tenant(name=f"d-{uuid.uuid4().hex[:8]}")
    db_session.add(tenant)
    db_session.flush()
    for _ in range(2):
        db_session.add(
            Delivery(
                tenant_id=tenant.id,
                event_type="job.succeeded",
                event_key="job.succeeded:x:u",
                url="https://example.com",
                payload={},
            )
        )
    with pytest.raises(IntegrityError):
        db_session.commit()
