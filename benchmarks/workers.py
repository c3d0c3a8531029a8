"""Job pipeline throughput on the CPU: jobs/min, chunks/s and job latency with the shipped small model.

Starts the API (uvicorn, one process) and one Celery worker (`timemark worker --queues cpu,gpu
--concurrency 1`, prefork, one torch thread) on a fresh PostgreSQL database and an empty Redis DB index,
with local file storage; uploads a 40 s synthetic video (160×96, three events) through `/v1/uploads`;
then, per run, submits `--jobs` jobs back to back over HTTP and polls each until it ends. The engine's
share is the jobs' `usage.gpu_seconds` (time inside `Engine.generate`); the rest is probing, decoding,
the database and the queue hops.

    python -m benchmarks.workers [--jobs 12] [--out benchmarks/results/workers.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import ROOT, claim_empty_redis_db, create_api_key, machine, migrated_database
from workers.embedded import checkpoint_video_sampling, child_process, wait_ready

CHECKPOINT = ROOT / "model_runtime" / "checkpoints" / "keye-synth-small"
QUERIES = ["When does the red circle appear?", "When does the blue square appear?"]
# Runs: the model's own sampling (its preprocessor config: 8-s windows, so 9 overlapping chunks per 40-s
# video), then one context per video (a 4,096-token budget; throughput only: the model was trained on
# windows). Jobs name it explicitly: the service's default is the Keye server's.
OWN = checkpoint_video_sampling(CHECKPOINT) or {}
RUNS = {
    "the model's own sampling (8-s windows: 16 frames × 15 tokens, overlapping by 4 s)": OWN,
    "one context per video (4,096-token budget, 8–15 tokens per frame)": {
        **OWN,
        "min_pixels": 8 * 784,
        "video_total_pixels": 4096 * 784,
    },
}


def write_video(path: Path) -> None:
    from model_runtime.video import make_event, make_synthetic_video

    events = [make_event("circle", "red", 3.0, 11.0), make_event("square", "blue", 16.0, 24.0)]
    make_synthetic_video(path, duration_s=40.0, events=events, seed=11, width=160, height=96)


def run_jobs(client: httpx.Client, source: str, sampling: dict[str, Any], n: int) -> dict[str, Any]:
    """Submit n jobs back to back, poll until all end; wall time, latencies, chunks, engine seconds."""
    started = time.monotonic()
    ids = []
    for _ in range(n):
        answer = client.post("/v1/jobs", json={"source": source, "queries": QUERIES, "sampling": sampling})
        answer.raise_for_status()
        ids.append(answer.json()["id"])
    submitted = {job_id: time.monotonic() for job_id in ids}
    finished: dict[str, dict[str, Any]] = {}
    while len(finished) < n:
        for job_id in ids:
            if job_id in finished:
                continue
            view = client.get(f"/v1/jobs/{job_id}").json()
            if view["terminal"]:
                finished[job_id] = {**view, "latency_s": time.monotonic() - submitted[job_id]}
        time.sleep(0.2)
    wall = time.monotonic() - started
    states = {v["state"] for v in finished.values()}
    if states != {"succeeded"}:
        raise RuntimeError(f"jobs ended {sorted(states)}, not all succeeded")
    latencies = [v["latency_s"] for v in finished.values()]
    chunks = sum(v["progress"]["chunks_total"] for v in finished.values())
    engine_s = sum(v["usage"]["gpu_seconds"] for v in finished.values())
    return {
        "jobs": n, "chunks": chunks, "wall_s": wall, "p50_s": statistics.median(latencies),
        "max_s": max(latencies), "engine_s": engine_s,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "workers.md")
    args = parser.parse_args()

    with migrated_database("tm_workers") as (_, db_url):
        rows, load_before = measure(args.jobs, db_url)
    write_report(args.out, rows, load_before)


def measure(jobs: int, db_url: str) -> tuple[list[tuple[str, dict[str, Any]]], tuple[float, ...]]:
    """API + worker on `db_url`; the first job, then each run of `RUNS`. Rows and the load average before."""
    work = Path(tempfile.mkdtemp(prefix="tm-workers-"))
    port = 18_000 + secrets.randbelow(2000)
    base = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TIMEMARK_")},
        "TIMEMARK_DATABASE_URL": db_url,
        "TIMEMARK_BROKER_URL": f"redis://127.0.0.1:6379/{claim_empty_redis_db()}",
        "TIMEMARK_STORAGE_URL": (work / "storage").as_uri(),
        "TIMEMARK_SECRET_KEY": secrets.token_urlsafe(32),
        "TIMEMARK_ENGINE_CHECKPOINT": str(CHECKPOINT),
        "TIMEMARK_DATA_DIR": str(work),
        "OMP_NUM_THREADS": "1",
    }
    rows: list[tuple[str, dict[str, Any]]] = []
    load_before = os.getloadavg()
    key = create_api_key(env, "workers")
    api = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    worker = [sys.executable, "-c", "from timemark.cli import main; main()", "worker", "--queues", "cpu,gpu",
              "--pool", "prefork", "--concurrency", "1"]  # fmt: skip
    with (
        child_process(api, env, log_path=work / "api.log") as api_process,
        child_process(worker, env, log_path=work / "worker.log"),
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client,
    ):
        wait_ready(base, timeout_s=90, process=api_process)
        write_video(work / "events.mp4")
        upload = client.post(
            "/v1/uploads",
            content=(work / "events.mp4").read_bytes(),
            headers={"Content-Type": "video/mp4"},
        )
        upload.raise_for_status()
        source = upload.json()["source"]
        first = run_jobs(client, source, OWN, 1)  # loads the engine in the worker child
        rows.append(("first job (includes loading the engine in the worker child)", first))
        for label, sampling in RUNS.items():
            rows.append((label, run_jobs(client, source, sampling, jobs)))
    return rows, load_before


def write_report(out: Path, rows: list[tuple[str, dict[str, Any]]], load_before: tuple[float, ...]) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Workers: job pipeline throughput on the CPU",
        "",
        f"- **Machine**: {machine()}; load average before {load_before[0]:.1f}; {now}.",
        "- **Set-up**: `python -m benchmarks.workers` — API (uvicorn, 1 process) + one `timemark worker --queues",
        "  cpu,gpu --concurrency 1` (Celery prefork, one child, `OMP_NUM_THREADS=1`) on local PostgreSQL (a fresh",
        "  database) + Redis (an empty DB index) + local file storage; model `keye-synth-small` (native engine,",
        "  `attn_impl=reference`); a 40 s 160×96 synthetic video uploaded once; 2 queries per job; jobs submitted",
        "  over HTTP back to back, completion seen by polling `GET /v1/jobs/{id}`.",
        "- **engine s** = the jobs' `usage.gpu_seconds` (time inside `Engine.generate`); **non-engine share** =",
        "  1 − engine s / wall: probing, decoding, database and queue hops (one worker runs everything in turn).",
        "",
        "| run | jobs | chunks | wall s | jobs/min | chunks/s | job latency p50 / max s | engine s | non-engine share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows:
        per_min = 60 * r["jobs"] / r["wall_s"]
        lines.append(
            f"| {label} | {r['jobs']} | {r['chunks']} | {r['wall_s']:.1f} | {per_min:.1f} | "
            f"{r['chunks'] / r['wall_s']:.2f} | {r['p50_s']:.1f} / {r['max_s']:.1f} | {r['engine_s']:.1f} | "
            f"{1 - r['engine_s'] / r['wall_s']:.1%} |"
        )
    lines += [
        "",
        "With one worker consuming both queues, `finalize` messages (cpu queue) wait behind the `infer` backlog",
        "(gpu queue), so the jobs of a burst finish near its end (p50 close to max). Production runs separate CPU",
        "and GPU workers (`deploy/`); embedded mode and the tests use one worker for simplicity.",
        "",
    ]
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
