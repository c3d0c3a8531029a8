"""The body of the `ingest` task: turn an `s3://bucket/prefix/` into one child job per video object.

Listing pages through the prefix (storage.list_objects, 1000 keys a page) up to the batch's
`max_objects`. Each object becomes a `BatchItem` keyed by (batch, ETag), so the same bytes under two
keys make one job and a redelivered ingest resumes without duplicates. Objects that are certainly not
video (first-bytes sniff) become items with a problem document instead of jobs. Jobs are committed
in groups, then their `probe` messages are sent; `enqueued_at` records the send for the sweeper.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select, update

from core.db import session_scope
from core.media import not_video_reason
from core.models import Batch, BatchItem, Job
from core.problems import Kinds, problem_document
from core.queue import QueueUnavailableError, enqueue
from core.settings import Settings
from core.storage import ObjectInfo, StorageError
from core.webhooks import record_batch_event
from workers.context import WorkerContext
from workers.lifecycle import Send, deliveries_to_send, parse_id, stage_error, utcnow

GROUP_SIZE = 100  # objects per transaction: bounded work lost on a crash, few round trips


def ingest_batch(ctx: WorkerContext, batch_id: str) -> list[Send]:
    """List the batch's prefix and create its child jobs; returns deliveries (an empty batch completes)."""
    settings = ctx.settings
    key = parse_id(batch_id)
    if key is None:
        return []
    with session_scope(ctx.session_factory) as session:
        batch = session.get(Batch, key, with_for_update=True, populate_existing=True)
        if batch is None or batch.state != "ingesting":
            return []
        prefix, max_objects = batch.source_prefix, batch.max_objects
        template, tenant_id = dict(batch.job_template or {}), batch.tenant_id
    try:
        for group in _groups(ctx.storage.list_objects(prefix, max_objects=max_objects), GROUP_SIZE):
            new_jobs = _add_group(ctx, key, tenant_id, template, group)
            _send_probes(ctx, new_jobs)
    except StorageError as err:
        with session_scope(ctx.session_factory) as session:
            batch = session.get(Batch, key, with_for_update=True)
            if batch is not None and batch.state == "ingesting":
                batch.state = "failed"
                batch.error = stage_error("listing-failed", str(err), stage="ingest")
        return []
    return _finish_ingest(ctx, key, settings)


def _groups(items: Iterator[ObjectInfo], size: int) -> Iterator[list[ObjectInfo]]:
    group: list[ObjectInfo] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _add_group(
    ctx: WorkerContext,
    batch_id: uuid.UUID,
    tenant_id: uuid.UUID,
    template: dict[str, Any],
    group: list[ObjectInfo],
) -> list[uuid.UUID]:
    """One transaction: new items (and jobs) for the objects of `group` not seen before."""
    new_jobs: list[uuid.UUID] = []
    with session_scope(ctx.session_factory) as session:
        seen = set(
            session.scalars(
                select(BatchItem.etag).where(
                    BatchItem.batch_id == batch_id, BatchItem.etag.in_([o.etag for o in group])
                )
            )
        )
        for obj in group:
            if obj.etag in seen:
                continue  # same bytes as an object already in this batch
            seen.add(obj.etag)
            reason = _not_video(ctx, obj)
            item = BatchItem(batch_id=batch_id, object_uri=obj.uri, etag=obj.etag, size_bytes=obj.size)
            if reason is not None:
                item.error = problem_document(Kinds.SOURCE_NOT_VIDEO, reason, object_uri=obj.uri)
            else:
                job = _child_job(ctx.settings, batch_id, tenant_id, template, obj)
                session.add(job)
                session.flush()
                item.job_id = job.id
                new_jobs.append(job.id)
            session.add(item)
    return new_jobs


def _not_video(ctx: WorkerContext, obj: ObjectInfo) -> str | None:
    if obj.size == 0:
        return "the object is empty"
    try:
        return not_video_reason(ctx.storage.read_head(obj.uri, 64))
    except StorageError:
        return None  # cannot tell here; the probe decides


def _child_job(
    settings: Settings, batch_id: uuid.UUID, tenant_id: uuid.UUID, template: dict[str, Any], obj: ObjectInfo
) -> Job:
    sampling = {k: v for k, v in (template.get("sampling") or {}).items() if v is not None}
    webhook = template.get("webhook") or {}
    return Job(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        batch_id=batch_id,
        state="queued",
        chunks_done=0,
        attempts=0,
        meta=dict(template.get("metadata") or {}),
        client_ref=obj.uri[-200:],
        source=obj.uri,
        source_uri=obj.uri,
        task=template.get("task") or "grounding",
        queries=list(template["queries"]),
        sampling={**settings.sampling_defaults, **sampling},
        strategy=template.get("strategy") or settings.default_strategy,
        webhook_url=webhook.get("url"),
        webhook_secret=webhook.get("secret"),
    )


def _send_probes(ctx: WorkerContext, job_ids: list[uuid.UUID]) -> None:
    """Send `probe` for committed jobs; a broker hiccup leaves them queued for the sweeper."""
    sent: list[uuid.UUID] = []
    for job_id in job_ids:
        try:
            enqueue("timemark.probe", str(job_id), settings=ctx.settings)
        except QueueUnavailableError:
            break
        sent.append(job_id)
    if sent:
        with session_scope(ctx.session_factory) as session:
            session.execute(update(Job).where(Job.id.in_(sent)).values(enqueued_at=utcnow()))


def _finish_ingest(ctx: WorkerContext, batch_id: uuid.UUID, settings: Settings) -> list[Send]:
    with session_scope(ctx.session_factory) as session:
        batch = session.get(Batch, batch_id, with_for_update=True, populate_existing=True)
        if batch is None or batch.state != "ingesting":
            return []
        batch.items_total = len(
            session.scalars(select(BatchItem.id).where(BatchItem.batch_id == batch_id)).all()
        )
        batch.state = "running"
        active = session.scalar(
            select(Job.id)
            .where(Job.batch_id == batch_id, Job.state.notin_(["succeeded", "failed", "canceled"]))
            .limit(1)
        )
        if active is not None:
            return []
        # Nothing left to wait for (no video objects, or every child already finished).
        batch.state = "completed"
        batch.completed_at = utcnow()
        return deliveries_to_send(record_batch_event(session, batch, settings))
