"""A real `timemark worker` (prefork, one child) runs a job; its metrics port and its JSON log are checked.

The worker serves prometheus_client's multiprocess registry from its main process while the child does
the work, so a scrape after the job must show every worker metric of deploy/metrics_catalog.py with the
catalog's type and labels and values that match the job (the chunks counted, the tokens and engine
seconds stored on the job). The GPU memory gauges are the exception on this CPU-only machine: they are
set only once CUDA is initialized, so here the test checks that they are absent. The worker's stderr is
JSON, one object per line, carrying the job's id, and no secret of the job appears in it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from workers.embedded import stop_process

from .conftest import SAMPLING, _child_env

pytestmark = pytest.mark.timeout(180)

GPU_METRICS = {
    "timemark_gpu_memory_allocated_bytes",
    "timemark_gpu_memory_reserved_bytes",
    "timemark_gpu_memory_total_bytes",
}


@dataclass
class MetricsWorker:
    process: subprocess.Popen
    metrics_url: str
    log_path: Path


@pytest.fixture(scope="module")
def metrics_worker(
    e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MetricsWorker]:
    from tests.conftest import free_port

    logs = tmp_path_factory.mktemp("observability")
    port = free_port()
    env = _child_env({**e2e_env, "TIMEMARK_DATA_DIR": str(logs)})
    log_path = logs / "worker.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", "from timemark.cli import main; main()", "worker",
             "--queues", "cpu,gpu", "--pool", "prefork", "--concurrency", "1",
             "--metrics-port", str(port), "--log-format", "json"],
            env=env, stdout=subprocess.DEVNULL, stderr=log_file, start_new_session=True,
        )  # fmt: skip
        try:
            yield MetricsWorker(process, f"http://127.0.0.1:{port}/metrics", log_path)
        finally:
            stop_process(process, grace_s=15)


def load_catalog() -> Any:
    """deploy/metrics_catalog.py (deploy/ holds scripts, not a package)."""
    path = Path(__file__).resolve().parents[2] / "deploy" / "metrics_catalog.py"
    spec = importlib.util.spec_from_file_location("deploy_metrics_catalog_e2e", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def scrape(url: str) -> dict[str, Any]:
    """Families by name as the parser gives them (counters without `_total`)."""
    answer = httpx.get(url, timeout=5)
    answer.raise_for_status()
    return {family.name: family for family in text_string_to_metric_families(answer.text)}


def value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    """Sum of the samples called `sample_name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in families.values()
        for sample in family.samples
        if sample.name == sample_name and labels.items() <= sample.labels.items()
    )


def test_worker_metrics_and_json_logs_after_a_job(
    metrics_worker: MetricsWorker,
    e2e_env: dict[str, str],
    s3_endpoint: str,
    s3_bucket: str,
    webhook_receiver: Any,
    tmp_path: Path,
) -> None:
    import boto3
    import torch
    from fastapi.testclient import TestClient

    from api.main import create_app
    from core.db import make_engine, make_sessionmaker
    from core.models import Job
    from core.security import create_api_key
    from core.settings import Settings
    from core.webhooks import generate_secret
    from model_runtime.video import make_synthetic_video

    catalog = load_catalog()
    video = make_synthetic_video(tmp_path / "v.mp4", duration_s=8.0, seed=3, width=160, height=96)
    key = f"e2e/{uuid.uuid4().hex}.mp4"
    boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ).put_object(Bucket=s3_bucket, Key=key, Body=Path(video.path).read_bytes())  # fmt: skip

    values = {k.removeprefix("TIMEMARK_").lower(): v for k, v in e2e_env.items()}
    values["url_allow_cidrs"] = tuple(json.loads(values["url_allow_cidrs"]))
    settings = Settings(**values)
    db = make_engine(settings)
    with make_sessionmaker(db)() as session:
        api_key = create_api_key(session, f"obs-{uuid.uuid4().hex[:8]}")
    secret = generate_secret()
    with TestClient(create_app(settings)) as api:
        answer = api.post(
            "/v1/jobs",
            json={
                "source": f"s3://{s3_bucket}/{key}",
                "queries": ["When does the red circle appear?"],
                "sampling": SAMPLING,
                "webhook": {"url": webhook_receiver.url, "secret": secret},
            },
            headers={"Authorization": f"Bearer {api_key}"},
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
    webhook_receiver.wait_for(1, timeout_s=150)
    with make_sessionmaker(db)() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job.state == "succeeded", metrics_worker.log_path.read_text()[-3000:]
        chunks, tokens, gpu_seconds, video_seconds = (
            job.chunks_total,
            job.tokens,
            job.gpu_seconds,
            job.video_seconds,
        )
    db.dispose()

    # The delivery is counted just after the POST the receiver saw: wait for it to land.
    deadline = time.monotonic() + 15
    families = scrape(metrics_worker.metrics_url)
    while value(families, "timemark_webhook_deliveries_total", outcome="delivered") < 1:
        assert time.monotonic() < deadline, "the delivered webhook was never counted"
        time.sleep(0.2)
        families = scrape(metrics_worker.metrics_url)

    # Every catalog worker metric is exposed with the catalog's type and labels (GPU ones need CUDA).
    assert not torch.cuda.is_available(), "this test's GPU expectations are for a CPU-only machine"
    for metric in catalog.METRICS:
        if metric.process != "worker":
            continue
        family = families.get(metric.name.removesuffix("_total") if metric.type == "counter" else metric.name)
        if metric.name in GPU_METRICS:
            assert family is None, f"{metric.name} exposed without CUDA"
            continue
        assert family is not None, f"{metric.name} not exposed by the worker"
        assert family.type == metric.type, f"{metric.name}: {family.type}, catalog says {metric.type}"
        names = {s.name for s in family.samples}
        assert names >= catalog.sample_names(metric), (metric.name, names)
        for sample in family.samples:
            labels = set(sample.labels) - {"le"}
            assert labels == set(metric.labels), f"{sample.name} has labels {labels}, catalog {metric.labels}"

    # Values agree with the job the worker just ran.
    for task in ("timemark.probe", "timemark.finalize", "timemark.deliver"):
        assert value(families, "timemark_tasks_total", task=task, outcome="success") >= 1, task
    assert value(families, "timemark_tasks_total", task="timemark.infer", outcome="success") >= chunks >= 1
    assert value(families, "timemark_task_duration_seconds_count", task="timemark.infer") >= chunks
    assert value(families, "timemark_chunk_duration_seconds_count", engine="native") == chunks
    assert value(families, "timemark_chunk_duration_seconds_sum", engine="native") > 0
    assert value(families, "timemark_video_frames_decoded_total") >= chunks
    assert value(families, "timemark_video_decode_seconds_total") > 0
    prompt = value(families, "timemark_llm_prefill_tokens_total", engine="native")
    generated = value(families, "timemark_llm_decode_tokens_total", engine="native")
    assert prompt > 0 and prompt + generated == tokens
    assert value(families, "timemark_usage_tokens_total", kind="prompt") == prompt
    assert value(families, "timemark_usage_tokens_total", kind="completion") == generated
    engine_seconds = value(families, "timemark_llm_prefill_seconds_total", engine="native")
    assert engine_seconds == pytest.approx(gpu_seconds, rel=1e-6) and engine_seconds > 0
    assert value(families, "timemark_llm_decode_seconds_total", engine="native") == engine_seconds
    assert value(families, "timemark_usage_gpu_seconds_total") == pytest.approx(gpu_seconds, rel=1e-6)
    assert value(families, "timemark_usage_video_seconds_total") == pytest.approx(video_seconds)
    assert value(families, "timemark_model_load_seconds", engine="native") > 0

    # The log: JSON lines (but for Celery's root-user warning, printed before logging is set up), the
    # job's id on its lines, no secret anywhere (presigned GETs carry `Signature=` in their query).
    log_text = metrics_worker.log_path.read_text()
    entries = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    assert entries and all({"timestamp", "level", "logger", "message"} <= set(e) for e in entries)
    mine = [e for e in entries if e.get("job_id") == job_id]
    assert {e["message"] for e in mine} >= {f"job {job_id} succeeded"}
    assert sum("chunk_index" in e for e in mine) == chunks
    for leaked in (secret, api_key, "Signature="):
        assert leaked not in log_text
