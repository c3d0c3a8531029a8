"""The worker-side Celery app: `core.queue.make_celery` plus timemark's tasks.

`create_worker_app(settings)` builds a fresh one (tests, `timemark worker`, `timemark beat`). The
module attribute `app` exists for Celery's own command line (`celery -A workers.app worker`) and is
built from the environment on first access, not at import.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown

from core.queue import make_celery
from core.settings import Settings, get_settings


def create_worker_app(settings: Settings | None = None) -> Celery:
    from workers.tasks import register_tasks

    app = make_celery(settings or get_settings())
    register_tasks(app)
    return app


@worker_process_shutdown.connect
def _release_engine(**_: Any) -> None:
    """Close the process's engine (frees GPU memory; ends an engine's server connections)."""
    from workers import context

    if context._process_context is not None:
        context._process_context.close()


def __getattr__(name: str) -> Any:
    if name == "app":
        return create_worker_app()
    raise AttributeError(f"module 'workers.app' has no attribute {name!r}")
