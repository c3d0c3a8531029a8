"""`timemark demo`: the whole product in one command, through the public HTTP API.

It writes a sample synthetic video with known events, starts the embedded service (`timemark serve
--embedded` as a child process), creates an API key, uploads the video, submits a grounding job with
one query per event, follows it with a progress bar, prints the segments beside the ground truth,
and draws a timeline picture (PNG) of both. Exit code 0 when the job succeeded. With the tiny
random-weight checkpoint the segments are noise (it says so); the trained small model finds the events.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from workers.embedded import (
    RANDOM_CHECKPOINT_NOTE,
    child_process,
    embedded_env,
    migrate,
    resolve_checkpoint,
    settings_from_env,
    wait_ready,
)

# The look of the small model's training videos: 160×96, 30–80 s, a few coloured shapes.
DEMO_EVENTS = (
    ("red", "circle", 4.0, 12.0),
    ("blue", "square", 18.0, 27.0),
    ("green", "triangle", 31.0, 38.0),
)
DEMO_DURATION_S = 42.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_demo_video(out: Path) -> Any:
    from model_runtime.video import make_synthetic_video
    from model_runtime.video.synthetic import make_event

    events = [make_event(shape, color, start, end) for color, shape, start, end in DEMO_EVENTS]
    return make_synthetic_video(
        out / "demo.mp4", duration_s=DEMO_DURATION_S, events=events, seed=7, width=320, height=192
    )


def create_key(env: dict[str, str], tenant: str = "demo") -> str:
    from core.db import make_engine, make_sessionmaker
    from core.security import create_api_key

    engine = make_engine(settings_from_env(env))
    try:
        with make_sessionmaker(engine)() as session:
            return create_api_key(session, tenant, name="timemark demo")
    finally:
        engine.dispose()


def run_demo(
    *, data_dir: Path | None, checkpoint: str | None, out: Path, port: int = 0, timeout_s: float = 300.0
) -> int:
    """Run the demo; returns the process exit code."""
    from rich.console import Console

    console = Console()
    out = out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="timemark-demo-") as scratch:
        service_dir = (data_dir or Path(scratch)).expanduser().resolve()
        service_dir.mkdir(parents=True, exist_ok=True)
        with console.status("making a sample video and preparing the model…"):
            truth = make_demo_video(out)
            ckpt, trained = resolve_checkpoint(checkpoint)
            env = embedded_env(service_dir, ckpt)
            migrate(str(settings_from_env(env).database_url))
            api_key = create_key(env)
        console.print(
            f"sample video: {truth.path} ({truth.duration_s:.0f} s, events: "
            + ", ".join(f"{e.label} {e.start_s:g}–{e.end_s:g} s" for e in truth.events)
            + ")"
        )
        console.print(f"model: {ckpt}")
        if not trained:
            console.print(f"[yellow]note:[/] {RANDOM_CHECKPOINT_NOTE}")
        port = port or free_port()
        base_url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, "-c", "from timemark.cli import main; main()",
            "serve", "--embedded", "--port", str(port), "--data-dir", str(service_dir), "--checkpoint", str(ckpt),
        ]  # fmt: skip
        log_path = service_dir / "service.log"
        with child_process(command, env, log_path=log_path) as service:
            with console.status(f"starting the embedded service on {base_url}…"):
                wait_ready(base_url, timeout_s=90, process=service)
            try:
                return _drive(console, base_url, api_key, truth, out, timeout_s, trained)
            except Exception as err:
                console.print(f"[red]demo failed:[/] {err} (service log: {log_path})")
                return 1


def _drive(
    console: Any, base_url: str, api_key: str, truth: Any, out: Path, timeout_s: float, trained: bool
) -> int:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"}
    queries = [f"When does the {e.label} appear?" for e in truth.events]
    with httpx.Client(base_url=base_url, headers=headers, timeout=30.0) as client:
        with open(truth.path, "rb") as video:
            upload = _ok(
                client.post(
                    "/v1/uploads?filename=demo.mp4", content=video, headers={"Content-Type": "video/mp4"}
                )
            )
        job = _ok(
            client.post(
                "/v1/jobs",
                # No sampling: the embedded service defaults to the checkpoint's own (embedded_env).
                json={"source": upload["source"], "queries": queries, "client_ref": "demo"},
                headers={"Idempotency-Key": f"demo-{upload['id']}"},
            )
        )
        job = _follow(console, client, job["id"], timeout_s)
        if job["state"] != "succeeded":
            console.print(f"[red]job {job['state']}[/]: {job.get('error')}")
            return 1
        segments = _ok(client.get(f"/v1/jobs/{job['id']}/segments", params={"page_size": 1000}))["data"]
    _print_table(console, queries, truth, segments)
    picture = draw_timeline(out / "timeline.png", queries, truth, segments)
    console.print(
        f"job {job['id']}: {job['progress']['chunks_done']} chunks, {job['usage']['tokens']} tokens, "
        f"{job['usage']['gpu_seconds']:.1f} s of model time; timeline picture: {picture}"
    )
    if not trained:
        console.print(f"[yellow]note:[/] {RANDOM_CHECKPOINT_NOTE}")
    return 0


def _ok(response: Any) -> dict[str, Any]:
    if response.status_code >= 400:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} → {response.status_code}: {response.text[:300]}"
        )
    return response.json()


def _follow(console: Any, client: Any, job_id: str, timeout_s: float) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + timeout_s
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("queued", total=None)
        while True:
            job = _ok(client.get(f"/v1/jobs/{job_id}"))
            done, total = job["progress"]["chunks_done"], job["progress"]["chunks_total"]
            progress.update(
                bar,
                description=f"{job['state']} ({job['progress']['stage'] or 'waiting'})",
                completed=done,
                total=total,
            )
            if job["terminal"]:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s:.0f} s")
            time.sleep(0.5)


def _iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def _print_table(console: Any, queries: list[str], truth: Any, segments: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="segments found (final, ranked)")
    for column in ("query", "truth", "rank", "start", "end", "confidence", "IoU"):
        table.add_column(column)
    for qi, (query, event) in enumerate(zip(queries, truth.events, strict=True)):
        mine = [s for s in segments if s["query_index"] == qi]
        span = f"{event.start_s:g}–{event.end_s:g} s"
        if not mine:
            table.add_row(query, span, "–", "–", "–", "–", "no answer")
        for s in mine:
            iou = _iou((s["start_s"], s["end_s"]), (event.start_s, event.end_s))
            table.add_row(
                query,
                span,
                str(s["rank"]),
                s["start_tc"],
                s["end_tc"],
                f"{s['confidence']:.2f}",
                f"{iou:.2f}",
            )
    console.print(table)


def draw_timeline(path: Path, queries: list[str], truth: Any, segments: list[dict[str, Any]]) -> Path:
    """A PNG: per query, the true interval (green) above the found segments (blue, darker = more confident)."""
    from PIL import Image, ImageDraw

    width, left, right, row_h, top = 1000, 260, 20, 56, 30
    height = top + row_h * len(queries) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    scale = (width - left - right) / truth.duration_s

    def x(t: float) -> float:
        return left + max(0.0, min(t, truth.duration_s)) * scale

    draw.text((10, 8), "timemark demo: ground truth (green) vs segments found (blue)", fill="black")
    for qi, (query, event) in enumerate(zip(queries, truth.events, strict=True)):
        y = top + qi * row_h
        draw.text((10, y + 18), query[:40], fill="black")
        draw.rectangle([x(0), y + 4, x(truth.duration_s), y + row_h - 8], outline=(200, 200, 200))
        draw.rectangle([x(event.start_s), y + 8, x(event.end_s), y + 22], fill=(40, 170, 60))
        found = [s for s in segments if s["query_index"] == qi]
        if not found:
            draw.text((x(0) + 6, y + 28), "no segment found", fill=(150, 150, 150))
        for s in found:
            shade = int(220 - 180 * max(0.0, min(1.0, s["confidence"])))
            draw.rectangle(
                [x(s["start_s"]), y + 28, max(x(s["end_s"]), x(s["start_s"]) + 2), y + 42],
                fill=(shade, shade, 255),
            )
    axis_y = top + row_h * len(queries) + 8
    for t in range(0, int(truth.duration_s) + 1, 2):
        draw.line([x(t), axis_y, x(t), axis_y + 5], fill="black")
        draw.text((x(t) - 6, axis_y + 8), f"{t}s", fill="black")
    image.save(path)
    return path
