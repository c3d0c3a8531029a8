"""The job state machine (DESIGN §3), checked in exactly one place.

    queued → probing → running → finalizing → succeeded
       │        │          │          │
       └────────┴──────────┴──────────┴──→ failed | canceling → canceled

A job still `queued` is canceled at once (no worker holds it); a job a worker holds goes to
`canceling`, and the worker moves it to `canceled` between chunks (cooperative cancel). Redelivered
Celery tasks re-enter the state they were in, so a same-state transition of a non-terminal job is an
allowed no-op; anything else not listed below raises `IllegalTransition`. `finalizing → running`
exists for the coarse-to-fine strategy's refinement pass.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, Protocol


class JobState(enum.StrEnum):
    QUEUED = "queued"
    PROBING = "probing"
    RUNNING = "running"
    FINALIZING = "finalizing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELING = "canceling"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED})
ACTIVE_STATES = frozenset(JobState) - TERMINAL_STATES

ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.PROBING, JobState.FAILED, JobState.CANCELED}),
    JobState.PROBING: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELING, JobState.CANCELED}),
    JobState.RUNNING: frozenset(
        {JobState.FINALIZING, JobState.FAILED, JobState.CANCELING, JobState.CANCELED}
    ),
    JobState.FINALIZING: frozenset(
        {JobState.SUCCEEDED, JobState.RUNNING, JobState.FAILED, JobState.CANCELING, JobState.CANCELED}
    ),
    JobState.CANCELING: frozenset({JobState.CANCELED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELED: frozenset(),
}


class IllegalTransition(Exception):
    """A code path tried to move a job along an edge the state machine does not have."""

    def __init__(self, current: JobState, new: JobState) -> None:
        super().__init__(f"illegal job transition {current.value} -> {new.value}")
        self.current = current
        self.new = new


class HasJobState(Protocol):
    """What `transition` needs of a job row (core.models.Job satisfies it)."""

    state: str
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


def can_transition(current: JobState | str, new: JobState | str) -> bool:
    current, new = JobState(current), JobState(new)
    return new in ALLOWED_TRANSITIONS[current] or (current == new and not current.terminal)


def transition(job: HasJobState | Any, new: JobState | str, *, now: datetime | None = None) -> bool:
    """Move `job` to `new`, stamping its timestamps; False when it was already there (a no-op).

    Raises `IllegalTransition` for an edge the machine does not have, including any move out of a
    terminal state. The caller holds the row (SELECT … FOR UPDATE or a conditional UPDATE) and commits.
    """
    current, new = JobState(job.state), JobState(new)
    if not can_transition(current, new):
        raise IllegalTransition(current, new)
    if current == new:
        return False
    now = now or datetime.now(UTC)
    job.state = new.value
    job.updated_at = now
    if new == JobState.PROBING and job.started_at is None:
        job.started_at = now
    if new.terminal:
        job.finished_at = now
    return True
