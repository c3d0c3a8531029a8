"""`/v1/webhook-endpoints`: create (secret once), list, get, delete; SSRF-checked; tenant-scoped; and
a canceled job fans out to the tenant's endpoints through the same delivery log."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from core.models import Delivery
from tests.api.helpers import assert_problem


def test_endpoint_lifecycle_and_fan_out(
    api_client, tenant, other_tenant, uploaded_source, session_factory, webhook_receiver
) -> None:
    created = api_client.post(
        "/v1/webhook-endpoints",
        json={"url": webhook_receiver.url, "events": ["job.canceled"]},
        headers=tenant.headers,
    )
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["secret"].startswith("whsec_") and endpoint["events"] == ["job.canceled"]
    assert created.headers["location"] == f"/v1/webhook-endpoints/{endpoint['id']}"
    fetched = api_client.get(f"/v1/webhook-endpoints/{endpoint['id']}", headers=tenant.headers).json()
    assert fetched["secret"] is None and fetched["enabled"] is True
    assert [
        e["id"] for e in api_client.get("/v1/webhook-endpoints", headers=tenant.headers).json()["data"]
    ] == [endpoint["id"]]
    assert api_client.get("/v1/webhook-endpoints", headers=other_tenant.headers).json()["data"] == []
    assert_problem(
        api_client.get(f"/v1/webhook-endpoints/{endpoint['id']}", headers=other_tenant.headers), 404
    )
    assert_problem(
        api_client.delete(f"/v1/webhook-endpoints/{endpoint['id']}", headers=other_tenant.headers), 404
    )

    job = api_client.post(
        "/v1/jobs", json={"source": uploaded_source, "queries": ["q"]}, headers=tenant.headers
    )
    api_client.post(f"/v1/jobs/{job.json()['id']}:cancel", headers=tenant.headers)
    with session_factory() as session:
        deliveries = session.scalars(
            select(Delivery).where(Delivery.job_id == uuid.UUID(job.json()["id"]))
        ).all()
    assert [(d.event_type, str(d.endpoint_id)) for d in deliveries] == [("job.canceled", endpoint["id"])]

    assert (
        api_client.delete(f"/v1/webhook-endpoints/{endpoint['id']}", headers=tenant.headers).status_code
        == 204
    )
    assert_problem(api_client.get(f"/v1/webhook-endpoints/{endpoint['id']}", headers=tenant.headers), 404)
    with session_factory() as session:
        assert session.get(Delivery, deliveries[0].id).endpoint_id is None  # the log outlives the endpoint


def test_bad_endpoints(api_client, tenant) -> None:
    cases = [
        ({"url": "http://169.254.169.254/"}, "unsafe-url"),
        ({"url": "http://10.0.0.1/hook"}, "unsafe-url"),
        ({"url": "ftp://127.0.0.1/"}, "validation-error"),
        ({"url": "http://127.0.0.1/h", "events": ["job.exploded"]}, "validation-error"),
        ({"url": "http://127.0.0.1/h", "secret": "plain"}, "validation-error"),
        ({"url": "http://127.0.0.1/h", "extra": 1}, "validation-error"),
    ]
    for body, slug in cases:
        assert_problem(api_client.post("/v1/webhook-endpoints", json=body, headers=tenant.headers), 422, slug)
    assert api_client.get("/v1/webhook-endpoints", headers=tenant.headers).json()["data"] == []
