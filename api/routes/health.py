"""Liveness, readiness and Prometheus metrics.

`/healthz` says the process answers; `/readyz` says it can do its job (database and broker both
reachable) and is what a load balancer should route on; `/metrics` exposes request counters and
latency histograms per route plus jobs per state (read from the database at scrape time).
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
from core.models import Job
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


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Exposition"}},
)
def metrics(request: Request) -> Response:
    registry = CollectorRegistry()
    registry.register(JobStateCollector(request))
    body = generate_latest(request.app.state.metrics_registry) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
