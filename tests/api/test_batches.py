"""`/v1/batches`: validated, written, and handed to `timemark.ingest`; counts and errors on GET."""

from __future__ import annotations

import uuid

import redis

from core.models import Batch, BatchItem, Job
from core.states import JobState, transition
from tests.api.helpers import assert_problem

TEMPLATE = {"queries": ["a cyclist"], "sampling": {"fps": 1.0}}


def test_create_batch_enqueues_ingest(api_client, tenant, s3_bucket, redis_url, session_factory) -> None:
    body = {
        "source": f"s3://{s3_bucket}/inbox/",
        "job": {**TEMPLATE, "webhook": {"url": "http://127.0.0.1:9/h"}},
        "max_objects": 50,
        "metadata": {"run": 3},
        "client_ref": "nightly",
    }
    answer = api_client.post("/v1/batches", json=body, headers={**tenant.headers, "Idempotency-Key": "b-1"})
    assert answer.status_code == 202, answer.text
    batch = answer.json()
    assert batch["state"] == "ingesting" and batch["source"] == f"s3://{s3_bucket}/inbox/"
    assert batch["job_webhook"]["secret"].startswith("whsec_")
    assert answer.headers["location"] == f"/v1/batches/{batch['id']}"
    messages = redis.Redis.from_url(redis_url).lrange("cpu", 0, -1)
    assert any(batch["id"] in m.decode() and "timemark.ingest" in m.decode() for m in messages)
    with session_factory() as session:
        row = session.get(Batch, uuid.UUID(batch["id"]))
        assert row.job_template["sampling"] == {
            "fps": 1.0,
            "min_pixels": None,
            "max_pixels": None,
            "video_total_pixels": None,
            "min_frames": None,
            "max_frames": None,
        }
        assert row.job_template["webhook"]["secret"] == batch["job_webhook"]["secret"]
    again = api_client.post("/v1/batches", json=body, headers={**tenant.headers, "Idempotency-Key": "b-1"})
    assert again.json()["id"] == batch["id"] and again.headers["idempotent-replayed"] == "true"
    changed = api_client.post(
        "/v1/batches", json={**body, "max_objects": 51}, headers={**tenant.headers, "Idempotency-Key": "b-1"}
    )
    assert_problem(changed, 422, "idempotency-key-reused")
    polled = api_client.get(f"/v1/batches/{batch['id']}", headers=tenant.headers).json()
    assert polled["job_webhook"]["secret"] is None


def test_batch_counts_and_item_errors(api_client, tenant, other_tenant, s3_bucket, session_factory) -> None:
    batch = api_client.post(
        "/v1/batches", json={"source": f"s3://{s3_bucket}/set/", "job": TEMPLATE}, headers=tenant.headers
    ).json()
    batch_id = uuid.UUID(batch["id"])
    # What the ingest worker writes: two child jobs (one done) and one object that could not become a job.
    with session_factory() as session:
        row = session.get(Batch, batch_id)
        row.state, row.items_total = "running", 3
        jobs = [
            Job(
                tenant_id=tenant.tenant_id,
                batch_id=batch_id,
                source=f"s3://{s3_bucket}/set/{i}.mp4",
                source_uri=f"s3://{s3_bucket}/set/{i}.mp4",
                queries=["a cyclist"],
                sampling={},
            )
            for i in range(2)
        ]
        session.add_all(jobs)
        session.flush()
        transition(jobs[0], JobState.FAILED)
        session.add_all(
            [
                BatchItem(batch_id=batch_id, object_uri=jobs[0].source, etag="e0", job_id=jobs[0].id),
                BatchItem(batch_id=batch_id, object_uri=jobs[1].source, etag="e1", job_id=jobs[1].id),
                BatchItem(
                    batch_id=batch_id,
                    object_uri=f"s3://{s3_bucket}/set/notes.txt",
                    etag="e2",
                    error={
                        "type": "https://timemark.dev/problems/source-not-video",
                        "title": "Not a video",
                        "status": 422,
                        "detail": "the object is text",
                    },
                ),
            ]
        )
        session.commit()
    view = api_client.get(f"/v1/batches/{batch_id}", headers=tenant.headers).json()
    assert view["state"] == "running"
    assert view["counts"]["total"] == 2 and view["counts"]["failed"] == 1 and view["counts"]["queued"] == 1
    assert view["counts"]["errors"] == 1 and view["counts"]["items"] == 3
    assert [e["object_uri"] for e in view["errors"]] == [f"s3://{s3_bucket}/set/notes.txt"]
    listed = api_client.get("/v1/jobs", params={"batch_id": str(batch_id)}, headers=tenant.headers).json()
    assert len(listed["data"]) == 2
    assert_problem(api_client.get(f"/v1/batches/{batch_id}", headers=other_tenant.headers), 404)


def test_bad_batches(api_client, tenant, s3_bucket, count_rows) -> None:
    cases = [
        ({"source": "s3://no-such-bucket-zz9/x/", "job": TEMPLATE}, 422, "source-not-found"),
        ({"source": "https://example.com/x/", "job": TEMPLATE}, 422, "validation-error"),
        (
            {"source": f"s3://{s3_bucket}/x/", "job": {**TEMPLATE, "source": "s3://a/b"}},
            422,
            "validation-error",
        ),
        ({"source": f"s3://{s3_bucket}/x/", "job": {"queries": []}}, 422, "validation-error"),
        ({"source": f"s3://{s3_bucket}/x/", "job": TEMPLATE, "max_objects": 0}, 422, "validation-error"),
        ({"source": f"s3://{s3_bucket}/x/", "job": TEMPLATE, "max_objects": 10**6}, 422, "validation-error"),
        (
            {"source": f"s3://{s3_bucket}/x/", "job": TEMPLATE, "webhook": {"url": "http://10.1.1.1/"}},
            422,
            "unsafe-url",
        ),
        ({"source": f"s3://{s3_bucket}/x/"}, 422, "validation-error"),
    ]
    for body, status, slug in cases:
        assert_problem(api_client.post("/v1/batches", json=body, headers=tenant.headers), status, slug)
    assert count_rows(Batch, tenant_id=tenant.tenant_id) == 0
