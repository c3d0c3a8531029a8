"""`/v1/batches`: one child job per video object under an `s3://bucket/prefix/`, deduplicated by ETag.

The API checks the request and the bucket, writes the batch (`ingesting`), commits, and enqueues
`timemark.ingest`; the worker pages through the listing, creates a `BatchItem` per object and a child
job per distinct ETag (`api.submission.build_job` with the stored template), then marks it `running`.
`GET` reports child-job counts per state and the items that could not become jobs.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response
from sqlalchemy import select

from api import submission
from api.deps import Principal, ReadSessionDep, SessionDep, SettingsDep, StorageDep, TenantDep
from api.schemas import BatchCreate, BatchView
from api.submission import IdempotencyKeyHeader
from api.views import batch_view
from core.models import Batch, BatchItem
from core.problems import Kinds, Problem
from core.storage import S3Storage, split_s3_uri
from core.webhooks import batch_counts

router = APIRouter(prefix="/v1/batches", tags=["batches"])
MAX_ERRORS_SHOWN = 100


def load_batch(session: SessionDep, principal: Principal, batch_id: uuid.UUID) -> Batch:
    batch = session.scalar(select(Batch).where(Batch.id == batch_id, Batch.tenant_id == principal.tenant_id))
    if batch is None:
        raise Problem(Kinds.NOT_FOUND, "no such batch")
    return batch


def _view(session: SessionDep, batch: Batch, *, with_secrets: bool = False) -> BatchView:
    failed = session.scalars(
        select(BatchItem)
        .where(BatchItem.batch_id == batch.id, BatchItem.job_id.is_(None), BatchItem.error.is_not(None))
        .order_by(BatchItem.id)
        .limit(MAX_ERRORS_SHOWN)
    ).all()
    counts = batch_counts(session, batch.id)
    counts["items"] = batch.items_total
    if not with_secrets:
        return batch_view(batch, counts, list(failed))
    job_hook = (batch.job_template or {}).get("webhook") or {}
    return batch_view(
        batch,
        counts,
        list(failed),
        webhook_secret=batch.webhook_secret,
        job_webhook_secret=job_hook.get("secret"),
    )


@router.post("", status_code=202, response_model=BatchView, summary="Start a batch over an S3 prefix")
def create_batch(
    body: BatchCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: TenantDep,
    storage: StorageDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> BatchView:
    key = submission.parse_idempotency_key(idempotency_key)
    request_fingerprint = submission.fingerprint(body)
    if key is not None:
        submission.lock_idempotency_key(session, principal.tenant_id, f"batch:{key}")
        existing = session.scalar(
            select(Batch).where(Batch.tenant_id == principal.tenant_id, Batch.idempotency_key == key)
        )
        if existing is not None and submission.key_expired(existing, settings):
            existing.idempotency_key = None
            session.flush()
        elif existing is not None:
            submission.replay_or_conflict(existing, request_fingerprint)
            response.headers["Location"] = f"/v1/batches/{existing.id}"
            response.headers["Idempotent-Replayed"] = "true"
            return _view(session, existing, with_secrets=True)
    if body.max_objects > settings.batch_max_objects:
        raise Problem(Kinds.VALIDATION, f"max_objects may be at most {settings.batch_max_objects}")
    submission.check_queries(body.job.queries, settings)
    submission.check_metadata(body.metadata, settings)
    submission.check_metadata(body.job.metadata, settings)
    submission.sampling_with_defaults(body.job.sampling, settings)  # refuse bad combinations now
    bucket, _ = split_s3_uri(body.source)
    if not isinstance(storage, S3Storage):
        raise Problem(Kinds.VALIDATION, "this server keeps objects in a local folder: batches need S3")
    if not storage.bucket_exists(bucket):
        raise Problem(Kinds.SOURCE_NOT_FOUND, f"bucket {bucket!r} does not exist")
    for spec, field in ((body.webhook, "webhook.url"), (body.job.webhook, "job.webhook.url")):
        if spec is not None:
            submission.check_outbound_url(spec.url, settings, field)
    template = body.job.model_dump(mode="json")
    if body.job.webhook is not None:
        # Children share one secret, fixed now so every child's deliveries verify with it.
        template["webhook"]["secret"] = submission.webhook_secret_for(body.job)
    secret = submission.webhook_secret_for(body)
    batch = Batch(
        id=uuid.uuid4(),
        tenant_id=principal.tenant_id,
        source_prefix=body.source,
        job_template=template,
        max_objects=body.max_objects,
        meta=body.metadata,
        client_ref=body.client_ref,
        idempotency_key=key,
        request_fingerprint=request_fingerprint,
        webhook_url=body.webhook.url if body.webhook else None,
        webhook_secret=secret,
    )
    session.add(batch)
    submission.commit_then_enqueue(session, batch, "timemark.ingest", settings)
    response.headers["Location"] = f"/v1/batches/{batch.id}"
    return _view(session, batch, with_secrets=True)


@router.get("/{batch_id:uuid}", response_model=BatchView, summary="A batch with counts and per-item errors")
def get_batch(batch_id: uuid.UUID, session: ReadSessionDep, principal: TenantDep) -> BatchView:
    return _view(session, load_batch(session, principal, batch_id))
