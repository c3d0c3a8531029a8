"""Shared moves of a job's life that every task needs: lock it, fail it, cancel it, and the outbox.

Each task body runs short transactions and returns the messages it wants sent as `Send`s; the task
wrapper sends them only after the transaction committed (a worker never enqueues work that refers to
rows another process cannot see yet). Terminal moves write their webhook deliveries in the same
transaction (`core.webhooks.record_job_event`), so the event and the state change commit together.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Chunk, Job
from core.problems import job_error
from core.settings import Settings
from core.states import JobState, transition
from core.webhooks import record_job_event


@dataclass(frozen=True)
class Send:
    """A task message to send after the commit."""

    task: str
    args: tuple[Any, ...]
    countdown: float | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_id(value: str | uuid.UUID) -> uuid.UUID | None:
    """A task argument as a UUID; None for garbage (a hand-sent message must not crash the worker)."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def lock_job(session: Session, job_id: str | uuid.UUID) -> Job | None:
    """The job row, locked for this transaction (SELECT … FOR UPDATE; SQLite locks the file on write)."""
    key = parse_id(job_id)
    if key is None:
        return None
    return session.get(Job, key, with_for_update=True, populate_existing=True)


def lock_chunk(session: Session, job_id: uuid.UUID, index: int) -> Chunk | None:
    return session.scalar(
        select(Chunk)
        .where(Chunk.job_id == job_id, Chunk.index == index)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def deliveries_to_send(delivery_ids: list[uuid.UUID]) -> list[Send]:
    return [Send("timemark.deliver", (str(delivery_id),)) for delivery_id in delivery_ids]


def fail_job(session: Session, job: Job, error: dict[str, Any], settings: Settings) -> list[Send]:
    """Move a non-terminal job to `failed` with a problem document; returns the deliveries to send."""
    if JobState(job.state).terminal:
        return []
    job.error = error
    job.stage = error.get("stage", job.stage)
    transition(job, JobState.FAILED)
    return deliveries_to_send(record_job_event(session, job, settings))


def cancel_job(session: Session, job: Job, settings: Settings) -> list[Send]:
    """Finish a cooperative cancel: `canceling` (or a still-queued job) becomes `canceled`."""
    if JobState(job.state).terminal:
        return []
    transition(job, JobState.CANCELED)
    return deliveries_to_send(record_job_event(session, job, settings))


def stage_error(code: str, detail: str, *, stage: str, retryable: bool = False) -> dict[str, Any]:
    """A failed job's `error` (RFC 9457 + stage), one line of detail."""
    return job_error(code, " ".join(detail.split())[:500], stage=stage, retryable=retryable)
