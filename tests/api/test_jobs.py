"""`/v1/jobs` against real PostgreSQL, Redis and moto S3: submit, poll, list, cancel, delete, segments."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import func, select, text

from core.models import FINAL_CHUNK_INDEX, Delivery, Job, Segment
from core.states import JobState, transition
from tests.api.helpers import assert_problem


def submit(client: Any, tenant: Any, source: str, *, key: str | None = None, **body: Any) -> Any:
    payload = {"source": source, "queries": ["when does the cyclist pass?"], **body}
    headers = dict(tenant.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post("/v1/jobs", json=payload, headers=headers)


def set_state(session_factory: Any, job_id: str, *states: str) -> None:
    with session_factory() as session:
        job = session.get(Job, uuid.UUID(job_id))
        for state in states:
            transition(job, state)
        session.commit()


def test_submit_upload_source_returns_202_location_and_probe_message(
    api_client, tenant, uploaded_source, session_factory, redis_url
) -> None:
    answer = submit(
        api_client,
        tenant,
        uploaded_source,
        sampling={"fps": 1.0, "max_frames": 64},
        strategy="coarse_to_fine",
        metadata={"camera": "north", "tags": ["a", "b"]},
        client_ref="order-17",
    )
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert answer.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and not job["terminal"] and job["strategy"] == "coarse_to_fine"
    assert job["sampling"] == {
        "fps": 1.0,
        "min_pixels": 50_176,
        "max_pixels": 200_704,
        "video_total_pixels": 144_506_880,
        "min_frames": 2,
        "max_frames": 64,
    }
    assert job["metadata"] == {"camera": "north", "tags": ["a", "b"]} and job["client_ref"] == "order-17"
    with session_factory() as session:
        row = session.get(Job, uuid.UUID(job["id"]))
        assert row.source_uri.startswith("s3://") and row.enqueued_at is not None
    # The probe message really is on the cpu queue of the session's Redis.
    messages = redis.Redis.from_url(redis_url).lrange("cpu", 0, -1)
    assert any(job["id"] in m.decode() and "timemark.probe" in m.decode() for m in messages)
    polled = api_client.get(answer.headers["location"], headers=tenant.headers)
    assert polled.status_code == 200 and polled.json()["metadata"]["camera"] == "north"


def test_submit_s3_and_http_sources(api_client, tenant, s3_video) -> None:
    assert submit(api_client, tenant, s3_video).status_code == 202
    # Loopback is allow-listed in the test settings (TIMEMARK_URL_ALLOW_CIDRS).
    answer = submit(api_client, tenant, "http://127.0.0.1:9/clip.mp4")
    assert answer.status_code == 202 and answer.json()["source"] == "http://127.0.0.1:9/clip.mp4"


def test_webhook_secret_generated_shown_once(api_client, tenant, uploaded_source, webhook_receiver) -> None:
    answer = submit(api_client, tenant, uploaded_source, webhook={"url": webhook_receiver.url})
    assert answer.status_code == 202
    secret = answer.json()["webhook"]["secret"]
    assert secret.startswith("whsec_")
    polled = api_client.get(answer.headers["location"], headers=tenant.headers).json()
    assert polled["webhook"] == {"url": webhook_receiver.url, "secret": None}
    listed = api_client.get("/v1/jobs", headers=tenant.headers).text
    assert secret not in listed


# --------------------------------------------------------------------------------------- idempotency


def test_idempotent_replay_same_body(api_client, tenant, uploaded_source, count_rows) -> None:
    first = submit(api_client, tenant, uploaded_source, key="order-1")
    again = submit(api_client, tenant, uploaded_source, key="order-1")
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert count_rows(Job, tenant_id=tenant.tenant_id) == 1


def test_idempotency_key_with_other_body_is_422(api_client, tenant, uploaded_source, count_rows) -> None:
    assert submit(api_client, tenant, uploaded_source, key="order-2").status_code == 202
    changed = submit(api_client, tenant, uploaded_source, key="order-2", client_ref="other")
    assert_problem(changed, 422, "idempotency-key-reused")
    assert count_rows(Job, tenant_id=tenant.tenant_id) == 1


def test_idempotency_key_expires_after_published_window(
    api_client, tenant, uploaded_source, session_factory, count_rows
) -> None:
    first = submit(api_client, tenant, uploaded_source, key="old-key").json()
    with session_factory() as session:  # age the first job past the 24 h window
        row = session.get(Job, uuid.UUID(first["id"]))
        row.created_at = datetime.now(UTC) - timedelta(days=2)
        session.commit()
    second = submit(api_client, tenant, uploaded_source, key="old-key", client_ref="new body is fine")
    assert second.status_code == 202 and second.json()["id"] != first["id"]
    assert "idempotent-replayed" not in second.headers
    assert count_rows(Job, tenant_id=tenant.tenant_id) == 2


def test_idempotency_keys_are_per_tenant(api_client, tenant, other_tenant, uploaded_source, s3_video) -> None:
    a = submit(api_client, tenant, uploaded_source, key="shared")
    b = submit(api_client, other_tenant, s3_video, key="shared")
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]


@pytest.mark.parametrize("key", ["", "   ", "has space", "x" * 256, "caf\u00e9".encode()])
def test_malformed_idempotency_key_is_400(api_client, tenant, uploaded_source, key, count_rows) -> None:
    headers = {**tenant.headers, "Idempotency-Key": key}
    body = {"source": uploaded_source, "queries": ["q"]}
    answer = api_client.post("/v1/jobs", json=body, headers=headers)
    assert answer.status_code in (400, 422)
    assert_problem(answer, answer.status_code)
    assert count_rows(Job, tenant_id=tenant.tenant_id) == 0


def test_structured_field_quoted_key_accepted(api_client, tenant, uploaded_source) -> None:
    first = submit(api_client, tenant, uploaded_source, key='"8e03978e-40d5-43e8-bc93-6894a57f9324"')
    again = submit(api_client, tenant, uploaded_source, key="8e03978e-40d5-43e8-bc93-6894a57f9324")
    assert first.json()["id"] == again.json()["id"]


def test_concurrent_request_with_same_key_is_409(
    api_client, tenant, uploaded_source, pg_url, count_rows
) -> None:
    # Hold the advisory lock the API takes for (tenant, key), as an in-flight first request would.
    digest = hashlib.sha256(f"{tenant.tenant_id}:inflight".encode()).digest()
    lock_id = int.from_bytes(digest[:8], "big", signed=True)
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
        answer = submit(api_client, tenant, uploaded_source, key="inflight")
        body = assert_problem(answer, 409, "idempotency-in-progress")
        assert answer.headers["retry-after"] == "1" and body["status"] == 409
        conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
    assert count_rows(Job, tenant_id=tenant.tenant_id) == 0
    assert submit(api_client, tenant, uploaded_source, key="inflight").status_code == 202


# ------------------------------------------------------------------------------------------ listing


def test_list_paginates_with_opaque_tokens_and_filters(
    api_client, tenant, uploaded_source, session_factory
) -> None:
    ids = [submit(api_client, tenant, uploaded_source, client_ref=f"r{i % 2}").json()["id"] for i in range(7)]
    set_state(session_factory, ids[0], "probing", "running", "finalizing", "succeeded")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        answer = api_client.get(
            "/v1/jobs", params={"page_size": 3, "page_token": token}, headers=tenant.headers
        )
        assert answer.status_code == 200
        page = answer.json()
        seen += [j["id"] for j in page["data"]]
        pages += 1
        token = page["next_page_token"]
        if not token:
            break
        assert ids[0] not in token and "created" not in token  # opaque
    assert pages == 3 and seen == list(reversed(ids))  # newest first, no duplicates, nothing missed
    only_r1 = api_client.get("/v1/jobs", params={"client_ref": "r1"}, headers=tenant.headers).json()["data"]
    assert {j["id"] for j in only_r1} == {ids[i] for i in (1, 3, 5)}
    done = api_client.get("/v1/jobs", params={"state": "succeeded"}, headers=tenant.headers).json()["data"]
    assert [j["id"] for j in done] == [ids[0]] and done[0]["terminal"]
    both = api_client.get(
        "/v1/jobs", params=[("state", "succeeded"), ("state", "queued")], headers=tenant.headers
    )
    assert len(both.json()["data"]) == 7
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    later = api_client.get("/v1/jobs", params={"created_after": future}, headers=tenant.headers).json()
    assert later["data"] == [] and later["next_page_token"] == ""
    before = api_client.get("/v1/jobs", params={"created_before": future}, headers=tenant.headers).json()
    assert len(before["data"]) == 7


def test_page_token_bound_to_filters_and_tamper_proof(api_client, tenant, uploaded_source) -> None:
    for _ in range(3):
        submit(api_client, tenant, uploaded_source, client_ref="x")
    token = api_client.get("/v1/jobs", params={"page_size": 1}, headers=tenant.headers).json()[
        "next_page_token"
    ]
    assert token
    switched = api_client.get(
        "/v1/jobs", params={"page_token": token, "client_ref": "x"}, headers=tenant.headers
    )
    assert_problem(switched, 400, "bad-page-token")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert_problem(api_client.get("/v1/jobs", params={"page_token": forged}, headers=tenant.headers), 400)
    assert_problem(
        api_client.get("/v1/jobs", params={"page_token": "eyJpZCI6IDF9"}, headers=tenant.headers), 400
    )


def test_page_size_clamped_and_validated(api_client, tenant, uploaded_source) -> None:
    submit(api_client, tenant, uploaded_source)
    assert api_client.get("/v1/jobs", params={"page_size": 10**6}, headers=tenant.headers).status_code == 200
    for bad in ("0", "-1", "ten"):
        assert_problem(api_client.get("/v1/jobs", params={"page_size": bad}, headers=tenant.headers), 422)


# ------------------------------------------------------------------------------------ cancel, delete


def test_cancel_queued_job_is_immediate_and_records_webhook(
    api_client, tenant, uploaded_source, session_factory, webhook_receiver
) -> None:
    job = submit(api_client, tenant, uploaded_source, webhook={"url": webhook_receiver.url}).json()
    answer = api_client.post(f"/v1/jobs/{job['id']}:cancel", headers=tenant.headers)
    assert answer.status_code == 202 and answer.json()["state"] == "canceled"
    assert answer.json()["finished_at"] is not None
    with session_factory() as session:
        deliveries = session.scalars(select(Delivery).where(Delivery.job_id == uuid.UUID(job["id"]))).all()
    assert [d.event_type for d in deliveries] == ["job.canceled"]
    again = api_client.post(f"/v1/jobs/{job['id']}:cancel", headers=tenant.headers)
    assert again.status_code == 202 and again.json()["state"] == "canceled"  # asking twice is fine


def test_cancel_running_job_is_cooperative(api_client, tenant, uploaded_source, session_factory) -> None:
    job = submit(api_client, tenant, uploaded_source).json()
    set_state(session_factory, job["id"], "probing", "running")
    answer = api_client.post(f"/v1/jobs/{job['id']}:cancel", headers=tenant.headers)
    assert answer.status_code == 202 and answer.json()["state"] == "canceling"
    with session_factory() as session:
        assert session.get(Job, uuid.UUID(job["id"])).cancel_requested_at is not None


@pytest.mark.parametrize("final_state", ["succeeded", "failed"])
def test_cancel_finished_job_is_409(
    api_client, tenant, uploaded_source, session_factory, final_state
) -> None:
    job = submit(api_client, tenant, uploaded_source).json()
    path = ["probing", "running", "finalizing", "succeeded"] if final_state == "succeeded" else ["failed"]
    set_state(session_factory, job["id"], *path)
    assert_problem(
        api_client.post(f"/v1/jobs/{job['id']}:cancel", headers=tenant.headers), 409, "job-not-cancelable"
    )
    assert api_client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers).json()["state"] == final_state


def test_delete_only_terminal_jobs(api_client, tenant, uploaded_source, session_factory, count_rows) -> None:
    job = submit(api_client, tenant, uploaded_source).json()
    assert_problem(
        api_client.delete(f"/v1/jobs/{job['id']}", headers=tenant.headers), 409, "job-not-terminal"
    )
    set_state(session_factory, job["id"], "failed")
    with session_factory() as session:
        session.add(
            Segment(
                job_id=uuid.UUID(job["id"]),
                chunk_index=0,
                query_index=0,
                ordinal=0,
                start_s=0,
                end_s=1,
                confidence=0.5,
            )
        )
        session.commit()
    assert api_client.delete(f"/v1/jobs/{job['id']}", headers=tenant.headers).status_code == 204
    assert count_rows(Segment, job_id=uuid.UUID(job["id"])) == 0
    assert_problem(api_client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers), 404, "not-found")
    assert_problem(api_client.delete(f"/v1/jobs/{job['id']}", headers=tenant.headers), 404)


# ----------------------------------------------------------------------------------------- segments


def add_segments(session_factory: Any, job_id: str) -> None:
    """What finalize stores: 3 final segments for query 0, 2 for query 1, plus one raw chunk segment."""
    rows = [
        Segment(
            job_id=uuid.UUID(job_id),
            chunk_index=FINAL_CHUNK_INDEX,
            query_index=q,
            ordinal=rank - 1,
            final=True,
            start_s=10.0 * rank + q,
            end_s=10.0 * rank + q + 3723.5,
            confidence=conf,
            rank=rank,
            chunk_ids=[0, 1],
        )
        for q, ranks in ((0, [(1, 0.9), (2, 0.6), (3, 0.2)]), (1, [(1, 0.8), (2, 0.4)]))
        for rank, conf in ranks
    ]
    rows.append(
        Segment(
            job_id=uuid.UUID(job_id),
            chunk_index=0,
            query_index=0,
            ordinal=0,
            start_s=1.0,
            end_s=2.0,
            confidence=0.3,
        )
    )
    with session_factory() as session:
        session.add_all(rows)
        session.commit()


def test_segments_filters_timecodes_pagination(api_client, tenant, session_factory, uploaded_source) -> None:
    job = submit(api_client, tenant, uploaded_source, queries=["red circle", "blue square"]).json()
    set_state(session_factory, job["id"], "probing", "running", "finalizing", "succeeded")
    add_segments(session_factory, job["id"])
    url = f"/v1/jobs/{job['id']}/segments"
    everything = api_client.get(url, headers=tenant.headers).json()
    assert everything["job_state"] == "succeeded" and len(everything["data"]) == 5
    first = everything["data"][0]
    assert (first["query_index"], first["rank"], first["query"]) == (0, 1, "red circle")
    assert first["start_tc"] == "00:00:10.000" and first["end_tc"] == "01:02:13.500"
    confident = api_client.get(url, params={"min_confidence": 0.5}, headers=tenant.headers).json()["data"]
    assert sorted(s["confidence"] for s in confident) == [0.6, 0.8, 0.9]
    second_query = api_client.get(url, params={"query_index": 1}, headers=tenant.headers).json()["data"]
    assert [s["rank"] for s in second_query] == [1, 2] and {s["query"] for s in second_query} == {
        "blue square"
    }
    raw = api_client.get(url, params={"kind": "chunk"}, headers=tenant.headers).json()["data"]
    assert len(raw) == 1 and raw[0]["final"] is False
    collected, token = [], ""
    while True:
        page = api_client.get(
            url, params={"page_size": 2, "page_token": token}, headers=tenant.headers
        ).json()
        collected += [(s["query_index"], s["rank"]) for s in page["data"]]
        token = page["next_page_token"]
        if not token:
            break
    assert collected == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]
    for params in ({"min_confidence": 1.5}, {"min_confidence": -0.1}, {"query_index": -1}, {"kind": "raw"}):
        assert_problem(api_client.get(url, params=params, headers=tenant.headers), 422)


# ------------------------------------------------------------------------------------------ tenants


def test_other_tenant_sees_nothing(
    api_client, tenant, other_tenant, uploaded_source, session_factory
) -> None:
    job = submit(api_client, tenant, uploaded_source).json()
    set_state(session_factory, job["id"], "failed")
    hidden = [
        api_client.get(f"/v1/jobs/{job['id']}", headers=other_tenant.headers),
        api_client.get(f"/v1/jobs/{job['id']}/segments", headers=other_tenant.headers),
        api_client.post(f"/v1/jobs/{job['id']}:cancel", headers=other_tenant.headers),
        api_client.delete(f"/v1/jobs/{job['id']}", headers=other_tenant.headers),
    ]
    for answer in hidden:
        assert_problem(answer, 404, "not-found")
    assert api_client.get("/v1/jobs", headers=other_tenant.headers).json()["data"] == []
    # Another tenant cannot use this tenant's upload either.
    stolen = submit(api_client, other_tenant, uploaded_source)
    assert_problem(stolen, 422, "source-not-found")
    assert api_client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwdw=="},
        {"Authorization": "Bearer tm_000000000000_" + "a" * 43},
        {"Authorization": "Bearer not-a-key"},
    ],
)
@pytest.mark.parametrize(
    "path", ["/v1/jobs", f"/v1/jobs/{uuid.uuid4()}"]
)  # the poll route authenticates itself
def test_missing_or_bad_key_is_401(api_client, headers, path) -> None:
    answer = api_client.get(path, headers=headers)
    assert_problem(answer, 401, "unauthorized")
    assert answer.headers["www-authenticate"].startswith("Bearer")


# ------------------------------------------------------------------------------- quota, outages


def test_quota_full_is_429_with_retry_after(
    api_client, make_tenant, uploaded_source, count_rows, sample_video_path
):
    small = make_tenant(max_active_jobs=2)
    upload = api_client.post(
        "/v1/uploads",
        content=sample_video_path.read_bytes(),
        headers={**small.headers, "Content-Type": "video/mp4"},
    ).json()["source"]
    assert submit(api_client, small, upload).status_code == 202
    assert submit(api_client, small, upload).status_code == 202
    answer = submit(api_client, small, upload)
    body = assert_problem(answer, 429, "quota-exceeded")
    assert int(answer.headers["retry-after"]) > 0 and body["retry_after"] > 0
    assert count_rows(Job, tenant_id=small.tenant_id) == 2


def test_broker_down_gives_503_and_leaves_no_row(
    service_settings, db_engine, make_tenant, count_rows
) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    closed_port_settings = service_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    tenant = make_tenant()
    with TestClient(create_app(closed_port_settings), raise_server_exceptions=False) as client:
        answer = client.post(
            "/v1/jobs", json={"source": "http://127.0.0.1:9/v.mp4", "queries": ["q"]}, headers=tenant.headers
        )
        body = assert_problem(answer, 503, "service-unavailable")
        assert int(answer.headers["retry-after"]) > 0 and "queue" in body["detail"]
        ready = client.get("/readyz")
        assert_problem(ready, 503)
        assert ready.json()["checks"] == {"database": "ok", "broker": "unavailable"}
    assert count_rows(Job, tenant_id=tenant.tenant_id) == 0


def test_database_down_gives_503(service_settings) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    down = service_settings.model_copy(update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/x"})
    with TestClient(create_app(down), raise_server_exceptions=False) as client:
        answer = client.get("/v1/jobs", headers={"Authorization": "Bearer tm_000000000000_" + "a" * 43})
        assert_problem(answer, 503, "service-unavailable")
        assert answer.headers["retry-after"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json()["checks"]["database"] == "unavailable"


def test_job_view_reports_progress_and_error(api_client, tenant, uploaded_source, session_factory) -> None:
    job = submit(api_client, tenant, uploaded_source).json()
    with session_factory() as session:
        row = session.get(Job, uuid.UUID(job["id"]))
        transition(row, JobState.PROBING)
        transition(row, JobState.RUNNING)
        row.stage, row.chunks_done, row.chunks_total = "infer", 3, 8
        session.commit()
    polled = api_client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers).json()
    assert polled["progress"] == {"stage": "infer", "chunks_done": 3, "chunks_total": 8, "pct": 37.5}
    assert polled["started_at"] is not None
    with session_factory() as session:
        row = session.get(Job, uuid.UUID(job["id"]))
        transition(row, JobState.FAILED)
        row.error = {
            "type": "https://timemark.dev/problems/no-video-stream",
            "title": "No video stream",
            "status": 422,
            "detail": "the file has no video stream",
            "stage": "probe",
            "retryable": False,
        }
        session.commit()
    failed = api_client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers).json()
    assert failed["terminal"] and failed["error"]["stage"] == "probe"
    assert json.dumps(failed).count("whsec_") == 0


def test_poll_reads_the_same_view_as_the_orm(api_client, tenant, uploaded_source, session_factory) -> None:
    # PostgreSQL polls go through `api.poll` (driver, event loop); every other read through the ORM.
    from api.views import job_view

    assert api_client.app.state.poll_reader is not None
    job = submit(api_client, tenant, uploaded_source, metadata={"camera": "north"}, client_ref="ref-1").json()
    with session_factory() as session:
        row = session.get(Job, uuid.UUID(job["id"]))
        transition(row, JobState.PROBING)
        row.stage, row.chunks_total, row.video_seconds, row.tokens = "probe", 4, 12.5, 99
        session.commit()
        expected = json.loads(job_view(row).model_dump_json())
    assert api_client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers).json() == expected


def test_poll_survives_its_connections_being_killed(
    api_client, tenant, uploaded_source, session_factory
) -> None:
    # What a database restart does to the poll's idle connections: the next poll retries on a fresh one.
    job_id = submit(api_client, tenant, uploaded_source).json()["id"]
    assert api_client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).status_code == 200
    with session_factory() as session:
        killed = session.execute(
            select(func.pg_terminate_backend(text("pid")))
            .select_from(text("pg_stat_activity"))
            .where(text("application_name = 'timemark-api-poll'"))
        ).all()
    assert killed  # the poll had a pooled connection to kill
    answer = api_client.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
    assert answer.status_code == 200 and answer.json()["id"] == job_id


def test_poll_with_the_database_down_is_503() -> None:
    import asyncio

    from api.poll import DatabaseUnavailable, PollReader

    reader = PollReader("postgresql://postgres@127.0.0.1:1/x", 2, {"connect_timeout": 2})
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(reader.job(uuid.uuid4(), uuid.uuid4()))
