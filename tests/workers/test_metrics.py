"""workers.metrics in one process: task outcomes from Celery's signals, a chunk's stats, refusals.

The multiprocess serving path (a real prefork worker scraped after a job) is in
tests/e2e/test_worker_observability.py; here the recording functions are checked against the default
registry, with a real Celery app running tasks eagerly (the signals fire as in a worker).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from celery import Celery
from prometheus_client import REGISTRY

from model_runtime.grounding import GroundingStats
from workers import metrics


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_task_outcomes_and_durations_come_from_celerys_signals() -> None:
    app = Celery("metrics-test", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    calls = {"flaky": 0}

    @app.task(name="test.ok")
    def ok() -> int:
        return 1

    @app.task(name="test.broken")
    def broken() -> None:
        raise ValueError("bad input")

    @app.task(
        name="test.flaky", bind=True, autoretry_for=(ConnectionError,), max_retries=2, retry_backoff=False
    )
    def flaky(self: object) -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("blip")
        return "fine"

    before = {
        key: sample("timemark_tasks_total", task=key[0], outcome=key[1])
        for key in (("test.ok", "success"), ("test.broken", "failure"), ("test.flaky", "retry"))
    }
    durations_before = sample("timemark_task_duration_seconds_count", task="test.ok")
    assert ok.apply().get() == 1
    assert broken.apply().failed()
    assert flaky.apply().get() == "fine"
    assert (
        sample("timemark_tasks_total", task="test.ok", outcome="success")
        == before[("test.ok", "success")] + 1
    )
    assert (
        sample("timemark_tasks_total", task="test.broken", outcome="failure")
        == before[("test.broken", "failure")] + 1
    )
    assert (
        sample("timemark_tasks_total", task="test.flaky", outcome="retry")
        >= before[("test.flaky", "retry")] + 1
    )
    assert sample("timemark_task_duration_seconds_count", task="test.ok") == durations_before + 1


def test_a_chunks_stats_feed_frames_tokens_engine_and_usage_counters() -> None:
    stats = GroundingStats(frames=12, prompt_tokens=900, generated_tokens=40, decode_s=0.5, engine_s=2.0)
    names = [
        ("timemark_video_frames_decoded_total", {}),
        ("timemark_video_decode_seconds_total", {}),
        ("timemark_llm_prefill_tokens_total", {"engine": "test"}),
        ("timemark_llm_decode_tokens_total", {"engine": "test"}),
        ("timemark_llm_prefill_seconds_total", {"engine": "test"}),
        ("timemark_llm_decode_seconds_total", {"engine": "test"}),
        ("timemark_usage_tokens_total", {"kind": "prompt"}),
        ("timemark_usage_tokens_total", {"kind": "completion"}),
        ("timemark_usage_gpu_seconds_total", {}),
    ]
    before = [sample(name, **labels) for name, labels in names]
    metrics.record_chunk("test", stats)
    after = [sample(name, **labels) for name, labels in names]
    deltas = [round(b - a, 6) for a, b in zip(before, after, strict=True)]
    # Prefill and decode seconds both carry the engine call's wall time (no split is reported).
    assert deltas == [12, 0.5, 900, 40, 2.0, 2.0, 900, 40, 2.0]


def test_no_gpu_gauges_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the gauges are exercised by the worker there")
    metrics.record_gpu_memory()
    assert sample("timemark_gpu_memory_total_bytes", device="cuda:0") == 0.0
    assert not any(s.name.startswith("timemark_gpu_memory") for m in REGISTRY.collect() for s in m.samples)


def test_serving_refuses_without_the_multiprocess_directory() -> None:
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        metrics.serve_metrics(0)


@pytest.mark.parametrize("command", [["worker", "--log-format", "xml"], ["serve", "--log-format", "xml"]])
def test_cli_refuses_an_unknown_log_format(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMEMARK_")}
    result = subprocess.run(
        [sys.executable, "-c", "from timemark.cli import main; main()", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "log format must be json or text" in result.stderr


def test_a_taken_metrics_port_is_logged_and_the_worker_runs_on(tmp_path) -> None:
    """Serving in a fresh process the way `timemark worker` does; a port already bound is not fatal."""
    script = """
import os, socket, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
taken = socket.socket()
taken.bind(("0.0.0.0", 0))
taken.listen()
from workers import metrics
metrics.TASKS.labels("t", "success").inc()
assert metrics.serve_metrics(taken.getsockname()[1]) is None
server = metrics.serve_metrics(0)
import urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics").read().decode())
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "worker metrics not served" in result.stderr
    assert any(path.name.startswith("counter_") for path in tmp_path.iterdir())  # samples in files
    assert 'timemark_tasks_total{outcome="success",task="t"} 1.0' in result.stdout
