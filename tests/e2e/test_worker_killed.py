"""A worker child killed with SIGKILL in the middle of a chunk: the chunk is redelivered and the job ends.

This is the promise late acks + reject-on-worker-lost + the per-chunk attempt counter make: the killed
chunk's message goes back to Redis, the new child runs it again (attempt 2), its segments are stored
once, and the job still succeeds. (The full fault suite of issue 9 repeats this many times.)
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import upload_video

from .conftest import SAMPLING, Service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_chunk_survives_a_killed_worker_child(
    service: Service, e2e_env: dict[str, str], s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:

    from core.db import make_engine, make_sessionmaker
    from core.models import Chunk, Job, Segment
    from core.security import create_api_key
    from core.settings import Settings
    from model_runtime.video import make_synthetic_video

    truth = make_synthetic_video(tmp_path / "long.mp4", duration_s=24.0, seed=5)
    source = upload_video(s3_endpoint, s3_bucket, truth.path)
    engine = make_engine(Settings(database_url=e2e_env["TIMEMARK_DATABASE_URL"], secret_key="x" * 32))
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        api_key = create_api_key(session, f"kill-{uuid.uuid4().hex[:8]}")

    with httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as client:
        answer = client.post(
            "/v1/jobs",
            json={
                "source": source,
                "queries": ["When does the red circle appear?"],
                "sampling": SAMPLING,
            },
        )
        assert answer.status_code == 202, answer.text
        job_id = uuid.UUID(answer.json()["id"])

        # Wait for a chunk to be running, then kill the prefork child that runs it.
        deadline = time.monotonic() + 90
        killed: int | None = None
        while killed is None and time.monotonic() < deadline:
            with sessions() as session:
                running = session.scalar(
                    select(Chunk.index).where(Chunk.job_id == job_id, Chunk.state == "running").limit(1)
                )
            children = _children(service.worker.pid)
            if running is not None and running > 0 and children:
                for child in children:
                    os.kill(child, signal.SIGKILL)
                killed = running
            time.sleep(0.05)
        assert killed is not None, "never saw a running chunk to kill"

        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            state = client.get(f"/v1/jobs/{job_id}").json()["state"]
            if state in ("succeeded", "failed", "canceled"):
                break
            time.sleep(0.5)
    assert state == "succeeded", service.worker_log()[-4000:]

    with sessions() as session:
        chunks = {c.index: c for c in session.scalars(select(Chunk).where(Chunk.job_id == job_id))}
        assert chunks[killed].attempts >= 2  # the killed attempt was counted, the chunk ran again
        assert all(c.state == "done" for c in chunks.values())
        duplicates = session.execute(
            select(Segment.chunk_index, Segment.query_index, Segment.start_s, Segment.end_s)
            .where(Segment.job_id == job_id)
            .group_by(Segment.chunk_index, Segment.query_index, Segment.start_s, Segment.end_s)
            .having(func.count() > 1)
        ).all()
        assert duplicates == []  # the re-run replaced the chunk's rows instead of adding to them
        assert session.get(Job, job_id).chunks_done == len(chunks)
    engine.dispose()
    assert "WorkerLostError" in service.worker_log() or "SIGKILL" in service.worker_log()
