"""Liveness, readiness and Prometheus metrics.

`/healthz` says the process answers; `/readyz` says it can do its job (database and broker both
reachable) and is what a load balancer should route on; `/metrics` exposes request counters and
latency histograms per route, jobs per state, queue depth and in-flight work (read from the database
and the broker at scrape time).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from api.errors import problem_response
from core import queue
from core.models import Chunk, Job
from core.problems import Kinds

router = APIRouter(tags=["health"])
log = logging.getLogger("timemark.api")


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _database_ok(request: Request) -> bool:
    try:
        with request.app.state.db_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError as err:
        log.warning("readyz: database check failed: %s", type(err).__name__)
        return False


@router.get("/readyz", summary="Readiness: database and broker reachable")
async def readyz(request: Request) -> Response:
    settings = request.app.state.settings
    checks = {
        "database": "ok" if await run_in_threadpool(_database_ok, request) else "unavailable",
        "broker": "ok" if await run_in_threadpool(queue.broker_ping, settings) else "unavailable",
    }
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    retry_after = settings.unavailable_retry_after_s
    return problem_response(
        Kinds.SERVICE_UNAVAILABLE,
        "not ready: " + ", ".join(k for k, v in checks.items() if v != "ok"),
        instance="/readyz",
        headers={"Retry-After": str(retry_after)},
        checks=checks,
    )


class JobStateCollector(Collector):
    """`timemark_jobs{state}`: jobs per state, counted when Prometheus scrapes."""

    def __init__(self, request: Request) -> None:
        self._engine = request.app.state.db_engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("timemark_jobs", "Jobs per state", labels=["state"])
        try:
            with self._engine.connect() as conn:
                for state, count in conn.execute(select(Job.state, func.count()).group_by(Job.state)):
                    family.add_metric([state], count)
        except SQLAlchemyError:
            return  # a database outage must not break the scrape of the other metrics
        yield family


class QueueCollector(Collector):
    """`timemark_queue_depth{queue}` (messages waiting in the broker) and `timemark_queue_inflight{queue}`
    (work started and not finished: chunks running on `gpu`, jobs probing or finalizing on `cpu`).

    KEDA scales GPU workers on depth + in-flight, so pods busy with a chunk are not scaled away.
    """

    def __init__(self, request: Request) -> None:
        self._engine = request.app.state.db_engine
        self._settings = request.app.state.settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("timemark_queue_depth", "Messages waiting in the broker", labels=["queue"])
        for name in (queue.CPU_QUEUE, queue.GPU_QUEUE):
            length = queue.queue_length(name, self._settings)
            if length is not None:  # broker down: leave the gauge out rather than report 0
                depth.add_metric([name], length)
        yield depth
        inflight = GaugeMetricFamily(
            "timemark_queue_inflight", "Tasks started, not finished", labels=["queue"]
        )
        try:
            with self._engine.connect() as conn:
                running = conn.execute(select(func.count()).where(Chunk.state == "running")).scalar_one()
                busy_jobs = conn.execute(
                    select(func.count()).where(Job.state.in_(("probing", "finalizing")))
                ).scalar_one()
        except SQLAlchemyError:
            return
        inflight.add_metric([queue.GPU_QUEUE], running)
        inflight.add_metric([queue.CPU_QUEUE], busy_jobs)
        yield inflight


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Exposition"}},
)
def metrics(request: Request) -> Response:
    registry = CollectorRegistry()
    registry.register(JobStateCollector(request))
    registry.register(QueueCollector(request))
    body = generate_latest(request.app.state.metrics_registry) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
