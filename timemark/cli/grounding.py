"""`timemark ground`, `timemark synth`, `timemark eval`: grounding without the service.

`ground` runs the same `ground_video` the workers call and prints the segments as a predictions file
(a list of `{video, query, segments}`, top-1 first), so its output can be fed to `eval --predictions`.
`synth` writes synthetic videos with known events and their TimeLens-Bench-style annotation file.
`eval` scores predictions (a file, the TimeLens results file, or a model run) against any supported
annotation format and prints mIoU and R1@{0.3,0.5,0.7} as JSON. Bad input ends with a one-line error
and exit status 2. Heavy imports (torch, PyAV) happen inside the commands.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from timemark.cli import app


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _check_output(path: Path, option: str, protect: list[Path | None]) -> None:
    """Refuse, before any work, an output file that cannot be written or would replace an input."""
    if path.is_dir():
        _fail(f"{option} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        _fail(f"{option} {path}: its folder {path.parent} does not exist")
    for source in protect:
        if source is not None and source.exists() and path.resolve() == source.resolve():
            _fail(f"{option} {path} would overwrite an input; choose another file")


def _open_engine(
    kind: str, checkpoint: Path | None, base_url: str | None, model: str, api_key: str | None, device: str
) -> Any:
    from model_runtime.engine import load_engine

    if kind == "native":
        if base_url is not None:
            _fail("--base-url needs --engine openai")
        if checkpoint is None:
            _fail("pass --checkpoint DIR (native engine) or --engine openai --base-url URL")
        if not (checkpoint / "config.json").is_file():
            _fail(f"{checkpoint} is not a checkpoint folder (no config.json)")
        return load_engine("native", checkpoint=checkpoint, device=device)
    if kind == "openai":
        if checkpoint is not None:
            _fail("--checkpoint is for the native engine; the openai engine talks to --base-url")
        if not base_url:
            _fail("--engine openai needs --base-url URL")
        return load_engine("openai", base_url=base_url, model=model, api_key=api_key)
    if kind == "color":  # the model-free baseline for synthetic sets
        from model_runtime.grounding.color_engine import ColorBaselineEngine

        return ColorBaselineEngine()
    _fail(f"unknown engine {kind!r} (expected native, openai or color)")


def _sampling(
    fps: float | None,
    min_pixels: int | None,
    max_pixels: int | None,
    total_pixels: int | None,
    checkpoint: Path | None = None,
) -> Any:
    """The flags given, over the sampling a native checkpoint was trained with (its preprocessor config's
    `video_sampling`, as the service uses it), over the server's defaults."""
    from model_runtime.video import SamplingParams

    given = {
        "fps": fps,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "video_total_pixels": total_pixels,
    }
    from model_runtime.video.sampling import checkpoint_video_sampling

    try:
        own = (checkpoint_video_sampling(checkpoint) if checkpoint is not None else None) or {}
    except (ValueError, OSError, AttributeError) as err:
        _fail(f"{checkpoint}/preprocessor_config.json: unreadable ({err})")
    try:
        return SamplingParams.from_kwargs({**own, **{k: v for k, v in given.items() if v is not None}})
    except ValueError as err:
        _fail(str(err))


# Options shared by `ground` and `eval` (Typer wants them spelled out per command).
_ENGINE = typer.Option(
    "native",
    "--engine",
    help="native (in-process, needs --checkpoint), openai, or color (baseline for synth sets).",
)
_CHECKPOINT = typer.Option(None, "--checkpoint", help="Native checkpoint folder.")
_BASE_URL = typer.Option(None, "--base-url", help="OpenAI-compatible server (with --engine openai).")
_MODEL = typer.Option("keye", "--model", help="Model name sent to the openai server.")
_API_KEY = typer.Option(None, "--api-key", help="Bearer token for the openai server.")
_DEVICE = typer.Option("cpu", "--device", help="Torch device of the native engine.")
_STRATEGY = typer.Option("chunked", "--strategy", help="chunked or coarse_to_fine.")
_FPS = typer.Option(None, "--fps", help="Frames per second to sample (default 2).")
_MIN_PIXELS = typer.Option(None, "--min-pixels", help="Smallest frame size in pixels.")
_MAX_PIXELS = typer.Option(None, "--max-pixels", help="Largest frame size in pixels.")
_TOTAL_PIXELS = typer.Option(None, "--total-pixels", help="Pixel budget of one context (video_total_pixels).")
_OVERLAP = typer.Option(4.0, "--overlap", help="Seconds two neighbouring chunks share.")
_TOP_K = typer.Option(5, "--top-k", help="Segments kept per query.")
_MIN_CONF = typer.Option(0.0, "--min-confidence", help="Drop segments below this confidence (0-1).")
_TEMPLATE = typer.Option("default", "--template", help="Prompt template name (default, single, timelens, …).")
_THINK = typer.Option(
    False, "--think/--no-think", help="Let the model reason first (give it a larger --max-new-tokens)."
)
_MAX_NEW = typer.Option(
    64, "--max-new-tokens", min=1, max=32768, help="Answer length budget per query and chunk."
)


def _ground_options(strategy: str, params: Any, overlap: float, top_k: int, min_conf: float, template: str,
                    think: bool, max_new_tokens: int, engine_kind: str) -> dict[str, Any]:  # fmt: skip
    from model_runtime.grounding import STRATEGIES

    if strategy not in STRATEGIES:
        _fail(f"unknown strategy {strategy!r} (expected {' or '.join(STRATEGIES)})")
    if not 0.0 <= min_conf <= 1.0:
        _fail(f"--min-confidence must be within 0 and 1, got {min_conf}")
    if top_k < 1:
        _fail(f"--top-k must be at least 1, got {top_k}")
    return {
        "strategy": strategy, "params": params, "overlap_s": overlap, "top_k": top_k,
        "min_confidence": min_conf, "template": template, "think": think, "max_new_tokens": max_new_tokens,
        "decode_frames": engine_kind != "openai",  # the openai server decodes the window itself
    }  # fmt: skip


@app.command("ground")
def ground(
    video: str = typer.Argument(..., help="Video file or URL."),
    query: list[str] = typer.Option(..., "--query", "-q", help="What to find; repeat for several queries."),
    checkpoint: Path | None = _CHECKPOINT,
    engine: str = _ENGINE,
    base_url: str | None = _BASE_URL,
    model: str = _MODEL,
    api_key: str | None = _API_KEY,
    device: str = _DEVICE,
    strategy: str = _STRATEGY,
    fps: float | None = _FPS,
    min_pixels: int | None = _MIN_PIXELS,
    max_pixels: int | None = _MAX_PIXELS,
    total_pixels: int | None = _TOTAL_PIXELS,
    overlap: float = _OVERLAP,
    top_k: int = _TOP_K,
    min_confidence: float = _MIN_CONF,
    template: str = _TEMPLATE,
    think: bool = _THINK,
    max_new_tokens: int = _MAX_NEW,
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON to this file."),
    stats: bool = typer.Option(False, "--stats", help="Print chunks, engine calls and tokens to stderr."),
) -> None:
    """Find when each query happens in VIDEO; prints segments JSON (top-1 first per query)."""
    from model_runtime.engine.openai_engine import OpenAIEngineError
    from model_runtime.grounding import GroundingStats, PromptError, ground_video, predictions_to_json
    from model_runtime.grounding.annotations import Prediction
    from model_runtime.grounding.ground import finals_by_query
    from model_runtime.video import VideoError

    if "://" not in video and not Path(video).is_file():
        _fail(f"{video}: no such file")
    if out is not None:
        _check_output(out, "--out", protect=[Path(video)] if "://" not in video else [])
    params = _sampling(fps, min_pixels, max_pixels, total_pixels, checkpoint if engine == "native" else None)
    options = _ground_options(
        strategy, params, overlap, top_k, min_confidence, template, think, max_new_tokens, engine
    )
    run_stats = GroundingStats()
    eng = _open_engine(engine, checkpoint, base_url, model, api_key, device)
    try:
        finals = ground_video(video, list(query), eng, stats=run_stats, **options)
    except (VideoError, PromptError, OpenAIEngineError, ValueError) as err:
        _fail(f"{video}: {err}")
    finally:
        eng.close()
    predictions = [
        Prediction(video, q, [(f.start_s, f.end_s, f.confidence) for f in segs])
        for q, segs in zip(query, finals_by_query(finals, len(query)), strict=True)
    ]
    rows = predictions_to_json(predictions)
    for row, segs in zip(rows, finals_by_query(finals, len(query)), strict=True):
        for seg_json, seg in zip(row["segments"], segs, strict=True):
            seg_json.update(rank=seg.rank, chunk_ids=seg.chunk_ids)
    text = json.dumps(rows, indent=2)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)
    if stats:
        typer.echo(json.dumps(run_stats.to_dict()), err=True)


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Folder for the videos and annotations.json."),
    count: int = typer.Option(4, "--count", help="How many videos."),
    seed: int = typer.Option(0, "--seed", help="Seed; the same seed writes the same set."),
    duration: float = typer.Option(60.0, "--duration", help="Length of each video in seconds."),
    events: int = typer.Option(2, "--events", help="Events (queries) per video."),
    fps: float = typer.Option(10.0, "--video-fps", help="Frame rate of the written videos."),
    width: int = typer.Option(160, "--width", help="Frame width."),
    height: int = typer.Option(96, "--height", help="Frame height."),
    distractors: int = typer.Option(
        2, "--distractors", help="Unrelated shapes per video (no query asks for them)."
    ),
    min_event: float | None = typer.Option(
        None, "--min-event", help="Shortest event in seconds (default 5%% of the video)."
    ),
) -> None:
    """Write synthetic videos with known events and their annotation file (TimeLens-Bench JSON)."""
    from model_runtime.grounding.synth import write_synthetic_set
    from model_runtime.video import VideoError

    try:
        path = write_synthetic_set(
            out, count=count, seed=seed, duration_s=duration, events_per_video=events, fps=fps, width=width,
            height=height, distractors=distractors, min_event_s=min_event,
        )  # fmt: skip
    except (ValueError, VideoError, OSError) as err:
        _fail(str(err))
    typer.echo(json.dumps({"videos": count, "queries": count * events, "annotations": str(path)}))


@app.command("eval")
def evaluate(
    annotations: Path = typer.Option(..., "--annotations", help="Annotation file (format detected)."),
    fmt: str = typer.Option(
        "auto",
        "--format",
        help="auto, timelens-bench, charades-sta, activitynet, qvhighlights or timelens-results.",
    ),  # fmt: skip
    predictions: Path | None = typer.Option(None, "--predictions", help="Predictions JSON to score."),
    videos: Path | None = typer.Option(None, "--videos", help="Folder of the videos (to run a model)."),
    checkpoint: Path | None = _CHECKPOINT,
    engine: str = _ENGINE,
    base_url: str | None = _BASE_URL,
    model: str = _MODEL,
    api_key: str | None = _API_KEY,
    device: str = _DEVICE,
    strategy: str = _STRATEGY,
    fps: float | None = _FPS,
    min_pixels: int | None = _MIN_PIXELS,
    max_pixels: int | None = _MAX_PIXELS,
    total_pixels: int | None = _TOTAL_PIXELS,
    overlap: float = _OVERLAP,
    template: str = _TEMPLATE,
    think: bool = _THINK,
    max_new_tokens: int = _MAX_NEW,
    details: bool = typer.Option(False, "--details", help="Add one row per query."),
    timelens: bool = typer.Option(
        False, "--timelens", help="Official TimeLens scoring (first span, rounded to --unit, ×100)."
    ),  # fmt: skip
    unit: float = typer.Option(1.0, "--unit", help="Rounding unit of --timelens, seconds."),
    save_predictions: Path | None = typer.Option(
        None, "--save-predictions", help="Write a model run's predictions."
    ),
) -> None:
    """Score predictions against annotations; prints mIoU and R1@{0.3,0.5,0.7} as JSON."""
    from model_runtime.grounding import (
        AnnotationError,
        load_annotations,
        predictions_to_json,
        read_predictions,
    )
    from model_runtime.grounding.evaluate import score_predictions

    if not (math.isfinite(unit) and unit > 0):
        _fail(f"--unit must be a positive number, got {unit}")
    run_model = checkpoint is not None or base_url is not None or engine != "native"
    if save_predictions is not None:
        if not run_model:
            _fail("--save-predictions needs a model run (--checkpoint / --engine openai)")
        _check_output(save_predictions, "--save-predictions", protect=[annotations, predictions])
    if predictions is not None and run_model:
        _fail("pass either --predictions or a model (--checkpoint / --engine openai), not both")
    try:
        samples, embedded = load_annotations(annotations, fmt)
        if predictions is not None:
            preds = read_predictions(predictions)
        elif run_model:
            preds = _run_model(samples, videos, engine, checkpoint, base_url, model, api_key, device, strategy,
                               fps, min_pixels, max_pixels, total_pixels, overlap, template, think, max_new_tokens)  # fmt: skip
            if save_predictions is not None:
                save_predictions.write_text(
                    json.dumps(predictions_to_json(preds), indent=2) + "\n", encoding="utf-8"
                )
        elif embedded:
            preds = embedded
        else:
            _fail(
                "nothing to score: pass --predictions FILE, or --checkpoint DIR / --engine openai with --videos"
            )
    except AnnotationError as err:
        _fail(str(err))
    report = score_predictions(samples, preds, timelens=timelens, unit=unit)
    out = report.to_dict(details=details)
    out["mode"] = "timelens" if timelens else "timemark"
    typer.echo(json.dumps(out, indent=2))


def _run_model(samples: list[Any], videos: Path | None, engine: str, checkpoint: Path | None, base_url: str | None,
               model: str, api_key: str | None, device: str, strategy: str, fps: float | None,
               min_pixels: int | None, max_pixels: int | None, total_pixels: int | None, overlap: float,
               template: str, think: bool, max_new_tokens: int) -> list[Any]:  # fmt: skip
    from model_runtime.engine.openai_engine import OpenAIEngineError
    from model_runtime.grounding import PromptError
    from model_runtime.grounding.predict import find_video, predict_samples
    from model_runtime.video import VideoError

    if videos is None or not videos.is_dir():
        _fail("running a model needs --videos DIR (the folder holding the annotation's videos)")
    for video in {s.video for s in samples}:
        find_video(videos, video)  # raises AnnotationError (one line) before the model is loaded
    params = _sampling(fps, min_pixels, max_pixels, total_pixels, checkpoint if engine == "native" else None)
    options = _ground_options(strategy, params, overlap, 5, 0.0, template, think, max_new_tokens, engine)
    eng = _open_engine(engine, checkpoint, base_url, model, api_key, device)

    def progress(video: str, n: int) -> None:
        print(f"{video}: {n} queries", file=sys.stderr)

    try:
        return predict_samples(samples, videos, eng, on_video=progress, **options)
    except (VideoError, PromptError, OpenAIEngineError, ValueError) as err:
        _fail(str(err))
    finally:
        eng.close()
