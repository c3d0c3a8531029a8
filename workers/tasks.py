"""The Celery tasks: thin wrappers with explicit names and queues around the bodies in this package.

Each task takes ids, runs its body (pipeline / delivery / ingest / sweeper) against the process's
`WorkerContext`, then sends the messages the body returned, after its commits. Transient failures
(database or broker down, storage hiccups, retryable video errors) retry with exponential backoff;
a failed `infer` attempt hands its chunk back and counts against the chunk's attempt cap, so a poison
chunk fails its job instead of looping. `register_tasks(app)` binds them to an app built by
`core.queue.make_celery`; the names are the ones `core.queue.TASK_QUEUES` routes.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import DBAPIError, OperationalError

from core.queue import CPU_QUEUE, GPU_QUEUE, QueueUnavailableError, enqueue
from core.storage import StorageError
from workers.context import WorkerContext, worker_context
from workers.delivery import deliver_event
from workers.ingest import ingest_batch
from workers.lifecycle import Send
from workers.pipeline import TransientTaskError, finalize_job, infer_chunk, probe_job, release_chunk
from workers.sweeper import sweep

log = logging.getLogger(__name__)

# Worth retrying the whole task later: the dependency may come back.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    DBAPIError,
    KombuOperationalError,
    QueueUnavailableError,
    StorageError,
    TransientTaskError,
    ConnectionError,
    TimeoutError,
)
RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 8,
}


def send_all(sends: list[Send], ctx: WorkerContext) -> None:
    """Send what a body asked for; a broker failure here is left to the sweeper (rows are committed)."""
    for send in sends:
        try:
            enqueue(send.task, *send.args, countdown=send.countdown, settings=ctx.settings)
        except QueueUnavailableError:
            log.warning(
                "broker unavailable; %s%s left for the sweeper",
                send.task,
                send.args,
                extra={"task": send.task},
            )


def register_tasks(app: Celery) -> dict[str, Task]:
    """Define timemark's tasks on `app`; returns them by name."""

    @app.task(name="timemark.probe", queue=CPU_QUEUE, acks_late=True, **RETRY_OPTIONS)
    def probe(job_id: str) -> None:
        ctx = worker_context()
        send_all(probe_job(ctx, job_id), ctx)

    @app.task(name="timemark.infer", queue=GPU_QUEUE, acks_late=True, bind=True, **RETRY_OPTIONS)
    def infer(self: Task, job_id: str, chunk_index: int) -> None:
        ctx = worker_context()
        try:
            sends = infer_chunk(ctx, job_id, int(chunk_index))
        except TRANSIENT_ERRORS:
            raise  # autoretry; the chunk stays `running` and the next attempt reclaims it
        except (SoftTimeLimitExceeded, Exception) as err:
            # The engine or decoder broke on this chunk: count it, hand the chunk back or fail the job.
            log.exception(
                "infer %s/%s failed",
                job_id,
                chunk_index,
                extra={"job_id": job_id, "chunk_index": int(chunk_index), "task": self.name},
            )
            reason = f"{type(err).__name__}: {err}"
            retry_in = min(60.0, 2.0 ** max(1, self.request.retries + 1))
            sends = release_chunk(ctx, job_id, int(chunk_index), reason, retry_in_s=retry_in)
        send_all(sends, ctx)

    @app.task(name="timemark.finalize", queue=CPU_QUEUE, acks_late=True, **RETRY_OPTIONS)
    def finalize(job_id: str) -> None:
        ctx = worker_context()
        send_all(finalize_job(ctx, job_id), ctx)

    @app.task(name="timemark.deliver", queue=CPU_QUEUE, acks_late=True, **RETRY_OPTIONS)
    def deliver(delivery_id: str) -> None:
        ctx = worker_context()
        send_all(deliver_event(ctx, delivery_id), ctx)

    @app.task(name="timemark.ingest", queue=CPU_QUEUE, acks_late=True, **RETRY_OPTIONS)
    def ingest(batch_id: str) -> None:
        ctx = worker_context()
        send_all(ingest_batch(ctx, batch_id), ctx)

    @app.task(name="timemark.sweep", queue=CPU_QUEUE, acks_late=True, ignore_result=True)
    def sweeper() -> None:
        ctx = worker_context()
        send_all(sweep(ctx), ctx)

    return {task.name: task for task in (probe, infer, finalize, deliver, ingest, sweeper)}
