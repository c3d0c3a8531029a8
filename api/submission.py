"""Accepting work: source checks, Idempotency-Key semantics, tenant quota, write-then-enqueue.

Idempotency (IETF draft, spec §3.2): the key is 1–255 visible ASCII characters (a structured-field
string's quotes are accepted); the request's fingerprint is SHA-256 of its validated, canonical JSON.
Same key + same fingerprint → the original resource; same key + another fingerprint → 422; a request
arriving while the first one's transaction is still open → 409 (a PostgreSQL advisory lock on
(tenant, key) detects it). Keys stay valid for as long as the job exists.

Queue consistency: the row is committed first, then the task is sent. If the broker refuses, the row
is deleted again and the client gets 503 + Retry-After (so a client retrying without a key does not
get a duplicate); if even that delete fails, the row stays `queued` and the sweeper, which re-sends
`queued` jobs older than `queued_stale_after_s` once the queue is empty, sends it later. Either way no
job exists that no message will ever reach. `enqueued_at` is stamped in the INSERT (one transaction
per submission, not two).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Header
from pydantic import BaseModel
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.deps import Principal
from api.schemas import JobCreate, JobTemplate, Sampling
from core import queue
from core.media import not_video_reason
from core.models import Job, Upload
from core.problems import Kinds, Problem
from core.security import UnsafeURLError, check_url
from core.settings import Settings
from core.states import ACTIVE_STATES
from core.storage import ObjectNotFound, S3Storage, split_s3_uri
from core.webhooks import generate_secret

IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
IDEMPOTENCY_DOC = (
    "1-255 visible ASCII characters (a UUID is best); a malformed key is 400. The same key with the "
    "same body returns the original resource; with another body, 422; while the first request is in "
    "flight, 409. A key stays valid for TIMEMARK_IDEMPOTENCY_TTL_S (default 24 h) after its resource was created."
)
# Documented only: the route parses the key itself, so a malformed one is a 400 problem, not a 422.
KEY_SCHEMA = {"pattern": '^"?[!-~]{1,255}"?$'}
# The header as POST /v1/jobs and POST /v1/batches declare it (validated by `parse_idempotency_key`).
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", max_length=1024, description=IDEMPOTENCY_DOC, json_schema_extra=KEY_SCHEMA
    ),
]


def parse_idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]  # RFC 8941 sf-string form: "…"
    if not IDEMPOTENCY_KEY_PATTERN.match(value):
        raise Problem(Kinds.IDEMPOTENCY_KEY_INVALID, "Idempotency-Key must be 1-255 visible ASCII characters")
    return value


def fingerprint(body: BaseModel) -> str:
    canonical = json.dumps(
        body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def lock_idempotency_key(session: Session, tenant_id: uuid.UUID, key: str) -> None:
    """Take a transaction-scoped advisory lock for (tenant, key), or answer 409 if another request holds it."""
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite serialises writers on its own
    digest = hashlib.sha256(f"{tenant_id}:{key}".encode()).digest()
    lock_id = int.from_bytes(digest[:8], "big", signed=True)
    if not session.scalar(text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": lock_id}):
        raise Problem(Kinds.IDEMPOTENCY_IN_PROGRESS, headers={"Retry-After": "1"})


def replay_or_conflict(existing: Any, request_fingerprint: str) -> Any:
    if existing.request_fingerprint != request_fingerprint:
        raise Problem(
            Kinds.IDEMPOTENCY_KEY_REUSED, "this Idempotency-Key was used with a different request body"
        )
    return existing


def key_expired(existing: Any, settings: Settings) -> bool:
    """True when `existing`'s Idempotency-Key is older than the published validity window."""
    created = existing.created_at if existing.created_at.tzinfo else existing.created_at.replace(tzinfo=UTC)
    return datetime.now(UTC) - created > timedelta(seconds=settings.idempotency_ttl_s)


def sampling_with_defaults(sampling: Sampling, settings: Settings) -> dict[str, Any]:
    merged = dict(settings.sampling_defaults)
    merged.update(sampling.model_dump(exclude_none=True))
    if merged["min_pixels"] > merged["max_pixels"]:
        raise Problem(Kinds.VALIDATION, "sampling.min_pixels must not exceed sampling.max_pixels")
    if merged["max_frames"] is not None and merged["min_frames"] > merged["max_frames"]:
        raise Problem(Kinds.VALIDATION, "sampling.min_frames must not exceed sampling.max_frames")
    return merged


def check_outbound_url(url: str, settings: Settings, field: str) -> None:
    try:
        check_url(url, settings)
    except UnsafeURLError as err:
        raise Problem(Kinds.UNSAFE_URL, f"{field}: {err.detail}", code=err.code) from err


def check_metadata(metadata: dict[str, Any], settings: Settings) -> None:
    size = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
    if size > settings.max_metadata_bytes:
        raise Problem(
            Kinds.VALIDATION, f"metadata is {size} bytes as JSON; the limit is {settings.max_metadata_bytes}"
        )


def check_queries(queries: list[str], settings: Settings) -> None:
    if len(queries) > settings.max_queries_per_job:
        raise Problem(Kinds.VALIDATION, f"at most {settings.max_queries_per_job} queries per job")
    too_long = [i for i, q in enumerate(queries) if len(q) > settings.max_query_chars]
    if too_long:
        raise Problem(
            Kinds.VALIDATION, f"queries {too_long[:5]} exceed {settings.max_query_chars} characters"
        )


def resolve_source(
    source: str, principal: Principal, session: Session, storage: Any, settings: Settings
) -> str:
    """The URI workers will read for `source`, after checking it exists and is plausibly a video."""
    if source.startswith(("https://", "http://")):
        check_outbound_url(source, settings, "source")
        return source
    if source.startswith("upload:"):
        upload_id = _parse_uuid(source.removeprefix("upload:"))
        upload = session.scalar(
            select(Upload).where(Upload.id == upload_id, Upload.tenant_id == principal.tenant_id)
        )
        if upload is None or upload.state != "complete":
            raise Problem(Kinds.SOURCE_NOT_FOUND, f"no completed upload {source}")
        return upload.storage_uri
    if not isinstance(storage, S3Storage):
        raise Problem(
            Kinds.VALIDATION, "this server keeps objects in a local folder: s3:// sources are not available"
        )
    split_s3_uri(source)
    try:
        head = storage.read_head(source, 64)
    except ObjectNotFound as err:
        raise Problem(Kinds.SOURCE_NOT_FOUND, f"{source} does not exist") from err
    reason = not_video_reason(head)
    if reason is not None:
        raise Problem(Kinds.SOURCE_NOT_VIDEO, f"{source}: {reason}")
    return source


def _parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as err:
        raise Problem(Kinds.SOURCE_NOT_FOUND, f"no upload {value!r}") from err


class QuotaCounter:
    """Active jobs per tenant, counted in the database at most once per `ttl_s` per process.

    Between counts, jobs this process accepted are added locally, so a burst cannot overshoot by more
    than what other API processes accept within `ttl_s`: the quota is soft by that margin, and the
    submit path is spared a count over a tenant's whole backlog on every request.
    """

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._counts: dict[uuid.UUID, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def active(self, session: Session, tenant_id: uuid.UUID, limit: int) -> int:
        now = time.monotonic()
        with self._lock:
            cached = self._counts.get(tenant_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        # Count at most `limit` rows: the check costs the same with 10 or 100,000 jobs waiting.
        active_rows = (
            select(Job.id)
            .where(Job.tenant_id == tenant_id, Job.state.in_([s.value for s in ACTIVE_STATES]))
            .limit(limit)
            .subquery()
        )
        count = int(session.scalar(select(func.count()).select_from(active_rows)) or 0)
        with self._lock:
            self._counts[tenant_id] = (count, now + self._ttl_s)
        return count

    def accepted(self, tenant_id: uuid.UUID) -> None:
        with self._lock:
            cached = self._counts.get(tenant_id)
            if cached is not None:
                self._counts[tenant_id] = (cached[0] + 1, cached[1])


def check_quota(session: Session, principal: Principal, settings: Settings, counter: QuotaCounter) -> None:
    limit = principal.max_active_jobs or settings.tenant_max_active_jobs
    active = counter.active(session, principal.tenant_id, limit)
    if active >= limit:
        retry_after = settings.quota_retry_after_s
        raise Problem(
            Kinds.QUOTA_EXCEEDED,
            f"{active} active jobs; the limit is {limit}",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )


def build_job(
    body: JobCreate | JobTemplate,
    *,
    tenant_id: uuid.UUID,
    source: str,
    source_uri: str,
    settings: Settings,
    client_ref: str | None = None,
    batch_id: uuid.UUID | None = None,
    idempotency_key: str | None = None,
    request_fingerprint: str | None = None,
    webhook_secret: str | None = None,
) -> Job:
    """A new `queued` job row from a validated request (or a batch's template plus one object)."""
    webhook_url = body.webhook.url if body.webhook else None
    return Job(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        batch_id=batch_id,
        source=source,
        source_uri=source_uri,
        task=body.task,
        queries=list(body.queries),
        sampling=sampling_with_defaults(body.sampling, settings),
        strategy=body.strategy or settings.default_strategy,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret if webhook_url else None,
        meta=body.metadata,
        client_ref=client_ref,
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
        enqueued_at=datetime.now(UTC),  # the send follows the commit; the sweeper covers a lost one
    )


def webhook_secret_for(body: JobCreate | JobTemplate) -> str | None:
    if body.webhook is None:
        return None
    return body.webhook.secret or generate_secret()


def commit_then_enqueue(session: Session, row: Any, task_name: str, settings: Settings) -> None:
    """Commit `row` (already added), then send `task_name(row.id)`; 503 if the broker is down."""
    session.commit()
    try:
        queue.enqueue(task_name, str(row.id), settings=settings)
    except queue.QueueUnavailableError:
        try:
            session.execute(delete(type(row)).where(type(row).id == row.id))
            session.commit()
        except SQLAlchemyError:
            session.rollback()  # the row stays queued with enqueued_at NULL: the sweeper sends it
        raise
