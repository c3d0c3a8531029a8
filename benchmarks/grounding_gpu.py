"""What an hour of video costs on one GPU with the full-size model: `ground_video` timed per strategy.

The full-size Keye-VL-2.0 architecture (`KeyeConfig.full()`, 31.1 B parameters) is built with random bf16
weights directly on the GPU (`runtime_gpu.build_model`; no 62 GB of checkpoint files) and wrapped in
`NativeEngine.from_model`, with the tiny checkpoint's tokenizer (the prompt's token ids differ from the
real vocabulary's, its lengths barely do). A synthetic hour (320×180 source, 2 fps, three events) is
grounded with the service's code path and the Keye server's sampling defaults (`SamplingParams()`: 2 fps,
64–256 tokens per frame, 184,320-token contexts), once per strategy: decode, vision tower, chunked
prefill into the KV cache, greedy answers of at most `--max-new-tokens`, parsing and merging. Random
weights answer noise, so this is time only: what the GPU spends reading an hour. A short clip is grounded
first so Triton's compilation is not timed.

    python -m benchmarks.grounding_gpu --out benchmarks/results/grounding_gpu.md
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.runtime_gpu import build_model
from model_runtime.checkpoint import init_checkpoint
from model_runtime.engine.native import NativeEngine
from model_runtime.grounding import GroundingStats, ground_video
from model_runtime.processor import KeyeProcessor
from model_runtime.tokenizer import KeyeTokenizer
from model_runtime.video import SamplingParams, make_event, make_synthetic_video

EVENTS = [
    ("circle", "red", 600.0, 660.0),
    ("square", "blue", 1800.0, 1830.0),
    ("star", "yellow", 3000.0, 3100.0),
]
QUERIES = ["When does the red circle appear?", "When does the blue square appear?"]


def write_video(path: Path, seconds: float, width: int, height: int) -> None:
    make_synthetic_video(
        path, duration_s=seconds, fps=2.0, width=width, height=height, seed=0, n_distractors=0, gop=60,
        bframes=0, barcode=False, events=[make_event(*e) for e in EVENTS if e[3] <= seconds],
    )  # fmt: skip


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, float]]:
    device = torch.device(args.device)
    setup: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        hour, warm = work / "hour.mp4", work / "warm.mp4"
        write_video(hour, args.seconds, args.width, args.height)
        write_video(warm, 30.0, args.width, args.height)
        setup["write video s"] = time.perf_counter() - started
        started = time.perf_counter()
        model = build_model(device, args.size)
        model.model.set_impl(attn_impl=args.attn_impl, moe_impl=args.moe_impl)
        tokenizer = KeyeTokenizer.from_pretrained(init_checkpoint(work / "tiny", size="tiny", seed=0))
        engine = NativeEngine.from_model(
            model, KeyeProcessor(tokenizer, model.config, {}), cuda_graphs=not args.no_cuda_graphs
        )
        setup["build model s"] = time.perf_counter() - started
        started = time.perf_counter()
        ground_video(str(warm), QUERIES, engine, params=SamplingParams(), max_new_tokens=args.max_new_tokens)
        setup["warm-up (compile) s"] = time.perf_counter() - started
        for strategy in args.strategies:
            stats = GroundingStats()
            torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
            started = time.perf_counter()
            finals = ground_video(
                str(hour), QUERIES, engine, strategy=strategy, params=SamplingParams(),
                max_new_tokens=args.max_new_tokens, stats=stats,
            )  # fmt: skip
            wall = time.perf_counter() - started
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
            rows.append({"strategy": strategy, "wall_s": wall, "peak_gib": peak, "segments": len(finals),
                         **stats.to_dict()})  # fmt: skip
            print(rows[-1], flush=True)
            write_report(args, rows, setup)  # after each strategy: a run cut short keeps what it measured
        engine.close()
    return rows, setup


def gpu_line() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError):
        return "no nvidia-smi"


def write_report(args: argparse.Namespace, rows: list[dict[str, Any]], setup: dict[str, float]) -> None:
    if not args.out:
        return
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# An hour of video on one H200 with the full-size model (time only)",
        "",
        f"- **Device**: `{gpu_line()}`, torch {torch.__version__}; {now}.",
        f"- **Command**: `python -m benchmarks.grounding_gpu --seconds {args.seconds:g} --attn-impl {args.attn_impl} "
        f"--moe-impl {args.moe_impl} --max-new-tokens {args.max_new_tokens}"
        f"{' --no-cuda-graphs' if args.no_cuda_graphs else ''}`.",
        "- **Model**: `KeyeConfig.full()` (31.1 B parameters) with random bf16 weights built on the GPU, in",
        "  `NativeEngine.from_model` (prefill in 4,096-token chunks into one KV cache per chunk, shared by the",
        f"  queries). `attn_impl={args.attn_impl}`, `moe_impl={args.moe_impl}`. Random weights: answers are noise,",
        "  so `coarse_to_fine` refines whatever the noise parses to (the row says how many windows); this is the",
        "  time the GPU spends reading the video, not a quality number.",
        f"- **Video**: synthetic, {args.seconds / 60:.0f} min, {args.width}×{args.height} source at 2 fps, "
        "H.264; sampled at the",
        "  server defaults (`SamplingParams()`: 2 fps, 64–256 tokens per frame, 184,320-token contexts), which",
        "  give this source the same per-frame token count (the 64-token floor) as a 720p hour.",
        f"- **Queries**: {len(QUERIES)} per video. Everything inside `ground_video` is timed: decoding and",
        "  resizing frames on the CPU, the vision tower, prefill, decode, parsing and merging.",
        "",
        "| strategy | wall s | contexts | refine windows | frames | visual tokens | engine calls | requests | generated tokens | decode s | engine s | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['wall_s']:.1f} | {r['chunks']} | {r['refine_windows']} | {r['frames']:,} | "
            f"{r['visual_tokens']:,} | {r['engine_calls']} | {r['requests']} | {r['generated_tokens']} | "
            f"{r['decode_s']:.1f} | {r['engine_s']:.1f} | {r['peak_gib']:.1f} |"
        )
    lines += [
        "",
        "Setup outside the timed calls: " + ", ".join(f"{k} {v:.1f}" for k, v in setup.items()) + ".",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--size", default="full", help="full, or tiny for a CPU smoke run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--attn-impl", default="triton")
    parser.add_argument("--moe-impl", default="triton")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly (for comparison)")
    parser.add_argument("--strategies", nargs="+", default=["chunked", "coarse_to_fine"])
    parser.add_argument("--out", default=None)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
