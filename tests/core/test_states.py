"""The job state machine: every legal edge works and stamps timestamps, every other edge raises."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from core.states import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    IllegalTransition,
    JobState,
    can_transition,
    transition,
)


@dataclass
class FakeRow:
    state: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime = datetime(2020, 1, 1, tzinfo=UTC)


def test_happy_path_stamps_started_and_finished() -> None:
    job = FakeRow(state="queued")
    for state in ("probing", "running", "finalizing", "succeeded"):
        assert transition(job, state) is True
    assert job.state == "succeeded"
    assert job.started_at is not None and job.finished_at is not None
    assert job.finished_at >= job.started_at


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
@pytest.mark.parametrize("target", list(JobState))
def test_terminal_states_never_move(terminal: JobState, target: JobState) -> None:
    with pytest.raises(IllegalTransition):
        transition(FakeRow(state=terminal.value), target)


def test_redelivery_self_transition_is_a_noop() -> None:
    job = FakeRow(state="running")
    assert transition(job, JobState.RUNNING) is False
    assert job.state == "running" and job.updated_at.year == 2020


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("queued", "running"),
        ("queued", "succeeded"),
        ("probing", "finalizing"),
        ("canceling", "running"),
        ("canceling", "succeeded"),
        ("running", "queued"),
    ],
)
def test_illegal_edges_raise(current: str, target: str) -> None:
    job = FakeRow(state=current)
    with pytest.raises(IllegalTransition, match=f"{current} -> {target}"):
        transition(job, target)
    assert job.state == current


def test_every_non_terminal_state_can_fail_and_only_queued_skips_canceling() -> None:
    for state in set(JobState) - TERMINAL_STATES:
        assert can_transition(state, JobState.FAILED)
    assert JobState.CANCELED in ALLOWED_TRANSITIONS[JobState.QUEUED]
    assert JobState.CANCELING not in ALLOWED_TRANSITIONS[JobState.QUEUED]


def test_unknown_state_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        transition(FakeRow(state="queued"), "exploded")
