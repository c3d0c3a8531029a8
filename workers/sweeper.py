"""The beat `sweep` task: find work whose queue message was lost and send it again; end what cannot end.

The database says what should be happening; the broker may have forgotten (Redis restarted without
its data, a publish failed after a commit, a worker died past the visibility timeout). A message is
re-sent only when its queue is empty — a non-empty queue may still hold it, and every task is
idempotent anyway, so the empty-queue rule just keeps a long backlog from filling with duplicates.
What the sweep does, each with a bounded batch per run:
- jobs `queued` (or `probing` past a task's time limit) → `probe` again;
- chunks `pending` of a running job (or `running` past the hard time limit) → `infer` again, unless the
  chunk has used its attempts: then the job fails;
- jobs `finalizing` or `canceling` left alone too long → `finalize` again / `canceled`;
- deliveries due (`next_attempt_at` passed) → `deliver`.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from core.db import session_scope
from core.models import Chunk, Delivery, Job
from core.queue import CPU_QUEUE, GPU_QUEUE, queue_length
from core.states import JobState
from workers.context import WorkerContext
from workers.lifecycle import Send, cancel_job, fail_job, lock_job, stage_error, utcnow

SWEEP_LIMIT = 500  # rows of each kind per run; the next run takes the rest


def sweep(ctx: WorkerContext) -> list[Send]:
    """One pass; returns the messages to send (the caller sends them after the commits)."""
    settings = ctx.settings
    cpu_empty = queue_length(CPU_QUEUE, settings) == 0
    gpu_empty = queue_length(GPU_QUEUE, settings) == 0
    sends: list[Send] = []
    sends += _stale_queued_jobs(ctx, cpu_empty)
    sends += _stuck_chunks(ctx, gpu_empty)
    sends += _stuck_finalizing_and_canceling(ctx, cpu_empty)
    sends += _due_deliveries(ctx)
    return sends


def _stale_queued_jobs(ctx: WorkerContext, cpu_empty: bool) -> list[Send]:
    if not cpu_empty:
        return []
    settings = ctx.settings
    now = utcnow()
    stale = now - timedelta(seconds=settings.queued_stale_after_s)
    probe_stuck = now - timedelta(seconds=settings.task_time_limit_s * 2)
    with session_scope(ctx.session_factory) as session:
        ids = session.scalars(
            select(Job.id)
            .where(
                or_(
                    (Job.state == JobState.QUEUED) & (func.coalesce(Job.enqueued_at, Job.created_at) < stale),
                    (Job.state == JobState.PROBING) & (Job.updated_at < probe_stuck),
                )
            )
            .limit(SWEEP_LIMIT)
        ).all()
        if ids:
            session.execute(update(Job).where(Job.id.in_(ids)).values(enqueued_at=now))
    return [Send("timemark.probe", (str(job_id),)) for job_id in ids]


def _stuck_chunks(ctx: WorkerContext, gpu_empty: bool) -> list[Send]:
    settings = ctx.settings
    now = utcnow()
    # No task outlives the hard limit (the child is killed), so a chunk still `running` after it plus a
    # margin lost its message (e.g. Redis restarted empty). The margin scales with short limits: a fixed
    # 60 s made recovery after a broker restart take over a minute even with 15 s tasks.
    lost_running = now - timedelta(seconds=settings.task_time_limit_s + min(60, settings.task_time_limit_s))
    stale = now - timedelta(seconds=settings.queued_stale_after_s)
    sends: list[Send] = []
    with session_scope(ctx.session_factory) as session:
        conditions = [(Chunk.state == "running") & (Chunk.started_at < lost_running)]
        if gpu_empty:
            conditions.append((Chunk.state == "pending") & (Job.updated_at < stale))
        rows = session.execute(
            select(Chunk.job_id, Chunk.index, Chunk.attempts)
            .join(Job, Job.id == Chunk.job_id)
            .where(Job.state == JobState.RUNNING, or_(*conditions))
            .limit(SWEEP_LIMIT)
        ).all()
        exhausted = {job_id for job_id, _, attempts in rows if attempts >= settings.chunk_max_attempts}
        for job_id in exhausted:
            sends += _fail_exhausted(session, ctx, job_id)
        for job_id, index, _attempts in rows:
            if job_id not in exhausted:
                sends.append(Send("timemark.infer", (str(job_id), index)))
        # Touch the jobs so the same pending chunks are not re-sent on every sweep.
        touched = {job_id for job_id, _, _ in rows} - exhausted
        if touched:
            session.execute(update(Job).where(Job.id.in_(touched)).values(updated_at=now))
    return sends


def _fail_exhausted(session: Session, ctx: WorkerContext, job_id: uuid.UUID) -> list[Send]:
    job = lock_job(session, job_id)
    if job is None or job.state != JobState.RUNNING:
        return []
    detail = f"a chunk used all {ctx.settings.chunk_max_attempts} attempts without finishing"
    return fail_job(
        session, job, stage_error("chunk-attempts-exhausted", detail, stage="infer"), ctx.settings
    )


def _stuck_finalizing_and_canceling(ctx: WorkerContext, cpu_empty: bool) -> list[Send]:
    settings = ctx.settings
    now = utcnow()
    stale = now - timedelta(seconds=settings.queued_stale_after_s)
    sends: list[Send] = []
    with session_scope(ctx.session_factory) as session:
        rows = session.execute(
            select(Job.id, Job.state)
            .where(Job.state.in_([JobState.FINALIZING, JobState.CANCELING]), Job.updated_at < stale)
            .limit(SWEEP_LIMIT)
        ).all()
        for job_id, state in rows:
            if state == JobState.FINALIZING and cpu_empty:
                sends.append(Send("timemark.finalize", (str(job_id),)))
            elif state == JobState.CANCELING:
                # No chunk task came by to finish the cancel (all were done or lost): finish it here.
                job = lock_job(session, job_id)
                if job is not None and job.state == JobState.CANCELING:
                    sends += cancel_job(session, job, settings)
    return sends


def _due_deliveries(ctx: WorkerContext) -> list[Send]:
    now = utcnow()
    with session_scope(ctx.session_factory) as session:
        ids = session.scalars(
            select(Delivery.id)
            .where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
            .order_by(Delivery.next_attempt_at)
            .limit(SWEEP_LIMIT)
        ).all()
    return [Send("timemark.deliver", (str(delivery_id),)) for delivery_id in ids]
