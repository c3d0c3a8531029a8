"""The sweeper on real PostgreSQL + Redis: lost messages re-sent, exhausted chunks fail, due deliveries go."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import update

from core.models import Chunk, Delivery, Job
from core.queue import enqueue
from workers.sweeper import sweep


@pytest.fixture
def empty_queues(ctx: Any, worker_broker: tuple[str, str]) -> Iterator[redis.Redis]:
    """This session's cpu/gpu queues (its own key prefix) emptied; other tests sent messages there."""
    url, prefix = worker_broker
    client = redis.Redis.from_url(url.split("?", 1)[0])
    client.delete(f"{prefix}cpu", f"{prefix}gpu")
    yield client
    client.delete(f"{prefix}cpu", f"{prefix}gpu")
    client.close()


def _age_job(session_factory: Any, job_id: uuid.UUID, seconds: float, **values: Any) -> None:
    past = datetime.now(UTC) - timedelta(seconds=seconds)
    with session_factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(created_at=past, updated_at=past, enqueued_at=past, **values)
        )
        session.commit()


def _sends_for(sends: list[Any], task: str, key: str) -> list[Any]:
    return [s for s in sends if s.task == task and s.args[0] == key]


def test_queued_job_lost_by_the_broker_is_sent_again(
    ctx: Any, session_factory: Any, make_job: Any, empty_queues: redis.Redis
) -> None:
    fresh = make_job("s3://b/fresh.mp4")
    lost = make_job("s3://b/lost.mp4")
    _age_job(session_factory, lost, 3600)
    sends = sweep(ctx)
    assert len(_sends_for(sends, "timemark.probe", str(lost))) == 1
    assert _sends_for(sends, "timemark.probe", str(fresh)) == []
    with session_factory() as session:
        assert session.get(Job, lost).enqueued_at > datetime.now(UTC) - timedelta(seconds=30)
    # Just re-sent: the next sweep leaves it alone.
    assert _sends_for(sweep(ctx), "timemark.probe", str(lost)) == []


def test_nothing_is_resent_while_the_queue_still_holds_messages(
    ctx: Any, session_factory: Any, make_job: Any, empty_queues: redis.Redis
) -> None:
    waiting = make_job("s3://b/waiting.mp4")
    _age_job(session_factory, waiting, 3600)
    enqueue("timemark.probe", str(waiting), settings=ctx.settings)  # still in the broker
    assert _sends_for(sweep(ctx), "timemark.probe", str(waiting)) == []


def test_pending_chunk_resent_and_exhausted_chunk_fails_the_job(
    ctx: Any, session_factory: Any, make_job: Any, empty_queues: redis.Redis, receiver: Any
) -> None:
    from core.webhooks import generate_secret

    pending_job = make_job("s3://b/p.mp4", state="running", chunks_total=2)
    dead_job = make_job(
        "s3://b/d.mp4",
        state="running",
        chunks_total=1,
        webhook_url=receiver.url,
        webhook_secret=generate_secret(),
    )
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    with session_factory() as session:
        session.add(Chunk(job_id=pending_job, index=0, start_s=0, end_s=8, state="done", attempts=1))
        session.add(Chunk(job_id=pending_job, index=1, start_s=6, end_s=14, state="pending", attempts=0))
        session.add(
            Chunk(
                job_id=dead_job,
                index=0,
                start_s=0,
                end_s=8,
                state="running",
                attempts=ctx.settings.chunk_max_attempts,
                started_at=long_ago,
            )
        )
        session.commit()
    _age_job(session_factory, pending_job, 3600, state="running")
    _age_job(session_factory, dead_job, 3600, state="running")

    sends = sweep(ctx)
    assert [s.args for s in sends if s.task == "timemark.infer" and s.args[0] == str(pending_job)] == [
        (str(pending_job), 1)
    ]
    assert [s for s in sends if s.task == "timemark.infer" and s.args[0] == str(dead_job)] == []
    with session_factory() as session:
        job = session.get(Job, dead_job)
        assert job.state == "failed" and job.error["type"].endswith("chunk-attempts-exhausted")
        assert job.error["stage"] == "infer"
        delivery = session.query(Delivery).filter(Delivery.job_id == dead_job).one()
        assert delivery.event_type == "job.failed"
    assert any(s.task == "timemark.deliver" and s.args[0] == str(delivery.id) for s in sends)


def test_stuck_canceling_job_is_finished(
    ctx: Any, session_factory: Any, make_job: Any, empty_queues: redis.Redis
) -> None:
    job_id = make_job("s3://b/c.mp4", state="canceling")
    _age_job(session_factory, job_id, 3600, state="canceling")
    sweep(ctx)
    with session_factory() as session:
        assert session.get(Job, job_id).state == "canceled"


def test_due_delivery_is_sent(
    ctx: Any, session_factory: Any, make_job: Any, empty_queues: redis.Redis
) -> None:
    job_id = make_job("s3://b/x.mp4")
    with session_factory() as session:
        tenant_id = session.get(Job, job_id).tenant_id
        due = Delivery(
            tenant_id=tenant_id,
            job_id=job_id,
            event_type="job.succeeded",
            event_key=f"test:{uuid.uuid4()}",
            url="http://127.0.0.1:9/x",
            payload={},
            next_attempt_at=datetime.now(UTC) - timedelta(seconds=5),
        )
        later = Delivery(
            tenant_id=tenant_id,
            job_id=job_id,
            event_type="job.succeeded",
            event_key=f"test:{uuid.uuid4()}",
            url="http://127.0.0.1:9/x",
            payload={},
            next_attempt_at=datetime.now(UTC) + timedelta(hours=1),
        )
        session.add_all([due, later])
        session.commit()
    sends = sweep(ctx)
    assert len(_sends_for(sends, "timemark.deliver", str(due.id))) == 1
    assert _sends_for(sends, "timemark.deliver", str(later.id)) == []


def test_stuck_finalizing_job_gets_finalize_again(
    ctx: Any, session_factory: Any, make_job: Any, empty_queues: redis.Redis
) -> None:
    job_id = make_job("s3://b/f.mp4", state="finalizing")
    _age_job(session_factory, job_id, 3600, state="finalizing")
    assert len(_sends_for(sweep(ctx), "timemark.finalize", str(job_id))) == 1
