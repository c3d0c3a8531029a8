"""Webhook delivery against a real HTTP receiver: signatures, attempts, backoff, 410, redirects, SSRF."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from core.models import Delivery, DeliveryAttempt, Job, WebhookEndpoint
from core.states import JobState, transition
from core.webhooks import generate_secret, record_job_event
from workers.delivery import deliver_event

from .conftest import free_port


def _finished_job(
    session_factory: Any, make_job: Any, settings: Any, *, url: str, endpoint_url: str | None = None
) -> tuple[uuid.UUID, list[uuid.UUID], str]:
    """A failed job with an inline webhook (and optionally a tenant endpoint); returns its deliveries."""
    secret = generate_secret()
    job_id = make_job("s3://b/k.mp4", webhook_url=url, webhook_secret=secret)
    with session_factory() as session:
        job = session.get(Job, job_id)
        if endpoint_url:
            session.add(
                WebhookEndpoint(
                    tenant_id=job.tenant_id, url=endpoint_url, secret=generate_secret(), events=["job.failed"]
                )
            )
            session.flush()
        job.error = {"type": "x", "title": "t", "detail": "bad video", "stage": "probe"}
        transition(job, JobState.FAILED)
        ids = record_job_event(session, job, settings)
        session.commit()
    return job_id, ids, secret


def _attempts(session_factory: Any, delivery_id: uuid.UUID) -> list[DeliveryAttempt]:
    with session_factory() as session:
        return list(
            session.scalars(
                select(DeliveryAttempt)
                .where(DeliveryAttempt.delivery_id == delivery_id)
                .order_by(DeliveryAttempt.number)
            )
        )


def _delivery(session_factory: Any, delivery_id: uuid.UUID) -> Delivery:
    with session_factory() as session:
        return session.get(Delivery, delivery_id)


def test_delivered_event_verifies_and_is_thin(
    ctx: Any, session_factory: Any, make_job: Any, receiver: Any
) -> None:
    job_id, (delivery_id,), secret = _finished_job(session_factory, make_job, ctx.settings, url=receiver.url)
    assert deliver_event(ctx, str(delivery_id)) == []
    (request,) = receiver.wait_for(1)
    payload = Webhook(secret).verify(request.body, request.headers)
    assert payload["type"] == "job.failed"
    assert payload["data"]["id"] == str(job_id)
    assert payload["data"]["error"]["stage"] == "probe"
    assert request.headers["webhook-id"] == str(delivery_id)
    row = _delivery(session_factory, delivery_id)
    assert row.state == "succeeded" and row.attempts == 1 and row.delivered_at is not None
    (attempt,) = _attempts(session_factory, delivery_id)
    assert attempt.status_code == 204 and attempt.duration_ms is not None


def test_recording_twice_does_not_duplicate(
    ctx: Any, session_factory: Any, make_job: Any, receiver: Any
) -> None:
    job_id, ids, _ = _finished_job(session_factory, make_job, ctx.settings, url=receiver.url)
    with session_factory() as session:
        assert record_job_event(session, session.get(Job, job_id), ctx.settings) == []
        session.commit()
        assert len(session.scalars(select(Delivery).where(Delivery.job_id == job_id)).all()) == len(ids) == 1


def test_failure_is_recorded_and_retried_on_schedule_then_dead(
    ctx: Any, session_factory: Any, make_job: Any, receiver: Any
) -> None:
    receiver.script = [(500, {}), (503, {}), (500, {})]
    _, (delivery_id,), secret = _finished_job(session_factory, make_job, ctx.settings, url=receiver.url)

    before = datetime.now(UTC)
    sends = deliver_event(ctx, str(delivery_id))
    # Schedule (0, 1, 2): attempt 2 comes ~1 s later, short enough for a Celery countdown.
    assert [s.task for s in sends] == ["timemark.deliver"] and 0.8 <= sends[0].countdown <= 1.2
    row = _delivery(session_factory, delivery_id)
    assert row.state == "pending" and row.attempts == 1 and row.last_status_code == 500
    assert row.next_attempt_at.replace(tzinfo=UTC) >= before + timedelta(seconds=0.8)

    # Sent again before it is due (a duplicate message): nothing happens.
    assert deliver_event(ctx, str(delivery_id)) == []
    assert len(receiver.requests) == 1

    for _ in range(2):
        _make_due(session_factory, delivery_id)
        deliver_event(ctx, str(delivery_id))
    row = _delivery(session_factory, delivery_id)
    assert row.state == "dead" and row.attempts == 3 and row.next_attempt_at is None
    assert [a.status_code for a in _attempts(session_factory, delivery_id)] == [500, 503, 500]
    # The webhook-id stays the same across retries; every attempt is signed afresh.
    requests = receiver.wait_for(3)
    assert {r.headers["webhook-id"] for r in requests} == {str(delivery_id)}
    for r in requests:
        Webhook(secret).verify(r.body, r.headers)


def test_retry_after_is_honoured(ctx: Any, session_factory: Any, make_job: Any, receiver: Any) -> None:
    _, (delivery_id,), _ = _finished_job(session_factory, make_job, ctx.settings, url=receiver.url)
    receiver.default = (429, {"Retry-After": "120"})
    assert deliver_event(ctx, str(delivery_id)) == []  # 120 s is past a sweep: left to the database
    row = _delivery(session_factory, delivery_id)
    wait = (row.next_attempt_at.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
    assert 100 < wait <= 121


def test_410_disables_the_endpoint(ctx: Any, session_factory: Any, make_job: Any, receiver: Any) -> None:
    _, ids, _ = _finished_job(
        session_factory, make_job, ctx.settings, url=receiver.url, endpoint_url=receiver.url + "/ep"
    )
    assert len(ids) == 2
    receiver.default = (410, {})
    for delivery_id in ids:
        deliver_event(ctx, str(delivery_id))
    with session_factory() as session:
        rows = session.scalars(select(Delivery).where(Delivery.id.in_(ids))).all()
        assert {r.state for r in rows} == {"dead"}
        endpoint = session.get(WebhookEndpoint, next(r.endpoint_id for r in rows if r.endpoint_id))
        assert endpoint.enabled is False and endpoint.disabled_at is not None


def test_redirects_are_not_followed(ctx: Any, session_factory: Any, make_job: Any, receiver: Any) -> None:
    receiver.default = (302, {"Location": receiver.url + "/elsewhere"})
    _, (delivery_id,), _ = _finished_job(session_factory, make_job, ctx.settings, url=receiver.url)
    deliver_event(ctx, str(delivery_id))
    assert [r.path for r in receiver.requests] == ["/hooks"]
    row = _delivery(session_factory, delivery_id)
    assert row.state == "pending" and row.last_status_code == 302


def test_loopback_is_refused_without_allow_list(
    ctx: Any, session_factory: Any, make_job: Any, receiver: Any
) -> None:
    from workers.context import WorkerContext

    strict = WorkerContext(ctx.settings.model_copy(update={"url_allow_cidrs": ()}))
    _, (delivery_id,), _ = _finished_job(session_factory, make_job, ctx.settings, url=receiver.url)
    deliver_event(strict, str(delivery_id))
    assert receiver.requests == []
    (attempt,) = _attempts(session_factory, delivery_id)
    assert attempt.status_code is None and "refused" in attempt.error


def test_unreachable_receiver_is_an_attempt_with_error(ctx: Any, session_factory: Any, make_job: Any) -> None:
    _, (delivery_id,), _ = _finished_job(
        session_factory, make_job, ctx.settings, url=f"http://127.0.0.1:{free_port()}/x"
    )
    deliver_event(ctx, str(delivery_id))
    (attempt,) = _attempts(session_factory, delivery_id)
    assert attempt.status_code is None and "ConnectError" in attempt.error


@pytest.mark.parametrize("bad_id", ["not-a-uuid", str(uuid.uuid4())])
def test_unknown_delivery_is_ignored(ctx: Any, bad_id: str) -> None:
    assert deliver_event(ctx, bad_id) == []


def _make_due(session_factory: Any, delivery_id: uuid.UUID) -> None:
    with session_factory() as session:
        row = session.get(Delivery, delivery_id)
        row.next_attempt_at = datetime.now(UTC) - timedelta(seconds=1)
        session.commit()


def test_last_child_job_completes_its_batch_once(
    ctx: Any, session_factory: Any, make_job: Any, receiver: Any
) -> None:
    from core.models import Batch

    with session_factory() as session:
        tenant_id = session.get(Job, make_job("s3://b/seed.mp4")).tenant_id
        batch = Batch(
            tenant_id=tenant_id,
            source_prefix="s3://b/p/",
            max_objects=10,
            state="running",
            webhook_url=receiver.url,
            webhook_secret=generate_secret(),
        )
        session.add(batch)
        session.commit()
        batch_id = batch.id
    children = [make_job(f"s3://b/p/{i}.mp4", batch_id=batch_id) for i in range(2)]

    def finish(job_id: uuid.UUID, state: JobState) -> list[uuid.UUID]:
        with session_factory() as session:
            job = session.get(Job, job_id)
            transition(job, state)
            ids = record_job_event(session, job, ctx.settings)
            session.commit()
            return ids

    assert finish(children[0], JobState.CANCELED) == []  # no webhook on the job; batch not done yet
    (delivery_id,) = finish(children[1], JobState.FAILED)
    with session_factory() as session:
        assert session.get(Batch, batch_id).state == "completed"
        delivery = session.get(Delivery, delivery_id)
        assert delivery.event_type == "batch.completed"
        counts = delivery.payload["data"]["counts"]
        assert counts["total"] == 2 and counts["canceled"] == 1 and counts["failed"] == 1
    deliver_event(ctx, str(delivery_id))
    (request,) = receiver.wait_for(1)
    assert request.headers["webhook-id"] == str(delivery_id)
