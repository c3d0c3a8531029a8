"""The worker's Prometheus metrics (the `worker` rows of deploy/metrics_catalog.py) and their HTTP server.

Prefork children do the work, so their samples live in prometheus_client's multiprocess files:
`timemark worker` sets PROMETHEUS_MULTIPROC_DIR to a fresh directory before anything imports
prometheus_client (its value class is chosen at that import) and before Celery forks; `serve_metrics`
then serves a `MultiProcessCollector` over all processes' files from the main process. Without that directory (tests
calling the pipeline in-process) the same metrics land in the default registry.

What is measured, and how:
- tasks and task wall time: Celery's task_prerun/task_postrun signals, outcome from the final state;
- chunk duration: claim to stored segments of one `infer` chunk (the final commit excluded);
- frames decoded and decode seconds: around `sample_chunk` in the pipeline;
- prefill/decode tokens: the engine's prompt tokens and generated tokens (`GroundingStats`);
- prefill/decode SECONDS: the Engine interface runs both phases in one `generate` call and reports no
  split, so both counters add the wall time of the engine calls that did the work. Tokens / seconds is
  therefore tokens per engine-second, a lower bound on each phase's own throughput;
- GPU seconds (usage): the same engine seconds, as stored on the chunk and the job (also on CPU engines);
- GPU memory: torch.cuda's counters after each chunk and model load, only when CUDA is initialized.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from celery.signals import task_postrun, task_prerun, worker_process_shutdown
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_METRICS_PORT = 9808
TASK_OUTCOMES = {"SUCCESS": "success", "RETRY": "retry", "FAILURE": "failure"}

TASKS = Counter("timemark_tasks", "Tasks by outcome (success, retry, failure)", ["task", "outcome"])
TASK_SECONDS = Histogram(
    "timemark_task_duration_seconds",
    "Task wall time",
    ["task"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
CHUNK_SECONDS = Histogram(
    "timemark_chunk_duration_seconds",
    "One infer chunk end to end: decode, sample, generate, store",
    ["engine"],
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200),
)
FRAMES_DECODED = Counter("timemark_video_frames_decoded", "Frames decoded and kept for the model")
DECODE_SECONDS = Counter("timemark_video_decode_seconds", "Seconds spent decoding video")
PREFILL_TOKENS = Counter("timemark_llm_prefill_tokens", "Prompt tokens prefilled", ["engine"])
PREFILL_SECONDS = Counter(
    "timemark_llm_prefill_seconds",
    "Wall seconds of the engine calls that prefilled (prefill and decode are not timed apart)",
    ["engine"],
)
DECODE_TOKENS = Counter("timemark_llm_decode_tokens", "Tokens generated", ["engine"])
GENERATE_SECONDS = Counter(
    "timemark_llm_decode_seconds",
    "Wall seconds of the engine calls that generated (prefill and decode are not timed apart)",
    ["engine"],
)
GPU_ALLOCATED = Gauge(
    "timemark_gpu_memory_allocated_bytes",
    "torch.cuda.memory_allocated",
    ["device"],
    multiprocess_mode="livemostrecent",
)
GPU_RESERVED = Gauge(
    "timemark_gpu_memory_reserved_bytes",
    "torch.cuda.memory_reserved",
    ["device"],
    multiprocess_mode="livemostrecent",
)
GPU_TOTAL = Gauge(
    "timemark_gpu_memory_total_bytes",
    "The device's total memory",
    ["device"],
    multiprocess_mode="livemostrecent",
)
MODEL_LOAD_SECONDS = Gauge(
    "timemark_model_load_seconds",
    "How long the last model load took",
    ["engine"],
    multiprocess_mode="mostrecent",
)
WEBHOOK_DELIVERIES = Counter(
    "timemark_webhook_deliveries", "Webhook attempts by outcome (delivered, retrying, failed)", ["outcome"]
)
USAGE_VIDEO_SECONDS = Counter("timemark_usage_video_seconds", "Video seconds of jobs that succeeded")
USAGE_TOKENS = Counter("timemark_usage_tokens", "Model tokens used (kind: prompt, completion)", ["kind"])
USAGE_GPU_SECONDS = Counter("timemark_usage_gpu_seconds", "Engine seconds used by infer tasks")

# Start times of the tasks this process is running (Celery runs one at a time per child).
_task_started: dict[str, float] = {}


# ------------------------------------------------------------------------------------ recording


def record_chunk(engine: str, stats: Any) -> None:
    """One grounded chunk's work from its `GroundingStats` (frames, decode_s, tokens, engine_s)."""
    FRAMES_DECODED.inc(stats.frames)
    DECODE_SECONDS.inc(stats.decode_s)
    PREFILL_TOKENS.labels(engine).inc(stats.prompt_tokens)
    DECODE_TOKENS.labels(engine).inc(stats.generated_tokens)
    PREFILL_SECONDS.labels(engine).inc(stats.engine_s)
    GENERATE_SECONDS.labels(engine).inc(stats.engine_s)
    USAGE_TOKENS.labels("prompt").inc(stats.prompt_tokens)
    USAGE_TOKENS.labels("completion").inc(stats.generated_tokens)
    USAGE_GPU_SECONDS.inc(stats.engine_s)
    record_gpu_memory()


def record_chunk_done(engine: str, seconds: float) -> None:
    CHUNK_SECONDS.labels(engine).observe(seconds)


def record_model_load(engine: str, seconds: float) -> None:
    MODEL_LOAD_SECONDS.labels(engine).set(seconds)
    record_gpu_memory()


def record_job_succeeded(video_seconds: float | None) -> None:
    USAGE_VIDEO_SECONDS.inc(max(0.0, video_seconds or 0.0))


def record_delivery(outcome: str) -> None:
    """`outcome`: delivered, retrying or failed (no further attempt)."""
    WEBHOOK_DELIVERIES.labels(outcome).inc()


def record_gpu_memory() -> None:
    """torch.cuda's memory counters per device, if this process has initialized CUDA (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    for index in range(torch.cuda.device_count()):
        device = f"cuda:{index}"
        GPU_ALLOCATED.labels(device).set(torch.cuda.memory_allocated(index))
        GPU_RESERVED.labels(device).set(torch.cuda.memory_reserved(index))
        GPU_TOTAL.labels(device).set(torch.cuda.get_device_properties(index).total_memory)


@task_prerun.connect
def _task_started_signal(task_id: str, **_: Any) -> None:
    _task_started[task_id] = time.perf_counter()


@task_postrun.connect
def _task_finished_signal(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    started = _task_started.pop(task_id, None)
    if started is not None:
        TASK_SECONDS.labels(task.name).observe(time.perf_counter() - started)
    outcome = TASK_OUTCOMES.get(state or "", (state or "unknown").lower())
    TASKS.labels(task.name, outcome).inc()


@worker_process_shutdown.connect
def _child_exited(**_: Any) -> None:
    """Drop this process's live gauges (GPU memory) from the multiprocess files as it exits."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())


# ---------------------------------------------------------------------------------- serving


def serve_metrics(port: int) -> Any:
    """Serve every process's samples on `port` (0.0.0.0) from this process; returns the HTTP server.

    Needs PROMETHEUS_MULTIPROC_DIR set before prometheus_client was first imported (`timemark worker`
    does so); a port already taken is logged and the worker runs on without metrics.
    """
    from prometheus_client import values

    if not os.environ.get(MULTIPROC_ENV) or values.ValueClass is values.MutexValue:
        raise RuntimeError(f"{MULTIPROC_ENV} must be set before prometheus_client is imported")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    try:
        server, _thread = start_http_server(port, registry=registry)
    except OSError as err:
        log.error("worker metrics not served: port %d: %s", port, err)
        return None
    log.info("worker metrics on :%d/metrics (samples in %s)", port, os.environ[MULTIPROC_ENV])
    return server
