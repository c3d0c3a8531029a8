"""What one worker process holds on to: settings, the database session factory, storage, the engine.

Everything is built on first use and kept for the life of the process. The engine in particular is
loaded lazily in the task that first needs it (never in the parent before fork: CUDA does not survive
`fork()`, and Celery kills slow `worker_process_init` handlers after 4 s), then reused by every later
chunk. Tests build a `WorkerContext` directly from their own `Settings`; the Celery tasks use
`worker_context()`, one per process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from core.db import make_engine, make_sessionmaker
from core.settings import Settings, get_settings
from core.storage import open_storage, presigned_url

if TYPE_CHECKING:
    from model_runtime.engine.base import Engine

log = logging.getLogger(__name__)


class EngineConfigError(RuntimeError):
    """Settings do not describe a loadable engine (e.g. the native engine without a checkpoint)."""


def engine_options(settings: Settings) -> tuple[str, dict[str, Any]]:
    """`load_engine` arguments for the engine the settings choose."""
    kind = settings.engine_kind
    if kind == "native":
        if not settings.engine_checkpoint:
            raise EngineConfigError(
                "TIMEMARK_ENGINE_CHECKPOINT is not set: the native engine needs a checkpoint"
            )
        return kind, {
            "checkpoint": settings.engine_checkpoint,
            "device": settings.engine_device,
            "dtype": settings.engine_dtype,
            "attn_impl": settings.engine_attn_impl,
            "moe_impl": settings.engine_moe_impl,
            "quantize": None if settings.engine_quantize == "none" else settings.engine_quantize,
            "index_fp8": settings.engine_index_fp8,
            "tp": settings.engine_tp,
            "max_batch": settings.engine_max_batch,
            "cuda_graphs": settings.engine_cuda_graphs,
        }
    if kind == "openai":
        if not settings.engine_base_url or not settings.engine_model:
            raise EngineConfigError(
                "the openai engine needs TIMEMARK_ENGINE_BASE_URL and TIMEMARK_ENGINE_MODEL"
            )
        key = settings.engine_api_key.get_secret_value() if settings.engine_api_key else None
        return kind, {
            "base_url": settings.engine_base_url,
            "model": settings.engine_model,
            "api_key": key,
            "timeout_s": settings.engine_timeout_s,
        }
    if not settings.engine_checkpoint:
        raise EngineConfigError("the sglang engine needs TIMEMARK_ENGINE_CHECKPOINT (the model path)")
    return kind, {"model_path": settings.engine_checkpoint}


class WorkerContext:
    """Per-process resources, each built on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._pid = os.getpid()

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        # Small pool: a worker process runs one task at a time.
        overrides: dict[str, Any] = {} if self.settings.is_sqlite else {"pool_size": 2, "max_overflow": 2}
        return make_sessionmaker(make_engine(self.settings, **overrides))

    @cached_property
    def storage(self) -> Any:
        return open_storage(self.settings)

    def source_url(self, source_uri: str) -> str:
        """Something PyAV opens for a job's resolved source (presigned GET, local path, or the URL)."""
        return presigned_url(source_uri, self.settings)

    def engine(self) -> Engine:
        """The process's engine, loaded on first call and kept."""
        with self._engine_lock:
            if self._engine is None:
                from model_runtime.engine import load_engine

                kind, options = engine_options(self.settings)
                log.info("loading %s engine (pid %d)", kind, os.getpid())
                started = time.perf_counter()
                self._engine = load_engine(kind, **options)
                from workers import metrics  # here: prometheus_client only once a worker needs an engine

                metrics.record_model_load(kind, time.perf_counter() - started)
            return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


_context_lock = threading.Lock()
_process_context: WorkerContext | None = None  # the process's resources, not configuration


def worker_context() -> WorkerContext:
    """The context of this process (rebuilt in a forked child: pooled connections never cross fork)."""
    global _process_context
    with _context_lock:
        if _process_context is None or _process_context._pid != os.getpid():
            _process_context = WorkerContext(get_settings())
        return _process_context
