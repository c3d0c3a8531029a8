"""Standard Webhooks v1: secrets, signatures, thin event payloads, and the retry schedule.

Receivers verify with any Standard Webhooks library: the signature is `v1,<base64 HMAC-SHA256>` of
`"{webhook-id}.{webhook-timestamp}.{raw body}"` keyed by the base64 bytes after `whsec_`. The
`webhook-id` is the delivery's id and stays the same across retries (the receiver's dedupe key); the
timestamp is set per attempt. Payloads are thin (ids, state, links): receivers fetch results through
the API. The schedule follows the spec's example (0 s, 5 s, 5 min … 24 h, ~75 h in all) with jitter;
after the last attempt the delivery is dead. The HTTP call lives in the `deliver` task; here are the
pure parts and `record_job_event`, which writes deliveries in the transaction of the state change.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import random
import secrets as secrets_module
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import Batch, BatchItem, Delivery, Job, Segment, WebhookEndpoint
from core.settings import Settings
from core.states import ACTIVE_STATES, JobState

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
USER_AGENT = "timemark-webhooks/1"
MAX_RETRY_AFTER_S = 86_400.0  # a receiver may slow us down, but not park a delivery for longer than a day


class EventType(StrEnum):
    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELED = "job.canceled"
    BATCH_COMPLETED = "batch.completed"


# The job event to send when a job reaches each terminal state.
JOB_TERMINAL_EVENTS: dict[str, EventType] = {
    "succeeded": EventType.JOB_SUCCEEDED,
    "failed": EventType.JOB_FAILED,
    "canceled": EventType.JOB_CANCELED,
}


class WebhookSecretError(ValueError):
    """A secret that is not `whsec_` + base64 of 24-64 bytes."""


class AttemptOutcome(StrEnum):
    DELIVERED = "delivered"  # 2xx
    RETRY = "retry"  # anything else, including 3xx (redirects are never followed) and network errors
    GONE = "gone"  # 410: the receiver asks us to stop; the endpoint is disabled


def generate_secret(n_bytes: int = 32) -> str:
    """A fresh per-endpoint HMAC secret, `whsec_` + base64 of `n_bytes` random bytes."""
    if not 24 <= n_bytes <= 64:
        raise WebhookSecretError("webhook secrets hold 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(secrets_module.token_bytes(n_bytes)).decode("ascii")


def secret_key_bytes(secret: str) -> bytes:
    """The HMAC key inside a `whsec_` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise WebhookSecretError("webhook secret must start with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except ValueError as err:
        raise WebhookSecretError("webhook secret is not valid base64 after whsec_") from err
    if not 24 <= len(key) <= 64:
        raise WebhookSecretError(f"webhook secret holds {len(key)} bytes; 24 to 64 are allowed")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of the raw body bytes."""
    if "." in msg_id or not msg_id:
        raise ValueError("webhook-id must be non-empty and free of '.'")
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(secret_key_bytes(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signed_headers(
    secrets: str | Sequence[str], msg_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The request headers of one attempt; several secrets give several signatures (key rotation)."""
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    if not keys:
        raise WebhookSecretError("at least one secret is needed to sign")
    ts = int(datetime.now(UTC).timestamp()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(key, msg_id, ts, body) for key in keys),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def build_event(event_type: EventType | str, data: Mapping[str, Any], *, at: datetime) -> dict[str, Any]:
    """The `{type, timestamp, data}` envelope of the Standard Webhooks payload."""
    kind = EventType(event_type)  # raises ValueError for an unknown type
    return {"type": kind.value, "timestamp": _iso(at), "data": dict(data)}


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed and sent (compact, key-sorted, UTF-8)."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


def job_event_data(
    *,
    job_id: str,
    state: str,
    client_ref: str | None,
    batch_id: str | None,
    segment_count: int,
    error: Mapping[str, Any] | None,
    base_url: str = "",
) -> dict[str, Any]:
    """Thin job payload: ids, state, counts and links; the segments themselves stay behind the API."""
    data: dict[str, Any] = {
        "object": "job",
        "id": job_id,
        "state": state,
        "client_ref": client_ref,
        "batch_id": batch_id,
        "segment_count": segment_count,
        "links": {
            "self": f"{base_url}/v1/jobs/{job_id}",
            "segments": f"{base_url}/v1/jobs/{job_id}/segments",
        },
    }
    if error:
        # Only the problem document's public fields; internals stay in the logs.
        data["error"] = {k: error[k] for k in ("type", "title", "detail", "stage") if k in error}
    return data


def batch_event_data(*, batch_id: str, counts: Mapping[str, int], base_url: str = "") -> dict[str, Any]:
    return {
        "object": "batch",
        "id": batch_id,
        "counts": dict(counts),
        "links": {"self": f"{base_url}/v1/batches/{batch_id}"},
    }


def classify_status(status_code: int) -> AttemptOutcome:
    """What one HTTP answer means for the delivery (Standard Webhooks response table)."""
    if 200 <= status_code < 300:
        return AttemptOutcome.DELIVERED
    if status_code == 410:
        return AttemptOutcome.GONE
    return AttemptOutcome.RETRY


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds asked for by a `Retry-After` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(delta, 0.0), MAX_RETRY_AFTER_S)


def next_retry_delay_s(
    attempts_made: int,
    schedule_s: Sequence[float],
    *,
    jitter_fraction: float = 0.1,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before attempt `attempts_made + 1`, or None when the schedule is spent (dead).

    `schedule_s[i]` is the nominal wait before attempt i+1 (the first entry is normally 0: send at
    once). Jitter spreads retries of many deliveries by ±`jitter_fraction`; a receiver's
    `Retry-After` is honoured when it asks for longer.
    """
    if attempts_made < 1:
        raise ValueError("attempts_made counts attempts already made; it starts at 1")
    if attempts_made >= len(schedule_s):
        return None
    nominal = float(schedule_s[attempts_made])
    spread = (rng or random).uniform(-jitter_fraction, jitter_fraction)
    delay = nominal * (1.0 + spread)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay


def _iso(at: datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------------ recording events
# Deliveries are written in the same transaction as the state change they announce (an outbox): a
# crash between commit and enqueue leaves a due `pending` row that the sweeper sends later.


def record_job_event(
    session: Session, job: Job, settings: Settings, *, now: datetime | None = None
) -> list[uuid.UUID]:
    """Add deliveries for `job`'s terminal state (and its batch's completion); returns their ids.

    Call inside the transaction that moved the job to a terminal state, after `transition`; enqueue
    `timemark.deliver` for the returned ids after the commit. Safe to call twice: `event_key` is unique
    and existing deliveries are not duplicated.
    """
    event_type = JOB_TERMINAL_EVENTS.get(job.state)
    if event_type is None:
        raise ValueError(f"job {job.id} is {job.state}, not terminal: no event to record")
    now = now or datetime.now(UTC)
    # Sessions may not autoflush: the counts below must see this transaction's own changes.
    session.flush()
    segment_count = session.scalar(
        select(func.count()).select_from(Segment).where(Segment.job_id == job.id, Segment.final.is_(True))
    )
    data = job_event_data(
        job_id=str(job.id),
        state=job.state,
        client_ref=job.client_ref,
        batch_id=str(job.batch_id) if job.batch_id else None,
        segment_count=int(segment_count or 0),
        error=job.error,
        base_url=(settings.public_base_url or "").rstrip("/"),
    )
    event = build_event(event_type, data, at=now)
    targets: list[tuple[str, uuid.UUID | None]] = []
    if job.webhook_url:
        targets.append((job.webhook_url, None))
    targets += _endpoint_targets(session, job.tenant_id, event_type)
    ids = [
        _add_delivery(
            session, event, event_type, f"{event_type}:{job.id}", url, endpoint_id, now, job_id=job.id
        )
        for url, endpoint_id in targets
    ]
    if job.batch_id is not None:
        ids += _maybe_complete_batch(session, job.batch_id, settings, now=now)
    return [delivery_id for delivery_id in ids if delivery_id is not None]


def record_batch_event(
    session: Session, batch: Batch, settings: Settings, *, now: datetime | None = None
) -> list[uuid.UUID]:
    """Add `batch.completed` deliveries for a batch whose state is `completed`; returns their ids."""
    now = now or datetime.now(UTC)
    counts = batch_counts(session, batch.id)
    event = build_event(
        EventType.BATCH_COMPLETED,
        batch_event_data(
            batch_id=str(batch.id), counts=counts, base_url=(settings.public_base_url or "").rstrip("/")
        ),
        at=now,
    )
    targets: list[tuple[str, uuid.UUID | None]] = []
    if batch.webhook_url:
        targets.append((batch.webhook_url, None))
    targets += _endpoint_targets(session, batch.tenant_id, EventType.BATCH_COMPLETED)
    key = f"{EventType.BATCH_COMPLETED}:{batch.id}"
    ids = [
        _add_delivery(
            session, event, EventType.BATCH_COMPLETED, key, url, endpoint_id, now, batch_id=batch.id
        )
        for url, endpoint_id in targets
    ]
    return [delivery_id for delivery_id in ids if delivery_id is not None]


def batch_counts(session: Session, batch_id: uuid.UUID) -> dict[str, int]:
    """Child jobs per state, plus `total` and `errors` (items that never became a job)."""
    rows = session.execute(
        select(Job.state, func.count()).where(Job.batch_id == batch_id).group_by(Job.state)
    ).all()
    counts = {state.value: 0 for state in JobState}
    counts.update({state: int(n) for state, n in rows})
    counts["total"] = sum(int(n) for _, n in rows)
    counts["errors"] = int(
        session.scalar(
            select(func.count())
            .select_from(BatchItem)
            .where(BatchItem.batch_id == batch_id, BatchItem.job_id.is_(None))
        )
        or 0
    )
    return counts


def _maybe_complete_batch(
    session: Session, batch_id: uuid.UUID, settings: Settings, *, now: datetime
) -> list[uuid.UUID]:
    # The row lock serialises the last two children finishing at once: exactly one completes the batch.
    batch = session.get(Batch, batch_id, with_for_update=True)
    if batch is None or batch.state != "running":
        return []
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.batch_id == batch_id, Job.state.in_([s.value for s in ACTIVE_STATES]))
    )
    if active:
        return []
    batch.state = "completed"
    batch.completed_at = now
    return record_batch_event(session, batch, settings, now=now)


def _endpoint_targets(
    session: Session, tenant_id: uuid.UUID, event_type: EventType
) -> list[tuple[str, uuid.UUID | None]]:
    endpoints = session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True)
        )
    ).all()
    return [(e.url, e.id) for e in endpoints if not e.events or event_type.value in e.events]


def _add_delivery(
    session: Session,
    event: dict[str, Any],
    event_type: EventType,
    subject_key: str,
    url: str,
    endpoint_id: uuid.UUID | None,
    now: datetime,
    *,
    job_id: uuid.UUID | None = None,
    batch_id: uuid.UUID | None = None,
) -> uuid.UUID | None:
    target = str(endpoint_id) if endpoint_id else "inline"
    event_key = f"{subject_key}:{target}"[:300]
    if session.scalar(select(Delivery.id).where(Delivery.event_key == event_key)) is not None:
        return None
    tenant_id = session.scalar(
        select(Job.tenant_id).where(Job.id == job_id)
        if job_id is not None
        else select(Batch.tenant_id).where(Batch.id == batch_id)
    )
    delivery = Delivery(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        endpoint_id=endpoint_id,
        job_id=job_id,
        batch_id=batch_id,
        event_type=event_type.value,
        event_key=event_key,
        url=url,
        payload=event,
        state="pending",
        attempts=0,
        next_attempt_at=now,
    )
    session.add(delivery)
    session.flush()
    return delivery.id
