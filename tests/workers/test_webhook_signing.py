"""Standard Webhooks signing and the retry schedule, checked against the `standardwebhooks` library."""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from core import webhooks
from core.webhooks import AttemptOutcome, EventType, WebhookSecretError

SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


def _signed(secret: str, body: bytes, *, msg_id: str = "dlv_1", ts: int | None = None) -> dict[str, str]:
    return webhooks.signed_headers(secret, msg_id, body, timestamp=ts)


def test_signature_verifies_with_standardwebhooks_library() -> None:
    secret = webhooks.generate_secret()
    event = webhooks.build_event(
        EventType.JOB_SUCCEEDED,
        webhooks.job_event_data(
            job_id="job_1", state="succeeded", client_ref="ref-é", batch_id=None, segment_count=3, error=None
        ),
        at=datetime.now(UTC),
    )
    body = webhooks.encode_event(event)
    headers = _signed(secret, body)
    payload = Webhook(secret).verify(body, headers)
    assert payload == event
    assert payload["data"]["client_ref"] == "ref-é"
    assert headers["webhook-signature"].startswith("v1,")


def test_tampered_body_or_wrong_secret_fails_verification() -> None:
    secret = webhooks.generate_secret()
    body = b'{"type":"job.failed"}'
    headers = _signed(secret, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.generate_secret()).verify(body, headers)


def test_stale_timestamp_is_rejected_by_receiver() -> None:
    secret = webhooks.generate_secret()
    body = b"{}"
    old = int((datetime.now(UTC) - timedelta(minutes=10)).timestamp())
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(body, _signed(secret, body, ts=old))


def test_rotation_sends_one_signature_per_secret() -> None:
    old_secret, new_secret = webhooks.generate_secret(), webhooks.generate_secret()
    body = b'{"a":1}'
    headers = webhooks.signed_headers([old_secret, new_secret], "dlv_2", body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old_secret).verify(body, headers)
    Webhook(new_secret).verify(body, headers)


def test_signature_matches_the_spec_formula() -> None:
    import hashlib
    import hmac

    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    expected = base64.b64encode(hmac.new(key, b"msg_x.1700000000.hello", hashlib.sha256).digest()).decode()
    assert webhooks.sign(secret, "msg_x", 1_700_000_000, b"hello") == f"v1,{expected}"


@pytest.mark.parametrize(
    "secret",
    ["", "abc", "whsec_", "whsec_!!!notbase64", "whsec_" + base64.b64encode(b"short").decode()],
    ids=["empty", "no-prefix", "empty-key", "bad-base64", "too-short"],
)
def test_bad_secrets_raise_typed_error(secret: str) -> None:
    with pytest.raises(WebhookSecretError):
        webhooks.sign(secret, "id", 1, b"")


def test_message_id_with_dot_is_refused() -> None:
    with pytest.raises(ValueError):
        webhooks.sign(webhooks.generate_secret(), "a.b", 1, b"")


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(ValueError):
        webhooks.build_event("job.exploded", {}, at=datetime.now(UTC))


def test_payload_is_thin_and_error_has_only_public_fields() -> None:
    data = webhooks.job_event_data(
        job_id="j",
        state="failed",
        client_ref=None,
        batch_id="b",
        segment_count=0,
        error={"type": "urn:x", "title": "t", "detail": "d", "stage": "probe", "internal": "stack trace"},
        base_url="https://api.example",
    )
    assert data["error"] == {"type": "urn:x", "title": "t", "detail": "d", "stage": "probe"}
    assert data["links"]["segments"] == "https://api.example/v1/jobs/j/segments"
    body = webhooks.encode_event(webhooks.build_event("job.failed", data, at=datetime.now(UTC)))
    assert len(body) < 20_000
    assert json.loads(body)["type"] == "job.failed"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, AttemptOutcome.DELIVERED),
        (204, AttemptOutcome.DELIVERED),
        (301, AttemptOutcome.RETRY),
        (410, AttemptOutcome.GONE),
        (429, AttemptOutcome.RETRY),
        (500, AttemptOutcome.RETRY),
    ],
)
def test_status_classification(status: int, outcome: AttemptOutcome) -> None:
    assert webhooks.classify_status(status) is outcome


def test_schedule_spans_about_three_days_then_dies() -> None:
    rng = random.Random(0)
    delays = []
    attempts = 1
    while (
        delay := webhooks.next_retry_delay_s(attempts, SCHEDULE, jitter_fraction=0.1, rng=rng)
    ) is not None:
        delays.append(delay)
        attempts += 1
    assert attempts == len(SCHEDULE)
    total_h = sum(delays) / 3600
    assert 60 < total_h < 90
    # Strictly growing backoff, each within ±10 % of nominal.
    for delay, nominal in zip(delays, SCHEDULE[1:], strict=True):
        assert nominal * 0.9 <= delay <= nominal * 1.1
    assert delays == sorted(delays)


def test_jitter_spreads_retries() -> None:
    rng = random.Random(1)
    samples = {round(webhooks.next_retry_delay_s(2, SCHEDULE, rng=rng), 3) for _ in range(20)}
    assert len(samples) > 10


def test_retry_after_is_honoured_and_capped() -> None:
    assert webhooks.next_retry_delay_s(1, SCHEDULE, jitter_fraction=0, retry_after_s=120) == 120
    assert webhooks.next_retry_delay_s(2, SCHEDULE, jitter_fraction=0, retry_after_s=1) == 300
    assert webhooks.parse_retry_after("10") == 10
    assert webhooks.parse_retry_after("999999999") == webhooks.MAX_RETRY_AFTER_S
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert webhooks.parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now=now) == 60
    assert webhooks.parse_retry_after("soon") is None
    assert webhooks.parse_retry_after(None) is None


def test_attempt_count_must_start_at_one() -> None:
    with pytest.raises(ValueError):
        webhooks.next_retry_delay_s(0, SCHEDULE)
