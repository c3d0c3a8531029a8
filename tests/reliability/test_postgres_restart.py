"""PostgreSQL stopped (immediate mode, like a crash) mid-run and started again.

The API must answer 503 problem documents with `Retry-After` while the database is away and recover by
itself (its pool drops the dead connections); workers whose writes failed retry them (or the sweeper
re-sends their work); every job accepted before the outage ends `succeeded`, each chunk's segments
stored once.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from .conftest import (
    PgCluster,
    RedisServer,
    duplicate_segments,
    start_outage_run,
    wait_terminal,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_jobs_survive_a_postgres_restart(
    redis_server: RedisServer,
    pg_cluster: PgCluster,
    start_service: object,
    s3_endpoint: str,
    s3_bucket: str,
    checkpoint: Path,
    small_video: str,
) -> None:
    service, headers, body, accepted, database_url = start_outage_run(
        start_service, redis_server, pg_cluster, s3_endpoint, s3_bucket, checkpoint, small_video
    )
    with httpx.Client(base_url=service.url, headers=headers, timeout=20) as client:
        pg_cluster.stop("immediate")
        try:
            for request in (
                lambda: client.get(f"/v1/jobs/{accepted[0]}"),
                lambda: client.get("/v1/jobs"),
                lambda: client.post("/v1/jobs", json=body),
                lambda: client.get("/readyz"),
            ):
                answer = request()
                assert answer.status_code == 503, (answer.status_code, answer.text)
                assert answer.headers["content-type"].startswith("application/problem+json")
                assert int(answer.headers["Retry-After"]) > 0
            time.sleep(3)
        finally:
            pg_cluster.start()

        # The API recovers by itself: no restart of uvicorn.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and client.get("/readyz").status_code != 200:
            time.sleep(0.3)
        assert client.get("/readyz").status_code == 200
        assert client.get(f"/v1/jobs/{accepted[0]}").status_code == 200
        views = wait_terminal(client, accepted, timeout_s=150)

    states = {job_id: views.get(job_id, {}).get("state") for job_id in accepted}
    assert all(state == "succeeded" for state in states.values()), (states, service.worker_log()[-4000:])
    assert duplicate_segments(database_url) == []
    engine = create_engine(database_url)
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT count(*) FROM jobs")).scalar()
        not_done = conn.execute(text("SELECT count(*) FROM chunks WHERE state <> 'done'")).scalar()
    engine.dispose()
    assert jobs == len(accepted)  # nothing lost, nothing created twice
    assert not_done == 0
    assert service.worker is not None and service.worker.poll() is None
