"""`timemark frames`: show what the model will see of a video, and time the sampler end to end.

Probes the video, plans its chunks with the same code the workers use (or one window with
--start/--end, or the coarse whole-video pass with --coarse), decodes every planned frame and prints
one JSON document: the video facts, the plan (chunks, planned frame times, frame size, tokens per
frame), and per chunk the true frame times, decode statistics and seconds spent. With --out the
frames are also written as JPEGs. Bad input ends with a one-line error and exit status 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import typer

from timemark.cli import app


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command("frames")
def frames(
    video: str = typer.Argument(..., help="Video file or http(s) URL (presigned S3 URLs work)."),
    fps: float | None = typer.Option(None, "--fps", help="Frames per second to sample (default 2)."),
    start: float | None = typer.Option(None, "--start", help="Window start in seconds (one window only)."),
    end: float | None = typer.Option(None, "--end", help="Window end in seconds (one window only)."),
    out: Path | None = typer.Option(None, "--out", help="Write the sampled frames here as JPEGs."),
    coarse: bool = typer.Option(False, "--coarse", help="Plan the whole video as one context (coarse pass)."),
    min_pixels: int | None = typer.Option(None, "--min-pixels", help="Smallest frame size in pixels."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", help="Largest frame size in pixels."),
    total_pixels: int | None = typer.Option(None, "--total-pixels", help="Pixel budget of one context."),
    max_frames: int | None = typer.Option(None, "--max-frames", help="Most frames in one context."),
    overlap: float = typer.Option(4.0, "--overlap", help="Seconds two neighbouring chunks share."),
    backend: str = typer.Option("pyav", "--backend", help="pyav or decord."),
    skip: str = typer.Option(
        "auto", "--skip", help="Frames the decoder may drop: auto, none, nonref, bidir."
    ),
    threads: int = typer.Option(
        2, "--threads", min=1, max=256, help="Decoder threads (shared among --processes)."
    ),
    processes: int = typer.Option(
        1, "--processes", min=1, max=256, help="Decode each chunk in this many processes (PyAV)."
    ),
    timeout: float = typer.Option(
        15.0, "--timeout", min=0.1, max=3600.0, help="Seconds any network read may take."
    ),
    plan_only: bool = typer.Option(False, "--plan-only", help="Print the plan without decoding."),
) -> None:
    """Print the sampling plan of VIDEO as JSON and decode its frames (JPEGs with --out)."""
    from model_runtime.video import (
        SamplingParams,
        VideoError,
        VideoPlan,
        plan_chunks,
        plan_coarse,
        plan_window,
        probe_video,
        sample_chunk,
    )

    if skip not in ("auto", "none", "nonref", "bidir"):
        _fail(f"--skip must be auto, none, nonref or bidir, not {skip!r}")
    if coarse and (start is not None or end is not None):
        _fail("--coarse plans the whole video; drop --start/--end")
    given = {"fps": fps, "min_pixels": min_pixels, "max_pixels": max_pixels,
             "video_total_pixels": total_pixels, "max_frames": max_frames}  # fmt: skip
    try:
        params = SamplingParams.from_kwargs({k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        _fail(str(err))

    began = time.perf_counter()
    try:
        info = probe_video(video, timeout_s=timeout)
        if start is not None or end is not None:
            window = plan_window(info, params, start or 0.0, info.duration_s if end is None else end)
            plan = VideoPlan("chunked", [window], info, params, overlap_s=0.0, sample_fps=params.fps)
            kind = "window"
        else:
            plan = plan_coarse(info, params) if coarse else plan_chunks(info, params, overlap_s=overlap)
            kind = plan.kind
    except (VideoError, ValueError) as err:
        _fail(str(err))
    probe_s = time.perf_counter() - began

    document: dict[str, Any] = {"source": video, **plan.to_dict(), "kind": kind, "probe_s": round(probe_s, 4)}
    if not plan_only:
        try:
            document["decoded"] = _decode_all(video, plan, out, sample_chunk, backend, skip, threads, processes,
                                              timeout)  # fmt: skip
        except VideoError as err:
            _fail(str(err))
        document["total_s"] = round(time.perf_counter() - began, 4)
    json.dump(document, sys.stdout, indent=1)
    sys.stdout.write("\n")


def _decode_all(video: str, plan: Any, out: Path | None, sample_chunk: Any, backend: str, skip: str,
                threads: int, processes: int, timeout: float) -> list[dict[str, Any]]:  # fmt: skip
    """Decode every chunk in order (one in memory at a time), with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results = []
    total_frames = sum(c.n_frames for c in plan.chunks)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} frames"),
               TimeElapsedColumn())  # fmt: skip
    # Only draw the bar where someone watches and the work is long enough to want one.
    with Progress(
        *columns, console=console, disable=not console.is_terminal or total_frames < 200
    ) as progress:
        task = progress.add_task("decoding", total=total_frames)
        for chunk in plan.chunks:
            began = time.perf_counter()
            sampled = sample_chunk(
                video, chunk, backend=backend, skip=skip, threads=threads, timeout_s=timeout
            )
            seconds = time.perf_counter() - began
            written = _write_jpegs(out, chunk.index, sampled) if out is not None else []
            results.append(
                {
                    "chunk": chunk.index,
                    "timestamps": [round(t, 6) for t in sampled.timestamps],
                    "frames_shape": list(sampled.frames.shape),
                    "stats": sampled.stats.to_dict(),
                    "seconds": round(seconds, 4),
                    "files": written,
                }
            )
            progress.advance(task, chunk.n_frames)
    return results


def _write_jpegs(out: Path, chunk_index: int, sampled: Any) -> list[str]:
    from PIL import Image

    names = []
    for i, (frame, t) in enumerate(zip(sampled.frames, sampled.timestamps, strict=True)):
        path = out / f"chunk{chunk_index:03d}_frame{i:05d}_{t:09.3f}s.jpg"
        Image.fromarray(frame).save(path, quality=90)
        names.append(str(path))
    return names
