"""Health, readiness, metrics, OpenAPI and docs."""

from __future__ import annotations

from tests.api.helpers import assert_problem


def test_healthz_and_readyz(api_client) -> None:
    assert api_client.get("/healthz").json() == {"status": "ok"}
    ready = api_client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_metrics_expose_requests_by_route_and_jobs_by_state(api_client, tenant, uploaded_source) -> None:
    api_client.post("/v1/jobs", json={"source": uploaded_source, "queries": ["q"]}, headers=tenant.headers)
    api_client.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=tenant.headers)
    text = api_client.get("/metrics").text
    assert 'timemark_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in text
    assert 'route="/v1/jobs/{job_id}",status="404"' in text  # templates, never raw ids
    assert "00000000-0000" not in text
    assert 'timemark_jobs{state="queued"}' in text
    assert "timemark_http_request_duration_seconds_bucket" in text


def test_openapi_and_docs(api_client) -> None:
    spec = api_client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}:cancel",
        "/v1/jobs/{job_id}/segments",
        "/v1/uploads",
        "/v1/batches",
        "/v1/batches/{batch_id}",
        "/v1/deliveries/{delivery_id}:redeliver",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    job_create = spec["components"]["schemas"]["JobCreate"]
    assert job_create["additionalProperties"] is False
    # Errors are documented as what they are: problem documents, never FastAPI's HTTPValidationError.
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for operations in paths.values():
        for operation in operations.values():
            assert "422" not in operation["responses"]
            assert "application/problem+json" in operation["responses"]["4XX"]["content"]
    assert spec["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status"]
    assert api_client.get("/docs").status_code == 200


def test_unauthenticated_api_is_401_but_health_is_open(api_client) -> None:
    assert_problem(api_client.get("/v1/jobs"), 401, "unauthorized")
    assert api_client.get("/healthz").status_code == 200


def test_metrics_expose_queue_depth_and_inflight_for_autoscaling(
    api_client, tenant, uploaded_source, session_factory
) -> None:
    """KEDA scales GPU workers on these two gauges (deploy/metrics_catalog.py)."""
    from prometheus_client.parser import text_string_to_metric_families

    from core.models import Chunk

    def gauges() -> dict[tuple[str, str], float]:
        text = api_client.get("/metrics").text
        return {
            (s.name, s.labels["queue"]): s.value
            for family in text_string_to_metric_families(text)
            if family.name in ("timemark_queue_depth", "timemark_queue_inflight")
            for s in family.samples
        }

    before = gauges()
    created = api_client.post(
        "/v1/jobs", json={"source": uploaded_source, "queries": ["q"]}, headers=tenant.headers
    )
    assert created.status_code == 202
    after = gauges()
    # The probe message waits in the cpu list (no worker consumes it in this test).
    assert after[("timemark_queue_depth", "cpu")] == before[("timemark_queue_depth", "cpu")] + 1
    assert ("timemark_queue_depth", "gpu") in after
    with session_factory() as session:
        session.add(Chunk(job_id=created.json()["id"], index=0, start_s=0.0, end_s=5.0, state="running"))
        session.commit()
    assert gauges()[("timemark_queue_inflight", "gpu")] == before[("timemark_queue_inflight", "gpu")] + 1
