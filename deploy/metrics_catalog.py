"""The Prometheus metric names the deployment assumes: the KEDA trigger, the dashboard and the docs.

The API and the workers must expose exactly these names, types and labels for `deploy/` to be true:
KEDA's in-flight trigger queries `timemark_queue_inflight`, and every Grafana panel reads one of them.
This list is data so that tests/deploy can check the dashboard and the README table against it and,
where the code exists, check that a real `/metrics` exposes the names listed for that process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["counter", "gauge", "histogram"]
Process = Literal["api", "worker"]


@dataclass(frozen=True)
class Metric:
    """One metric family as `prometheus_client` declares it (counters end in `_total`)."""

    name: str
    type: MetricType
    labels: tuple[str, ...]
    process: Process  # who serves it: the API on :8000/metrics, workers on :9808/metrics
    meaning: str


METRICS: tuple[Metric, ...] = (
    # --- API process (global gauges computed from the broker and the database at scrape time) ------
    Metric("timemark_queue_depth", "gauge", ("queue",), "api", "messages waiting in the broker list (LLEN)"),
    Metric(
        "timemark_queue_inflight",
        "gauge",
        ("queue",),
        "api",
        "tasks started and not finished (e.g. chunks in state running); KEDA's second GPU trigger",
    ),
    Metric("timemark_jobs", "gauge", ("state",), "api", "jobs per state (queued, probing, running, ...)"),
    Metric(
        "timemark_http_requests_total",
        "counter",
        ("method", "route", "status"),
        "api",
        "HTTP requests answered",
    ),
    Metric(
        "timemark_http_request_duration_seconds",
        "histogram",
        ("method", "route"),
        "api",
        "HTTP request latency",
    ),
    # --- worker processes ----------------------------------------------------------------------------
    Metric(
        "timemark_tasks_total",
        "counter",
        ("task", "outcome"),
        "worker",
        "tasks by outcome (success, retry, failure)",
    ),
    Metric("timemark_task_duration_seconds", "histogram", ("task",), "worker", "task wall time"),
    Metric(
        "timemark_chunk_duration_seconds",
        "histogram",
        ("engine",),
        "worker",
        "one infer chunk end to end: decode, sample, generate, store",
    ),
    Metric(
        "timemark_video_frames_decoded_total",
        "counter",
        (),
        "worker",
        "frames decoded and kept for the model",
    ),
    Metric("timemark_video_decode_seconds_total", "counter", (), "worker", "seconds spent decoding video"),
    Metric("timemark_llm_prefill_tokens_total", "counter", ("engine",), "worker", "prompt tokens prefilled"),
    Metric(
        "timemark_llm_prefill_seconds_total", "counter", ("engine",), "worker", "seconds spent in prefill"
    ),
    Metric("timemark_llm_decode_tokens_total", "counter", ("engine",), "worker", "tokens generated"),
    Metric("timemark_llm_decode_seconds_total", "counter", ("engine",), "worker", "seconds spent generating"),
    Metric(
        "timemark_gpu_memory_allocated_bytes", "gauge", ("device",), "worker", "torch.cuda.memory_allocated"
    ),
    Metric(
        "timemark_gpu_memory_reserved_bytes", "gauge", ("device",), "worker", "torch.cuda.memory_reserved"
    ),
    Metric("timemark_gpu_memory_total_bytes", "gauge", ("device",), "worker", "the device's total memory"),
    Metric(
        "timemark_model_load_seconds", "gauge", ("engine",), "worker", "how long the last model load took"
    ),
    Metric(
        "timemark_webhook_deliveries_total",
        "counter",
        ("outcome",),
        "worker",
        "webhook attempts by outcome (delivered, retrying, failed)",
    ),
    Metric("timemark_usage_video_seconds_total", "counter", (), "worker", "video seconds of finished jobs"),
    Metric(
        "timemark_usage_tokens_total",
        "counter",
        ("kind",),
        "worker",
        "model tokens used (kind: prompt, completion)",
    ),
    Metric("timemark_usage_gpu_seconds_total", "counter", (), "worker", "GPU seconds used by infer tasks"),
)


def metric_names(process: Process | None = None) -> set[str]:
    """Family names, optionally only those one process serves."""
    return {metric.name for metric in METRICS if process is None or metric.process == process}


def sample_names(metric: Metric) -> set[str]:
    """The series names a scrape shows for `metric` (histograms add _bucket, _sum, _count)."""
    if metric.type == "histogram":
        return {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
    return {metric.name}
