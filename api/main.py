"""The timemark HTTP API: `create_app(settings)` wires settings, database, storage, errors and routes.

Run it with `uvicorn api.main:app` (the app is built on first access, from the environment) or
`uvicorn --factory api.main:create_app`. Nothing here imports torch or the model runtime.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry

from api.deps import AuthCache, reject_unknown_query
from api.errors import install_error_handlers
from api.middleware import BodyGuard, RequestMetrics
from api.openapi import install_openapi
from api.poll import PollReader
from api.routes import batches, deliveries, health, jobs, uploads, webhook_endpoints
from api.submission import QuotaCounter
from core.db import make_engine, make_sessionmaker
from core.settings import Settings, get_settings
from core.storage import open_storage


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Route threads beyond what the database pool can serve only queue for a connection and add GIL
    # contention; cap them at the pool size.
    to_thread.current_default_thread_limiter().total_tokens = app.state.settings.api_threads
    app.state.poll_reader = PollReader.open(app.state.settings)  # None on SQLite
    # Everything built so far lives as long as the process: keep it out of the collector's full passes,
    # whose pauses over the whole import graph (FastAPI, SQLAlchemy, pydantic) showed as ~100 ms p99 tails.
    gc.freeze()
    yield
    if app.state.poll_reader is not None:
        await app.state.poll_reader.close()
        app.state.poll_reader = None
    app.state.db_engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="timemark",
        version="0.1.0",
        summary="Find when things happen in long videos.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # No pre-ping: it doubles the round trips of a poll. After a database restart the first request on
    # each dead pooled connection answers 503 and SQLAlchemy drops the stale pool.
    app.state.db_engine = make_engine(settings, application_name="timemark-api", pool_pre_ping=False)
    app.state.sessions = make_sessionmaker(app.state.db_engine)
    app.state.read_sessions = make_sessionmaker(
        app.state.db_engine.execution_options(isolation_level="AUTOCOMMIT")
    )
    app.state.poll_reader = None  # opened per event loop by `lifespan`
    app.state.storage = open_storage(settings)
    app.state.auth_cache = AuthCache(settings.auth_cache_ttl_s)
    app.state.quota_counter = QuotaCounter(settings.quota_count_ttl_s)
    app.state.metrics_registry = CollectorRegistry()
    install_error_handlers(app)
    install_openapi(app)
    modules = (jobs, uploads, batches, deliveries, webhook_endpoints, health)
    for module in modules:  # health probes and scrapers may add their own query strings: not refused
        strict = [] if module is health else [Depends(reject_unknown_query)]
        app.include_router(module.router, dependencies=strict)
    app.state.route_table = [route for module in modules for route in module.router.routes]
    app.add_middleware(
        BodyGuard, max_body_bytes=settings.max_body_bytes, streaming_paths=uploads.STREAMING_PATHS
    )
    app.add_middleware(RequestMetrics, registry=app.state.metrics_registry)
    return app


def __getattr__(name: str) -> Any:  # `api.main.app` for uvicorn, built lazily so importing stays cheap
    if name == "app":
        return create_app()
    raise AttributeError(name)
