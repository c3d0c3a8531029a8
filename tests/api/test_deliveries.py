"""`/v1/deliveries`: the recorded attempts, redelivery of finished deliveries, tenant scoping."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import redis

from core.models import Delivery, DeliveryAttempt, Job
from tests.api.helpers import assert_problem


def make_canceled_job_with_delivery(api_client, tenant, uploaded_source, url) -> str:
    job = api_client.post(
        "/v1/jobs",
        json={"source": uploaded_source, "queries": ["q"], "webhook": {"url": url}},
        headers=tenant.headers,
    ).json()
    assert api_client.post(f"/v1/jobs/{job['id']}:cancel", headers=tenant.headers).status_code == 202
    return job["id"]


def test_list_get_redeliver(
    api_client, tenant, other_tenant, uploaded_source, session_factory, redis_url, webhook_receiver
) -> None:
    job_id = make_canceled_job_with_delivery(api_client, tenant, uploaded_source, webhook_receiver.url)
    listed = api_client.get("/v1/deliveries", params={"job_id": job_id}, headers=tenant.headers).json()
    assert [d["event_type"] for d in listed["data"]] == ["job.canceled"]
    delivery_id = listed["data"][0]["id"]
    assert_problem(
        api_client.post(f"/v1/deliveries/{delivery_id}:redeliver", headers=tenant.headers),
        409,
        "delivery-in-progress",
    )
    # As the deliver task would leave it after the last failed attempt.
    with session_factory() as session:
        row = session.get(Delivery, uuid.UUID(delivery_id))
        row.state, row.attempts, row.next_attempt_at = "dead", 1, None
        session.add(
            DeliveryAttempt(
                delivery_id=row.id,
                number=1,
                started_at=datetime.now(UTC),
                duration_ms=12.5,
                status_code=500,
                error=None,
            )
        )
        session.commit()
    one = api_client.get(f"/v1/deliveries/{delivery_id}", headers=tenant.headers).json()
    assert one["state"] == "dead" and one["attempt_log"][0]["status_code"] == 500
    assert "secret" not in str(one) and "whsec_" not in str(one)
    again = api_client.post(f"/v1/deliveries/{delivery_id}:redeliver", headers=tenant.headers)
    assert again.status_code == 202 and again.json()["state"] == "pending"
    messages = redis.Redis.from_url(redis_url).lrange("cpu", 0, -1)
    assert any(delivery_id in m.decode() and "timemark.deliver" in m.decode() for m in messages)
    for path in (f"/v1/deliveries/{delivery_id}", f"/v1/deliveries/{delivery_id}:redeliver"):
        method = "POST" if path.endswith(":redeliver") else "GET"
        assert_problem(api_client.request(method, path, headers=other_tenant.headers), 404)
    assert api_client.get("/v1/deliveries", headers=other_tenant.headers).json()["data"] == []
    pending = api_client.get("/v1/deliveries", params={"state": "pending"}, headers=tenant.headers).json()[
        "data"
    ]
    assert [d["id"] for d in pending] == [delivery_id]
    with session_factory() as session:
        assert session.get(Job, uuid.UUID(job_id)).state == "canceled"


def test_delivery_pagination(api_client, tenant, uploaded_source, webhook_receiver) -> None:
    for _ in range(3):
        make_canceled_job_with_delivery(api_client, tenant, uploaded_source, webhook_receiver.url)
    ids, token = [], ""
    while True:
        page = api_client.get(
            "/v1/deliveries", params={"page_size": 2, "page_token": token}, headers=tenant.headers
        ).json()
        ids += [d["id"] for d in page["data"]]
        token = page["next_page_token"]
        if not token:
            break
    assert len(ids) == len(set(ids)) == 3
