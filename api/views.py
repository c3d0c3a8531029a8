"""Turn database rows into the API's response models (the one place that decides what clients see).

Secrets never pass through here except `webhook_secret` on the create response, which callers pass
explicitly. Timecodes are `HH:MM:SS.mmm` beside the float seconds (spec §6.6).
"""

from __future__ import annotations

from api.schemas import (
    BatchItemError,
    BatchView,
    DeliveryAttemptView,
    DeliveryView,
    JobView,
    Progress,
    SegmentView,
    UploadView,
    Usage,
    WebhookView,
)
from core.models import Batch, BatchItem, Delivery, Job, Segment, Upload
from core.states import JobState


def timecode(seconds: float) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def job_view(job: Job, *, webhook_secret: str | None = None) -> JobView:
    pct = None
    if job.chunks_total:
        pct = round(100.0 * job.chunks_done / job.chunks_total, 1)
    if job.state == JobState.SUCCEEDED:
        pct = 100.0
    webhook = WebhookView(url=job.webhook_url, secret=webhook_secret) if job.webhook_url else None
    return JobView(
        id=job.id,
        state=job.state,
        terminal=JobState(job.state).terminal,
        progress=Progress(
            stage=job.stage, chunks_done=job.chunks_done, chunks_total=job.chunks_total, pct=pct
        ),
        error=job.error,
        source=job.source,
        task=job.task,
        queries=job.queries,
        sampling=job.sampling,
        strategy=job.strategy,
        webhook=webhook,
        metadata=job.meta,
        client_ref=job.client_ref,
        batch_id=job.batch_id,
        attempts=job.attempts,
        usage=Usage(video_seconds=job.video_seconds, tokens=job.tokens, gpu_seconds=job.gpu_seconds),
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        links={"self": f"/v1/jobs/{job.id}", "segments": f"/v1/jobs/{job.id}/segments"},
    )


def segment_view(segment: Segment, queries: list[str]) -> SegmentView:
    query = queries[segment.query_index] if 0 <= segment.query_index < len(queries) else ""
    return SegmentView(
        query_index=segment.query_index,
        query=query,
        start_s=round(segment.start_s, 3),
        end_s=round(segment.end_s, 3),
        start_tc=timecode(segment.start_s),
        end_tc=timecode(segment.end_s),
        confidence=segment.confidence,
        rank=segment.rank,
        chunk_ids=list(segment.chunk_ids or []),
        final=segment.final,
    )


def upload_view(upload: Upload) -> UploadView:
    return UploadView(
        id=upload.id,
        source=f"upload:{upload.id}",
        filename=upload.filename,
        content_type=upload.content_type,
        size_bytes=upload.size_bytes,
        sha256=upload.sha256,
        state=upload.state,
        created_at=upload.created_at,
    )


def batch_view(
    batch: Batch,
    counts: dict[str, int],
    failed_items: list[BatchItem],
    *,
    webhook_secret: str | None = None,
    job_webhook_secret: str | None = None,
) -> BatchView:
    webhook = WebhookView(url=batch.webhook_url, secret=webhook_secret) if batch.webhook_url else None
    job_hook = (batch.job_template or {}).get("webhook")
    job_webhook = WebhookView(url=job_hook["url"], secret=job_webhook_secret) if job_hook else None
    return BatchView(
        id=batch.id,
        state=batch.state,
        source=batch.source_prefix,
        max_objects=batch.max_objects,
        counts=counts,
        errors=[
            BatchItemError(object_uri=i.object_uri, etag=i.etag, error=i.error or {}) for i in failed_items
        ],
        error=batch.error,
        metadata=batch.meta,
        client_ref=batch.client_ref,
        webhook=webhook,
        job_webhook=job_webhook,
        created_at=batch.created_at,
        completed_at=batch.completed_at,
        links={"self": f"/v1/batches/{batch.id}", "jobs": f"/v1/jobs?batch_id={batch.id}"},
    )


def delivery_view(delivery: Delivery) -> DeliveryView:
    return DeliveryView(
        id=delivery.id,
        event_type=delivery.event_type,
        url=delivery.url,
        state=delivery.state,
        attempts=delivery.attempts,
        job_id=delivery.job_id,
        batch_id=delivery.batch_id,
        next_attempt_at=delivery.next_attempt_at,
        last_status_code=delivery.last_status_code,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
        attempt_log=[
            DeliveryAttemptView(
                number=a.number,
                started_at=a.started_at,
                duration_ms=a.duration_ms,
                status_code=a.status_code,
                error=a.error,
            )
            for a in delivery.attempt_log
        ],
    )
