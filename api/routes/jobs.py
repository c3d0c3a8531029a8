"""`/v1/jobs`: submit, poll, list, cancel, delete, and read segments.

Every lookup is scoped to the caller's tenant, so another tenant's job is simply "not found" (404),
never "forbidden" (which would confirm it exists). Submission is described in `api.submission`.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer

from api import submission
from api.deps import Principal, ReadSessionDep, SessionDep, SettingsDep, StorageDep, TenantDep
from api.pagination import clamp_page_size, make_page_token, read_page_token
from api.schemas import JobCreate, JobList, JobStateName, JobView, SegmentList
from api.submission import IdempotencyKeyHeader
from api.views import job_view, segment_view
from core import queue
from core.models import FINAL_CHUNK_INDEX, Job, Segment
from core.problems import Kinds, Problem
from core.states import JobState, transition
from core.webhooks import record_job_event

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# The plan and video facts can be large JSON documents that no job view shows: never load them here.
LIGHT_JOB = (defer(Job.plan), defer(Job.video_info))
PageSize = Annotated[int | None, Query(ge=1, description="default 50; values above the maximum are clamped")]
PageToken = Annotated[str | None, Query(max_length=2048)]


def load_job(
    session: SessionDep, principal: Principal, job_id: uuid.UUID, *, for_update: bool = False
) -> Job:
    statement = select(Job).options(*LIGHT_JOB).where(Job.id == job_id, Job.tenant_id == principal.tenant_id)
    if for_update:
        statement = statement.with_for_update()
    job = session.scalar(statement)
    if job is None:
        raise Problem(Kinds.NOT_FOUND, "no such job")
    return job


@router.post("", status_code=202, response_model=JobView, summary="Submit a grounding job")
def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: TenantDep,
    storage: StorageDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobView:
    key = submission.parse_idempotency_key(idempotency_key)
    request_fingerprint = submission.fingerprint(body)
    if key is not None:
        submission.lock_idempotency_key(session, principal.tenant_id, key)
        existing = session.scalar(
            select(Job).where(Job.tenant_id == principal.tenant_id, Job.idempotency_key == key)
        )
        if existing is not None and submission.key_expired(existing, settings):
            existing.idempotency_key = None  # the old job keeps existing; its key is free again
            session.flush()
        elif existing is not None:
            return _replay(submission.replay_or_conflict(existing, request_fingerprint), response)
    submission.check_queries(body.queries, settings)
    submission.check_metadata(body.metadata, settings)
    source_uri = submission.resolve_source(body.source, principal, session, storage, settings)
    if body.webhook is not None:
        submission.check_outbound_url(body.webhook.url, settings, "webhook.url")
    quota: submission.QuotaCounter = request.app.state.quota_counter
    submission.check_quota(session, principal, settings, quota)
    secret = submission.webhook_secret_for(body)
    job = submission.build_job(
        body,
        tenant_id=principal.tenant_id,
        source=body.source,
        source_uri=source_uri,
        settings=settings,
        client_ref=body.client_ref,
        idempotency_key=key,
        request_fingerprint=request_fingerprint,
        webhook_secret=secret,
    )
    session.add(job)
    try:
        session.flush()
    except IntegrityError:
        # Another request with this key committed between our lookup and insert (SQLite path).
        session.rollback()
        existing = session.scalar(
            select(Job).where(Job.tenant_id == principal.tenant_id, Job.idempotency_key == key)
        )
        if existing is None:
            raise
        return _replay(submission.replay_or_conflict(existing, request_fingerprint), response)
    submission.commit_then_enqueue(session, job, "timemark.probe", settings)
    quota.accepted(principal.tenant_id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_view(job, webhook_secret=secret)


def _replay(job: Job, response: Response) -> JobView:
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    response.headers["Idempotent-Replayed"] = "true"
    return job_view(job, webhook_secret=job.webhook_secret)


@router.get("", response_model=JobList, summary="List jobs, newest first")
def list_jobs(
    session: ReadSessionDep,
    settings: SettingsDep,
    principal: TenantDep,
    state: Annotated[list[JobStateName] | None, Query()] = None,
    batch_id: uuid.UUID | None = None,
    client_ref: Annotated[str | None, Query(max_length=200)] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    page_size: PageSize = None,
    page_token: PageToken = None,
) -> JobList:
    filters = {
        "state": sorted(state or []),
        "batch_id": str(batch_id) if batch_id else None,
        "client_ref": client_ref,
        "created_after": _utc(created_after),
        "created_before": _utc(created_before),
    }
    position = read_page_token(page_token, "jobs", filters, settings)
    size = clamp_page_size(page_size, settings)
    statement = select(Job).options(*LIGHT_JOB).where(Job.tenant_id == principal.tenant_id)
    if state:
        statement = statement.where(Job.state.in_(state))
    if batch_id:
        statement = statement.where(Job.batch_id == batch_id)
    if client_ref is not None:
        statement = statement.where(Job.client_ref == client_ref)
    if created_after:
        statement = statement.where(Job.created_at >= _utc_dt(created_after))
    if created_before:
        statement = statement.where(Job.created_at < _utc_dt(created_before))
    if position is not None:
        after_created, after_id = _position(position)
        statement = statement.where(tuple_(Job.created_at, Job.id) < tuple_(after_created, after_id))
    rows = session.scalars(statement.order_by(Job.created_at.desc(), Job.id.desc()).limit(size + 1)).all()
    next_token = ""
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        next_token = make_page_token("jobs", filters, [last.created_at.isoformat(), str(last.id)], settings)
    return JobList(data=[job_view(job) for job in rows], next_page_token=next_token)


def _utc_dt(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _utc(value: datetime | None) -> str | None:
    return _utc_dt(value).isoformat() if value else None


def _position(position: list) -> tuple[datetime, uuid.UUID]:
    try:
        return datetime.fromisoformat(position[0]), uuid.UUID(position[1])
    except (ValueError, IndexError, TypeError) as err:
        raise Problem(Kinds.BAD_PAGE_TOKEN) from err


@router.get("/{job_id:uuid}", response_model=JobView, summary="Poll a job")
async def get_job(job_id: uuid.UUID, request: Request, principal: TenantDep) -> Response:
    # The hottest route: on PostgreSQL one prepared statement on the event loop (`api.poll`), else the
    # ORM in a worker thread; the (already validated) view is serialised once, skipping FastAPI's pass.
    reader = request.app.state.poll_reader
    if reader is not None:
        job = await reader.job(job_id, principal.tenant_id)
        if job is None:
            raise Problem(Kinds.NOT_FOUND, "no such job")
    else:
        job = await run_in_threadpool(_load_job_read_only, request, principal, job_id)
    return Response(job_view(job).model_dump_json(), media_type="application/json")


def _load_job_read_only(request: Request, principal: Principal, job_id: uuid.UUID) -> Job:
    with request.app.state.read_sessions() as session:
        return load_job(session, principal, job_id)


@router.post("/{job_id:uuid}:cancel", status_code=202, response_model=JobView, summary="Cancel a job")
def cancel_job(
    job_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: TenantDep
) -> JobView:
    """Cooperative: a queued job is canceled at once; a running one stops between chunks (`canceling`)."""
    job = load_job(session, principal, job_id, for_update=True)
    state = JobState(job.state)
    if state in (JobState.CANCELING, JobState.CANCELED):
        return job_view(job)  # asking twice is not an error
    if state.terminal:
        raise Problem(Kinds.JOB_NOT_CANCELABLE, f"the job is already {state.value}")
    job.cancel_requested_at = datetime.now(UTC)
    delivery_ids = []
    if state == JobState.QUEUED:
        transition(job, JobState.CANCELED)
        delivery_ids = record_job_event(session, job, settings)
    else:
        transition(job, JobState.CANCELING)
    session.commit()
    for delivery_id in delivery_ids:
        # If the broker is down the delivery row stays pending and due: the sweeper sends it.
        with contextlib.suppress(queue.QueueUnavailableError):
            queue.enqueue("timemark.deliver", str(delivery_id), settings=settings)
    return job_view(job)


@router.delete("/{job_id:uuid}", status_code=204, summary="Delete a finished job and its results")
def delete_job(job_id: uuid.UUID, session: SessionDep, principal: TenantDep) -> Response:
    job = load_job(session, principal, job_id, for_update=True)
    if not JobState(job.state).terminal:
        raise Problem(Kinds.JOB_NOT_TERMINAL, f"the job is {job.state}; cancel it first")
    session.delete(job)
    session.commit()
    return Response(status_code=204)


@router.get("/{job_id:uuid}/segments", response_model=SegmentList, summary="Segments found for a job")
def list_segments(
    job_id: uuid.UUID,
    session: ReadSessionDep,
    settings: SettingsDep,
    principal: TenantDep,
    min_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
    query_index: Annotated[int | None, Query(ge=0, lt=1000)] = None,
    kind: Literal["final", "chunk"] = "final",
    page_size: PageSize = None,
    page_token: PageToken = None,
) -> SegmentList:
    job = load_job(session, principal, job_id)
    filters = {"job": str(job.id), "min_confidence": min_confidence, "query_index": query_index, "kind": kind}
    position = read_page_token(page_token, "segments", filters, settings)
    size = clamp_page_size(page_size, settings)
    statement = select(Segment).where(Segment.job_id == job.id)
    if kind == "final":
        statement = statement.where(Segment.chunk_index == FINAL_CHUNK_INDEX)
        order = (Segment.query_index, Segment.ordinal, Segment.id)  # final ordinal = rank - 1
    else:
        statement = statement.where(Segment.chunk_index != FINAL_CHUNK_INDEX)
        order = (Segment.chunk_index, Segment.query_index, Segment.id)
    if min_confidence is not None:
        statement = statement.where(Segment.confidence >= min_confidence)
    if query_index is not None:
        statement = statement.where(Segment.query_index == query_index)
    if position is not None:
        if len(position) != 3 or not all(isinstance(v, int) for v in position):
            raise Problem(Kinds.BAD_PAGE_TOKEN)
        statement = statement.where(tuple_(*order) > tuple_(*position))
    rows = session.scalars(statement.order_by(*order).limit(size + 1)).all()
    next_token = ""
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        key = [int(getattr(last, column.key)) for column in order]
        next_token = make_page_token("segments", filters, key, settings)
    return SegmentList(
        job_id=job.id,
        job_state=job.state,
        data=[segment_view(s, job.queries) for s in rows],
        next_page_token=next_token,
    )
