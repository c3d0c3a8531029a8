"""Faults around one running service: a webhook receiver that is down, cancels under load, killed workers.

One API + one real Celery worker (prefork, one child, beat inside) on this module's private Redis and
its own database in the private PostgreSQL cluster, the shipped small checkpoint through the native
engine. Webhook retry schedule, sweep interval and time limits are shortened (conftest) so each test
finishes in tens of seconds.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import free_port

from .conftest import (
    SAMPLING,
    PgCluster,
    RedisServer,
    Service,
    create_key,
    duplicate_segments,
    reliability_env,
    wait_terminal,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
QUERY = "When does the red circle appear?"


@pytest.fixture(scope="module")
def running(
    redis_server: RedisServer,
    pg_cluster: PgCluster,
    start_service: Any,
    s3_endpoint: str,
    s3_bucket: str,
    checkpoint: Path,
) -> tuple[Service, str, dict[str, str]]:
    database_url = pg_cluster.create_database()
    env = reliability_env(
        database_url=database_url,
        broker_url=redis_server.url,
        s3_endpoint=s3_endpoint,
        s3_bucket=s3_bucket,
        checkpoint=checkpoint,
    )
    service = start_service(env)
    return service, database_url, {"Authorization": f"Bearer {create_key(database_url)}"}


def _sql(database_url: str, query: str, **params: Any) -> list[Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(query), params).all()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------- webhook outage


class DedupingReceiver:
    """A real HTTP receiver that can be down (port closed) and deduplicates events by `webhook-id`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.raw: list[tuple[dict[str, str], bytes]] = []  # every POST that reached it
        self.by_id: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.raw.append((headers, body))
                    receiver.by_id.setdefault(headers.get("webhook-id", ""), body)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[DedupingReceiver]:
    hook = DedupingReceiver()  # not started: the receiver is "down" until the test starts it
    yield hook
    hook.stop()


def test_webhooks_delivered_once_after_receiver_outage(
    running: tuple[Service, str, dict[str, str]], small_video: str, receiver: DedupingReceiver
) -> None:
    from standardwebhooks import Webhook

    service, database_url, headers = running
    secret = "whsec_" + __import__("base64").b64encode(os.urandom(32)).decode()
    with httpx.Client(base_url=service.url, headers=headers, timeout=20) as client:
        ids = []
        for _ in range(2):
            answer = client.post(
                "/v1/jobs",
                json={
                    "source": small_video,
                    "queries": [QUERY],
                    "sampling": {**SAMPLING, "video_total_pixels": 50_176 * 12},
                    "webhook": {"url": receiver.url, "secret": secret},
                },
            )
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
        views = wait_terminal(client, ids, timeout_s=90)
        assert [views[i]["state"] for i in ids] == ["succeeded", "succeeded"]

        # The receiver is down: wait until each delivery has failed at least twice, then bring it up.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            failed = _sql(database_url, "SELECT count(*) FROM deliveries WHERE attempts >= 2")[0][0]
            if failed >= len(ids):
                break
            time.sleep(0.3)
        assert failed >= len(ids), "deliveries were not retried while the receiver was down"
        receiver.start()

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _sql(database_url, "SELECT count(*) FROM deliveries WHERE state = 'succeeded'")[0][0] >= 2:
                break
            time.sleep(0.3)

    deliveries = _sql(database_url, "SELECT id::text, state, attempts, job_id::text FROM deliveries")
    assert sorted(d[3] for d in deliveries) == sorted(ids)
    assert all(d[1] == "succeeded" for d in deliveries), deliveries
    time.sleep(2.5)  # a duplicate send would arrive within a sweep or two
    with receiver.lock:
        raw = list(receiver.raw)
        unique = dict(receiver.by_id)
    assert sorted(unique) == sorted(d[0] for d in deliveries)  # webhook-id is the delivery id
    assert len(raw) == len(unique), "an event reached the receiver twice"
    verifier = Webhook(secret)
    for request_headers, body in raw:
        event = verifier.verify(body, request_headers)  # raises on a bad signature or an old timestamp
        assert event["type"] == "job.succeeded" and event["data"]["id"] in ids

    # Attempts follow the schedule [0, 1, 2, 3, ...] s (jitter 0): attempt n+1 waits >= schedule[n].
    schedule = [0, 1, 2, 3, 4, 5]
    for delivery_id, _state, attempts, _job in deliveries:
        rows = _sql(
            database_url,
            "SELECT number, started_at, status_code, error FROM delivery_attempts "
            "WHERE delivery_id = :d ORDER BY number",
            d=delivery_id,
        )
        assert [r[0] for r in rows] == list(range(1, attempts + 1))  # every attempt recorded
        assert all(r[2] is None and r[3] for r in rows[:-1])  # the failures say why
        assert rows[-1][2] == 204
        starts: list[datetime] = [r[1] for r in rows]
        for number in range(1, len(starts)):
            gap = (starts[number] - starts[number - 1]).total_seconds()
            assert gap >= schedule[number] - 0.05, (number, gap)


# ---------------------------------------------------------------------------------- cancel under load


def test_cancel_under_load(running: tuple[Service, str, dict[str, str]], small_video: str) -> None:
    service, database_url, headers = running
    body = {"source": small_video, "queries": [QUERY, "When does the blue square appear?"]}
    body["sampling"] = SAMPLING  # 5 chunks per job
    with httpx.Client(base_url=service.url, headers=headers, timeout=20) as client:
        ids = [client.post("/v1/jobs", json=body).json()["id"] for _ in range(4)]
        # Wait for the first job's chunks to be running, then cancel it and the two queued behind.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            view = client.get(f"/v1/jobs/{ids[0]}").json()
            if view["state"] == "running" and view["progress"]["chunks_done"] >= 1:
                break
            time.sleep(0.1)
        canceled_at = time.monotonic()
        for job_id in ids[:3]:
            answer = client.post(f"/v1/jobs/{job_id}:cancel")
            assert answer.status_code == 202, answer.text
        views = wait_terminal(client, ids[:3], timeout_s=30)
        took = time.monotonic() - canceled_at
        assert [views[i]["state"] for i in ids[:3]] == ["canceled"] * 3, views
        # One chunk takes ~0.2-2 s with this model (measured: all three canceled 0.4 s after the cancels);
        # the bound is one slow chunk plus polling on a loaded 2-core box.
        assert took < 5, took
        # The worker takes new work: the uncanceled job and a fresh one both succeed.
        fresh = client.post("/v1/jobs", json=body).json()["id"]
        done = wait_terminal(client, [ids[3], fresh], timeout_s=90)
        assert done[ids[3]]["state"] == "succeeded" and done[fresh]["state"] == "succeeded", done
    first_done = views[ids[0]]["progress"]["chunks_done"]
    assert first_done < views[ids[0]]["progress"]["chunks_total"]  # it really stopped between chunks
    assert _sql(database_url, "SELECT count(*) FROM chunks WHERE state = 'running'")[0][0] == 0


# -------------------------------------------------------------------------------- worker killed, often


KILL_JOBS = int(os.environ.get("TIMEMARK_RELIABILITY_KILL_JOBS", "6"))
KILLS = int(os.environ.get("TIMEMARK_RELIABILITY_KILLS", "5"))


def test_worker_child_killed_repeatedly(
    running: tuple[Service, str, dict[str, str]], small_video: str
) -> None:
    """KILL_JOBS jobs x 5 chunks; SIGKILL the worker child KILLS times while a chunk is running.

    The issue asks for 30 jobs and 10 kills; the defaults are scaled to CI's time on 2 shared cores
    (TIMEMARK_RELIABILITY_KILL_JOBS=30 TIMEMARK_RELIABILITY_KILLS=10 runs the full size).
    """
    service, database_url, headers = running
    rng = random.Random(9)
    body = {"source": small_video, "queries": [QUERY], "sampling": SAMPLING}
    lost_before = _lost_infers(service.worker_log())
    with httpx.Client(base_url=service.url, headers=headers, timeout=20) as client:
        ids = []
        for _ in range(KILL_JOBS):
            answer = client.post("/v1/jobs", json=body)
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
        kills = 0
        killed_attempts: set[tuple[str, int, int]] = set()
        deadline = time.monotonic() + 150
        while kills < KILLS and time.monotonic() < deadline:
            # A chunk attempt that started and was not killed yet (a killed one stays `running` in the
            # database until its redelivery starts attempt n+1, so it must not count again).
            fresh = {
                (job_id, index, attempts)
                for job_id, index, attempts in _sql(
                    database_url,
                    'SELECT job_id::text, "index", attempts FROM chunks '
                    "WHERE state = 'running' AND job_id::text = ANY(:ids)",
                    ids=ids,
                )
            } - killed_attempts
            children = service.worker_children()
            if fresh and children:
                for child in children:  # at once: a chunk of this model runs for ~0.2-2 s
                    os.kill(child, signal.SIGKILL)
                killed_attempts |= fresh
                kills += 1
                time.sleep(rng.uniform(0.5, 2.0))  # let the pool replace the child and make progress
            else:
                time.sleep(0.02)
        assert kills == KILLS, f"only {kills} kills landed"
        views = wait_terminal(client, ids, timeout_s=150)
    states = [views.get(i, {}).get("state") for i in ids]
    assert states == ["succeeded"] * len(ids), (states, service.worker_log()[-3000:])
    assert duplicate_segments(database_url) == []
    rows = _sql(database_url, "SELECT state, attempts FROM chunks WHERE job_id::text = ANY(:ids)", ids=ids)
    assert len(rows) == 5 * len(ids) and all(state == "done" for state, _ in rows)
    assert all(attempts >= 1 for _, attempts in rows)
    # Every infer the kills interrupted (Celery logs WorkerLostError for it) was counted as an attempt.
    lost_infers = _lost_infers(service.worker_log()) - lost_before
    assert lost_infers >= KILLS // 2, f"only {lost_infers} of {KILLS} kills landed inside an infer task"
    assert sum(attempts - 1 for _, attempts in rows) >= lost_infers, (rows, lost_infers)
    assert service.worker is not None and service.worker.poll() is None


TASK_EVENT = re.compile(r"Task (timemark\.\w+)\[([0-9a-f-]+)\] (received|succeeded|raised|retry)")


def _lost_infers(log: str) -> int:
    """How many `infer` tasks a WorkerLostError ended, read from the worker's log.

    The log line of a WorkerLostError does not name the task, so the tasks received and not yet
    finished are tracked; one lost while an `infer` was in flight counts as a lost infer.
    """
    in_flight: dict[str, str] = {}
    lost = 0
    for line in log.splitlines():
        if "WorkerLostError" in line:
            infers = [task_id for task_id, name in in_flight.items() if name == "timemark.infer"]
            if infers:
                lost += 1
                in_flight.pop(infers[0])
            continue
        match = TASK_EVENT.search(line)
        if match is None:
            continue
        name, task_id, event = match.groups()
        if event == "received":
            in_flight[task_id] = name
        else:
            in_flight.pop(task_id, None)
    return lost
