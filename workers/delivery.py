"""The body of the `deliver` task: one signed POST of one webhook event, recorded, then rescheduled.

A delivery is claimed by pushing its `next_attempt_at` one lease ahead in a short transaction, so a
duplicate message (sweeper + retry) finds it not due and does nothing, and a worker that dies mid-POST
leaves a row the sweeper retries after the lease. The POST goes through the SSRF-guarded client with
no redirects followed; every attempt is a `DeliveryAttempt` row. Retries are scheduled in the database
(`next_attempt_at`); only waits shorter than a sweep are sent as a Celery countdown.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from core.db import session_scope
from core.models import Batch, Delivery, DeliveryAttempt, Job, WebhookEndpoint
from core.security import UnsafeURLError, check_url, guarded_client
from core.settings import Settings
from core.webhooks import (
    AttemptOutcome,
    classify_status,
    encode_event,
    next_retry_delay_s,
    parse_retry_after,
    signed_headers,
)
from workers import metrics
from workers.context import WorkerContext
from workers.lifecycle import Send, parse_id, utcnow

LEASE_MARGIN_S = 60.0
DUE_SLACK_S = 0.25  # a countdown message may arrive a hair early


def deliver_event(ctx: WorkerContext, delivery_id: str) -> list[Send]:
    """Attempt delivery `delivery_id` once if it is due; returns a short-countdown retry if one is due soon."""
    settings = ctx.settings
    key = parse_id(delivery_id)
    if key is None:
        return []
    now = utcnow()
    with session_scope(ctx.session_factory) as session:
        delivery = session.get(Delivery, key, with_for_update=True, populate_existing=True)
        if delivery is None or delivery.state != "pending":
            return []
        due_by = now + timedelta(seconds=DUE_SLACK_S)
        if delivery.next_attempt_at is not None and _aware(delivery.next_attempt_at) > due_by:
            return []  # not due: a duplicate message, or a retry the database will bring back
        secret, refusal = _signing_secret(session, delivery)
        if secret is None:
            delivery.state = "dead"
            delivery.next_attempt_at = None
            session.add(DeliveryAttempt(delivery_id=delivery.id, number=delivery.attempts + 1, error=refusal))
            delivery.attempts += 1
            metrics.record_delivery("failed")
            return []
        delivery.attempts += 1
        number = delivery.attempts
        delivery.next_attempt_at = now + timedelta(seconds=settings.webhook_timeout_s + LEASE_MARGIN_S)
        url, payload = delivery.url, dict(delivery.payload)

    result = post_event(url, secret, str(key), encode_event(payload), settings)

    with session_scope(ctx.session_factory) as session:
        delivery = session.get(Delivery, key, with_for_update=True, populate_existing=True)
        if delivery is None:
            return []
        session.add(
            DeliveryAttempt(
                delivery_id=delivery.id,
                number=number,
                started_at=now,
                duration_ms=result.duration_ms,
                status_code=result.status_code,
                error=result.error,
                response_excerpt=result.excerpt,
            )
        )
        delivery.last_status_code = result.status_code
        if delivery.state != "pending":
            return []
        outcome = (
            classify_status(result.status_code) if result.status_code is not None else AttemptOutcome.RETRY
        )
        finished = utcnow()
        if outcome is AttemptOutcome.DELIVERED:
            delivery.state = "succeeded"
            delivery.delivered_at = finished
            delivery.next_attempt_at = None
            metrics.record_delivery("delivered")
            return []
        if outcome is AttemptOutcome.GONE:
            delivery.state = "dead"
            delivery.next_attempt_at = None
            metrics.record_delivery("failed")
            if delivery.endpoint_id is not None:
                endpoint = session.get(WebhookEndpoint, delivery.endpoint_id, with_for_update=True)
                if endpoint is not None and endpoint.enabled:
                    endpoint.enabled = False
                    endpoint.disabled_at = finished
            return []
        delay = next_retry_delay_s(
            delivery.attempts,
            settings.webhook_retry_schedule_s,
            jitter_fraction=settings.webhook_jitter_fraction,
            retry_after_s=result.retry_after_s,
        )
        if delay is None:
            delivery.state = "dead"
            delivery.next_attempt_at = None
            metrics.record_delivery("failed")
            return []
        metrics.record_delivery("retrying")
        delivery.next_attempt_at = finished + timedelta(seconds=delay)
        if delay <= settings.sweep_interval_s:
            return [Send("timemark.deliver", (str(key),), countdown=delay)]
        return []


class AttemptResult:
    """What one POST gave: a status code, or an error string when no answer came."""

    def __init__(
        self,
        *,
        duration_ms: float,
        status_code: int | None = None,
        error: str | None = None,
        excerpt: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.duration_ms = duration_ms
        self.status_code = status_code
        self.error = error
        self.excerpt = excerpt
        self.retry_after_s = retry_after_s


def post_event(url: str, secret: str, msg_id: str, body: bytes, settings: Settings) -> AttemptResult:
    """One signed POST (timeout, no redirects, response read up to a small limit)."""
    started = time.perf_counter()

    def elapsed_ms() -> float:
        return (time.perf_counter() - started) * 1000.0

    try:
        check_url(url, settings)
        headers = signed_headers(secret, msg_id, body)
        with (
            guarded_client(settings, timeout_s=settings.webhook_timeout_s) as client,
            client.stream("POST", url, content=body, headers=headers) as response,
        ):
            excerpt = _read_limited(response, settings.webhook_max_response_bytes)
            return AttemptResult(
                duration_ms=elapsed_ms(),
                status_code=response.status_code,
                excerpt=excerpt,
                retry_after_s=parse_retry_after(response.headers.get("retry-after")),
            )
    except UnsafeURLError as err:
        return AttemptResult(duration_ms=elapsed_ms(), error=f"refused: {err.detail}")
    except httpx.HTTPError as err:
        return AttemptResult(duration_ms=elapsed_ms(), error=f"{type(err).__name__}: {err}"[:500])


def _read_limited(response: httpx.Response, limit: int) -> str | None:
    if limit <= 0:
        return None
    data = bytearray()
    for piece in response.iter_bytes():
        data += piece
        if len(data) >= limit:
            break
    return bytes(data[:limit]).decode("utf-8", errors="replace")


def _signing_secret(session: Any, delivery: Delivery) -> tuple[str | None, str]:
    """The secret this delivery is signed with, or None and why it cannot be sent."""
    if delivery.endpoint_id is not None:
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            return None, "endpoint deleted or disabled"
        return endpoint.secret, ""
    if delivery.job_id is not None:
        job = session.get(Job, delivery.job_id)
        if job is not None and job.webhook_secret:
            return job.webhook_secret, ""
    if delivery.batch_id is not None:
        batch = session.get(Batch, delivery.batch_id)
        if batch is not None and batch.webhook_secret:
            return batch.webhook_secret, ""
    return None, "no signing secret (job or batch deleted)"


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
