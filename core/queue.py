"""The Celery app factory and the import-light way to put work on the queue.

The API and the workers share this module. It imports Celery only (never torch, never `workers`), so
`api/` can enqueue a task by its *name* and stay small (PostHog's pattern). Every reliability knob for
long GPU tasks lives in `make_celery` (spec service-conventions §4.1): late acks, reject on worker lost,
prefetch 1 with prefetch disabled, one visibility timeout set in every place Celery reads it, soft/hard
time limits, no result backend (PostgreSQL is the source of truth). Embedded mode swaps Redis for
kombu's SQLAlchemy transport on a SQLite file, so `timemark serve --embedded` needs no servers.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import KombuError

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"

# Task name -> queue. The API and the sweeper send by name; workers register these exact names.
TASK_QUEUES: dict[str, str] = {
    "timemark.probe": CPU_QUEUE,
    "timemark.infer": GPU_QUEUE,
    "timemark.finalize": CPU_QUEUE,
    "timemark.deliver": CPU_QUEUE,
    "timemark.ingest": CPU_QUEUE,
    "timemark.sweep": CPU_QUEUE,
}

# Defaults for settings that `core.settings.Settings` may not define (it owns the environment).
DEFAULT_SOFT_TIME_LIMIT_S = 900  # one chunk is minutes of GPU time at most; ~3x p99 chunk time
DEFAULT_HARD_TIME_LIMIT_S = 960
DEFAULT_VISIBILITY_TIMEOUT_S = 3600  # must exceed the hard limit plus margin, or Redis redelivers live tasks
DEFAULT_SWEEP_INTERVAL_S = 30.0
DEFAULT_SOFT_SHUTDOWN_S = 30.0
BROKER_CONNECT_TIMEOUT_S = 2.0


class QueueUnavailableError(RuntimeError):
    """The broker could not take the message. The API answers 503; the sweeper re-sends later."""


def _setting(settings: Any, name: str, default: Any) -> Any:
    value = getattr(settings, name, None)
    return default if value is None else value


def embedded_broker_url(data_dir: str | Path) -> str:
    """kombu's SQLAlchemy transport on a SQLite file inside the embedded data folder."""
    path = Path(data_dir).expanduser().resolve() / "broker.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqla+sqlite:///{path}"


def resolve_broker_url(settings: Any) -> str:
    """The broker URL settings ask for; embedded mode without one gets the SQLite transport."""
    url = getattr(settings, "broker_url", None)
    if not url and getattr(settings, "embedded", False):
        return embedded_broker_url(_setting(settings, "data_dir", "~/.cache/timemark"))
    if not url:
        raise ValueError("settings.broker_url is empty and embedded mode is off")
    return str(url)


def split_key_prefix(url: str) -> tuple[str, str | None]:
    """`redis://h:6379/0?key_prefix=team-a:` → the URL without it, and the prefix.

    Every Redis key of the broker (queues included) then starts with the prefix, so several
    deployments or test sessions can share one Redis database without seeing each other's messages.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((value for key, value in query if key == "key_prefix"), None)
    if prefix is None:
        return url, None
    if not prefix or len(prefix) > 64 or any(c.isspace() for c in prefix):
        raise ValueError("key_prefix must be 1-64 characters without spaces")
    rest = urlencode([(key, value) for key, value in query if key != "key_prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def make_celery(settings: Any) -> Celery:
    """A fresh Celery app configured from `settings` (`core.settings.Settings`).

    Reads `broker_url`, `embedded`, `data_dir` and, when present, `task_soft_time_limit_s`,
    `task_time_limit_s`, `visibility_timeout_s`, `sweep_interval_s`.
    """
    broker_url = resolve_broker_url(settings)
    soft_limit = int(_setting(settings, "task_soft_time_limit_s", DEFAULT_SOFT_TIME_LIMIT_S))
    hard_limit = int(_setting(settings, "task_time_limit_s", DEFAULT_HARD_TIME_LIMIT_S))
    visibility = int(_setting(settings, "visibility_timeout_s", DEFAULT_VISIBILITY_TIMEOUT_S))
    if not soft_limit < hard_limit < visibility:
        raise ValueError(
            f"need soft limit < hard limit < visibility timeout, got {soft_limit} / {hard_limit} / {visibility}"
        )
    is_redis = broker_url.startswith(("redis://", "rediss://"))
    broker_url, key_prefix = split_key_prefix(broker_url) if is_redis else (broker_url, None)

    app = Celery("timemark", broker=broker_url, set_as_current=False)
    # kombu hands the SQLAlchemy transport's options to create_engine: only engine arguments go there.
    transport_options: dict[str, Any] = {"connect_args": {"timeout": 30}}  # SQLite busy wait, seconds
    if is_redis:
        transport_options = {
            "visibility_timeout": visibility,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
            "socket_timeout": 10.0,
            "fanout_prefix": True,
            "fanout_patterns": True,
        }
        if key_prefix:
            transport_options["global_keyprefix"] = key_prefix
    exchange = Exchange("timemark", type="direct")
    app.conf.update(
        task_queues=[Queue(name, exchange, routing_key=name) for name in (CPU_QUEUE, GPU_QUEUE)],
        task_default_queue=CPU_QUEUE,
        task_default_exchange="timemark",
        task_default_routing_key=CPU_QUEUE,
        task_routes={name: {"queue": queue, "routing_key": queue} for name, queue in TASK_QUEUES.items()},
        task_serializer="json",
        accept_content=["json"],
        # Late acks + reject on worker lost: a killed worker's chunk is redelivered, never silently acked.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_soft_time_limit=soft_limit,
        task_time_limit=hard_limit,
        # PostgreSQL holds job state and results; Celery results would only be a second, stale copy.
        task_ignore_result=True,
        result_backend=None,
        # One message per process: long tasks must not hoard the queue (KEDA sees the real backlog).
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=is_redis,  # Celery >= 5.6, Redis only
        # The same timeout everywhere Celery reads it, or the shortest (1 h default) silently wins.
        broker_transport_options=transport_options,
        result_backend_transport_options={"visibility_timeout": visibility} if is_redis else {},
        visibility_timeout=visibility,
        # A late-ack task cannot be acked after the connection drops; running on only duplicates work.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=float(_setting(settings, "soft_shutdown_s", DEFAULT_SOFT_SHUTDOWN_S)),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT_S,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        worker_hijack_root_logger=False,
        beat_schedule={
            "timemark-sweep": {
                "task": "timemark.sweep",
                "schedule": float(_setting(settings, "sweep_interval_s", DEFAULT_SWEEP_INTERVAL_S)),
                "options": {"queue": CPU_QUEUE},
            }
        },
    )
    return app


_apps_lock = threading.Lock()
_apps_by_broker: dict[str, Celery] = {}  # a cache of built apps, not configuration


def celery_app(settings: Any | None = None) -> Celery:
    """The process-wide app for `settings` (default: `core.settings.get_settings()`), built once per broker."""
    if settings is None:
        from core.settings import get_settings

        settings = get_settings()
    key = resolve_broker_url(settings)
    with _apps_lock:
        app = _apps_by_broker.get(key)
        if app is None:
            app = _apps_by_broker[key] = make_celery(settings)
        return app


def enqueue(
    task_name: str,
    *args: Any,
    queue: str | None = None,
    countdown: float | None = None,
    settings: Any | None = None,
) -> str:
    """Send task `task_name` with `args` by name; returns the Celery task id.

    Call it only after the database commit that the task will read. Raises `QueueUnavailableError`
    when the broker cannot be reached (the row stays; the sweeper re-sends queued work). Keep
    `countdown` short (seconds, well under the visibility timeout): longer waits belong in the database.
    """
    if task_name not in TASK_QUEUES:
        raise ValueError(f"unknown task {task_name!r}; known: {sorted(TASK_QUEUES)}")
    target = queue or TASK_QUEUES[task_name]
    if target not in (CPU_QUEUE, GPU_QUEUE):
        raise ValueError(f"unknown queue {target!r}")
    app = celery_app(settings)
    try:
        result = app.send_task(
            task_name, args=list(args), queue=target, routing_key=target, countdown=countdown or None
        )
    except _transport_errors(app) as err:
        raise QueueUnavailableError(f"broker unavailable: {type(err).__name__}") from err
    return str(result.id)


def declare_queues(settings: Any | None = None) -> None:
    """Create the broker's queues now, once, before several processes use them. kombu's SQLAlchemy
    transport (embedded mode) creates a queue's row on first use without a lock: an API and a worker
    starting together could both insert it (`UNIQUE constraint failed: kombu_queue.name`), failing a
    submission with a 500. Idempotent; on Redis it is a no-op in effect."""
    app = celery_app(settings)
    with app.connection_for_write() as connection:
        for queue in app.conf.task_queues:
            queue.bind(connection.default_channel).declare()


def _transport_errors(app: Celery) -> tuple[type[BaseException], ...]:
    """Every exception type that means "the broker did not take it" for this app's transport."""
    with app.connection_for_write() as conn:  # building it does not connect
        return (KombuError, OSError, *conn.connection_errors, *conn.channel_errors)


def broker_ping(settings: Any | None = None, *, timeout_s: float = BROKER_CONNECT_TIMEOUT_S) -> bool:
    """True when the broker accepts a connection now (for `/readyz`)."""
    app = celery_app(settings)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout_s)
            if conn.transport_cls in ("redis", "rediss") or conn.transport.driver_type == "redis":
                conn.default_channel.client.ping()
        return True
    except Exception:
        return False


def queue_length(queue: str, settings: Any | None = None) -> int | None:
    """Messages waiting in `queue` (not counting ones workers hold), or None when the broker is down."""
    app = celery_app(settings)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0.2, timeout=BROKER_CONNECT_TIMEOUT_S
            )
            channel = conn.default_channel
            # Virtual transports (Redis, SQLAlchemy) count directly; a passive declare would also do,
            # but kombu's Redis existence check ignores `global_keyprefix` and reports "no queue".
            if hasattr(channel, "_size"):
                return int(channel._size(queue))
            _name, count, _consumers = channel.queue_declare(queue=queue, passive=True)
            return int(count)
    except Exception as err:
        # A queue never declared yet is empty; anything else means we cannot tell.
        if "NOT_FOUND" in str(err) or "404" in str(err):
            return 0
        return None
