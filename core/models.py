"""SQLAlchemy 2 models: the database is the source of truth for tenants, jobs, chunks, results, deliveries.

Celery only carries ids (DESIGN §2); every fact a user can poll lives in these tables. Types are
portable (`Uuid`, `JSON`, timezone-aware `DateTime`) so the same models run on PostgreSQL and on
SQLite in embedded mode. Keys that make retries safe are unique constraints, not conventions:
(tenant, idempotency key) for submissions, (job, chunk index) for chunks, (job, chunk index, query,
ordinal) for segments, (batch, etag) for batch items, `event_key` for deliveries.
Final segments (after merging across chunks) use `chunk_index = FINAL_CHUNK_INDEX` and `final=True`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from core.states import JobState

FINAL_CHUNK_INDEX = -1  # chunk_index of merged, final segments

# Stable constraint names, so Alembic migrations and autogenerate agree on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only autoincrements INTEGER PRIMARY KEY, so big ids are plain integers there.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = DateTime(timezone=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: Timestamp}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)  # None: Settings.tenant_max_active_jobs
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key stored as SHA-256 of its secret part; `prefix` is the public lookup half."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]

    tenant: Mapped[Tenant] = relationship(lazy="joined")


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="receiving")  # receiving | complete | failed
    filename: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    storage_uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(
        String(16), default="ingesting"
    )  # ingesting | running | completed | failed
    source_prefix: Mapped[str] = mapped_column(Text)
    job_template: Mapped[dict[str, Any]] = mapped_column(default=dict)  # JobCreate fields minus the source
    max_objects: Mapped[int] = mapped_column(Integer)
    items_total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[dict[str, Any] | None]
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    client_ref: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None]


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_tenant_state", "tenant_id", "state"),
        Index("ix_jobs_state_enqueued", "state", "enqueued_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("batches.id", ondelete="SET NULL"), index=True
    )

    # lifecycle (core.states.transition moves `state`)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    stage: Mapped[str | None] = mapped_column(String(32))  # probe | infer | finalize | deliver
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[dict[str, Any] | None]  # RFC 9457 fields + stage + retryable
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # probe attempts
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    enqueued_at: Mapped[datetime | None]  # last time a probe message was sent (or, at submit, about to be)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]

    # what the client asked for
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    client_ref: Mapped[str | None] = mapped_column(String(200), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)  # as submitted: https://…, s3://…, upload:<id>
    source_uri: Mapped[str] = mapped_column(Text)  # resolved: https://…, s3://…, file://…
    task: Mapped[str] = mapped_column(String(32), default="grounding")
    queries: Mapped[list[Any]] = mapped_column(JSON)
    sampling: Mapped[dict[str, Any]] = mapped_column(JSON)  # Keye server names: fps, min_pixels, …
    strategy: Mapped[str] = mapped_column(String(32), default="chunked")
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret: Mapped[str | None] = mapped_column(String(200))  # whsec_…; never returned after create

    # what the workers found and used
    video_info: Mapped[dict[str, Any] | None]  # model_runtime.video.VideoInfo.to_dict()
    plan: Mapped[dict[str, Any] | None]  # model_runtime.video.VideoPlan.to_dict()
    video_seconds: Mapped[float | None] = mapped_column(Float)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)

    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, order_by="Chunk.index"
    )


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | running | done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict[str, Any] | None]  # model_runtime.video.Chunk.to_dict()
    raw_outputs: Mapped[list[Any] | None]  # the engine's text per query, kept before parsing (pitfall 15)
    error: Mapped[dict[str, Any] | None]
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    job: Mapped[Job] = relationship(back_populates="chunks")


class Segment(Base):
    """One time interval answering one query: per chunk (raw) or merged (final=True)."""

    __tablename__ = "segments"
    __table_args__ = (
        UniqueConstraint("job_id", "chunk_index", "query_index", "ordinal"),
        Index("ix_segments_job_final_query", "job_id", "final", "query_index", "rank"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    chunk_index: Mapped[int] = mapped_column(Integer)  # FINAL_CHUNK_INDEX for final segments
    query_index: Mapped[int] = mapped_column(Integer)
    ordinal: Mapped[int] = mapped_column(Integer)  # position among this (chunk, query)'s answers
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    rank: Mapped[int | None] = mapped_column(Integer)  # 1 = best, per query; final segments only
    chunk_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BatchItem(Base):
    __tablename__ = "batch_items"
    __table_args__ = (UniqueConstraint("batch_id", "etag"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    object_uri: Mapped[str] = mapped_column(Text)
    etag: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    error: Mapped[dict[str, Any] | None]  # problem document when no job could be made
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEndpoint(Base):
    """A tenant-level subscription: every event of `events` for the tenant's jobs and batches."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(200))  # whsec_…
    events: Mapped[list[Any]] = mapped_column(JSON, default=list)  # empty: all events
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]


class Delivery(Base):
    """One event to one URL; `id` doubles as the stable `webhook-id` across retries."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_state_next", "state", "next_attempt_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="SET NULL"), index=True
    )
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("batches.id", ondelete="SET NULL"), index=True
    )
    event_type: Mapped[str] = mapped_column(
        String(64)
    )  # job.succeeded | job.failed | job.canceled | batch.completed
    event_key: Mapped[str] = mapped_column(String(300), unique=True)  # one delivery per (event, subject, url)
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | succeeded | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None]

    attempt_log: Mapped[list[DeliveryAttempt]] = relationship(
        back_populates="delivery",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="DeliveryAttempt.number",
    )


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "number"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)  # 1-based
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)  # connection error, timeout, SSRF refusal, …
    response_excerpt: Mapped[str | None] = mapped_column(Text)

    delivery: Mapped[Delivery] = relationship(back_populates="attempt_log")
