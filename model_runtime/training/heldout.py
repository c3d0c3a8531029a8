"""Score a checkpoint on held-out synthetic videos through the service's grounding path.

The same steps as `timemark synth` + `timemark eval --checkpoint`: a `write_synthetic_set` with a seed
never used in training (training draws video seeds from 1,000,000 upward), `predict_samples` (one
`ground_video` per video, the function the workers call) and `score_predictions`. Used right after
training on the GPU (with the attention backends to compare) and by the model card's numbers.

    python -m model_runtime.training.heldout --checkpoint DIR --count 200 --seed 7 [--attn-impl reference]

Each variant also answers the set's `absent_queries` (one per video, a shape it never shows, usually sharing
an event's colour or shape): `absent.answered` is how often such a query got a segment (right: never) and
`absent.on_an_event` how often that segment sat on one of the video's events — a model answering whatever is
on screen rather than what was asked scores well on the grounding queries alone, and is caught here.
`absent.by_near_miss` splits them by what the absent shape shares with the video's events (colour, shape or
both), which says whether a model that answers them confuses colours or shapes.

`window_counts` (`--per-window N`) is the diagnosis behind the model card's per-window table: for each
(window, grounding query) of the first N videos, did the model give a span or `none`, where the asked shape
is or is not on the window's frames; and the top-1 mIoU beside the best of each query's ranked candidates
(a right span found but outranked shows up as the gap between the two).

`crop_exactness` (`--crops N`) is the finer gauge for a model still learning: teacher-forced, how many of a
fixed set of short-crop questions from videos never trained on it answers exactly, token for token.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_runtime.checkpoint import load_model
from model_runtime.engine.base import Engine
from model_runtime.engine.native import NativeEngine
from model_runtime.grounding.annotations import GroundingSample, Prediction, load_annotations
from model_runtime.grounding.evaluate import score_predictions
from model_runtime.grounding.ground import finals_by_query, ground_video
from model_runtime.grounding.merge import ChunkSegment
from model_runtime.grounding.metrics import best_iou
from model_runtime.grounding.predict import find_video, predict_samples
from model_runtime.grounding.synth import near_miss_kind, query_label, write_synthetic_set
from model_runtime.processor import KeyeProcessor
from model_runtime.training.data import FrameStore, draw_caption, draw_example, sample_clips
from model_runtime.training.train import answer_accuracy, make_batch, next_token_targets
from model_runtime.video import SamplingParams, plan_chunks, probe_video
from model_runtime.video.sampling import checkpoint_video_sampling

HELDOUT_SEED = 7
CROP_SEED = 500_000  # video seeds of the crop set: below training's (1,000,000 up)


def checkpoint_sampling(checkpoint: str | Path) -> SamplingParams:
    """The video sampling a checkpoint was trained with (its preprocessor config), else the server's."""
    return SamplingParams.from_kwargs(checkpoint_video_sampling(checkpoint) or {})


@contextmanager
def heldout_set(videos_dir: str | Path | None, count: int, seed: int) -> Iterator[Path]:
    """The folder of the held-out set, written there (or in a temporary folder) unless it already is;
    a set's first videos do not depend on its size, so a smaller set is a prefix of a larger one and a
    folder holding at least `count` videos serves (callers score its first `count`)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(videos_dir or tmp)
        annotations = folder / "annotations.json"
        if not annotations.is_file():
            write_synthetic_set(folder, count=count, seed=seed)
        held = len(json.loads(annotations.read_text(encoding="utf-8")))
        if held < count:
            raise ValueError(f"{folder} holds {held} held-out videos, {count} asked: use an empty folder")
        yield folder


def first_videos(samples: list[GroundingSample], count: int) -> list[GroundingSample]:
    """The samples of the first `count` videos (in the set's order)."""
    keep = set(list(dict.fromkeys(s.video for s in samples))[:count])
    return [s for s in samples if s.video in keep]


def evaluate(
    checkpoint: str | Path,
    *,
    count: int = 200,
    seed: int = HELDOUT_SEED,
    device: str = "cpu",
    attn_impls: tuple[str, ...] = ("reference",),
    videos_dir: str | Path | None = None,
    quantizes: tuple[str | None, ...] = (None,),
    dtype: str | None = None,
    on_variant: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Scores per variant (attention backend × expert weights), plus how many greedy top-1 answers differ
    from the first variant's (issue 7: triton vs reference; issue 10: FP8 experts vs full precision).
    `on_variant` gets each variant's scores as soon as they exist: a run cut by a time limit keeps those."""
    with heldout_set(videos_dir, count, seed) as folder:
        annotations = folder / "annotations.json"
        samples, _ = load_annotations(annotations)
        samples = first_videos(samples, count)
        absent = first_videos(absent_samples(annotations), count)
        params = checkpoint_sampling(checkpoint)
        results: dict[str, Any] = {"count": len(samples), "seed": seed}
        first: list[Any] | None = None
        for quantize in quantizes:
            for impl in attn_impls:
                engine = NativeEngine(
                    checkpoint, device=device, dtype=dtype, attn_impl=impl, quantize=quantize
                )
                started = time.perf_counter()
                predictions = predict_samples(samples, folder, engine, params=params)
                report = score_predictions(samples, predictions)
                answers = [p.segments[:1] for p in predictions]
                entry = {**report.scores.to_dict(), "seconds": round(time.perf_counter() - started, 1)}
                if first is not None:
                    entry["top1_differs_from_first"] = sum(
                        1 for a, b in zip(first, answers, strict=True) if _rounded(a) != _rounded(b)
                    )
                first = first if first is not None else answers
                if absent:  # after the scored queries, so their answers are those of earlier runs
                    entry["absent"] = absent_answers(
                        absent, predict_samples(absent, folder, engine, params=params), samples
                    )
                name = impl if quantize is None else f"{impl}+{quantize}"
                results[name] = entry
                engine.close()
                if on_variant is not None:
                    on_variant(name, entry)
        return results


def absent_samples(annotations: Path) -> list[GroundingSample]:
    """The set's `absent_queries` (synth.py): shapes its videos never show; [] for sets without them."""
    data = json.loads(annotations.read_text(encoding="utf-8"))
    return [
        GroundingSample(video, str(query), [], entry.get("duration"))
        for video, entry in data.items()
        for query in entry.get("absent_queries", [])
    ]


def absent_answers(
    absent: list[GroundingSample], predictions: list[Prediction], samples: list[GroundingSample]
) -> dict[str, Any]:
    """How often a query about a shape that never shows got a segment (right: never), and how often its
    top-1 sits on one of the video's events (IoU >= 0.5): the model answered what is on screen, not what
    was asked; and per kind of near miss (`near_miss_kind`: sharing an event's colour, its shape, or both)."""
    events: dict[str, list[tuple[float, float]]] = {}
    shown: dict[str, list[str]] = {}
    for s in samples:
        events.setdefault(s.video, []).extend(s.spans)
        shown.setdefault(s.video, []).append(query_label(s.query))
    answered = [p for p in predictions if p.segments]
    on_event = [
        p for p in answered if best_iou((p.segments[0][0], p.segments[0][1]), events.get(p.video, [])) >= 0.5
    ]
    n = max(1, len(absent))
    by_kind: dict[str, dict[str, int]] = {}
    for p in predictions:  # which near misses fool the model: those sharing a colour, or a shape?
        kind = by_kind.setdefault(
            near_miss_kind(query_label(p.query), shown.get(p.video, [])),
            dict.fromkeys(("queries", "answered"), 0),
        )
        kind["queries"] += 1
        kind["answered"] += bool(p.segments)
    return {
        "queries": len(absent),
        "answered": round(len(answered) / n, 3),
        "on_an_event": round(len(on_event) / n, 3),
        "by_near_miss": dict(sorted(by_kind.items())),
    }


def window_counts(
    samples: list[GroundingSample], folder: Path, engine: Engine, params: SamplingParams, videos: int
) -> dict[str, Any]:
    """TP / FN / FP / TN over (window, query) pairs of the first `videos` videos (P: the model gave a
    span; T: rightly, i.e. a span exactly where a frame of the window falls inside the asked event), with
    the top-1 and best-candidate mIoU of those queries, through `ground_video` like the workers."""
    order = list(dict.fromkeys(s.video for s in first_videos(samples, videos)))
    counts = dict.fromkeys(("TP", "FN", "FP", "TN"), 0)
    top1: list[float] = []
    best: list[float] = []
    for video in order:
        asked = [s for s in samples if s.video == video]
        queries = list(dict.fromkeys(s.query for s in asked))
        path = str(find_video(folder, video))
        raw: list[ChunkSegment] = []
        finals = ground_video(path, queries, engine, params=params, raw=raw)
        chunks = plan_chunks(probe_video(path), params).chunks
        for qi, (query, ranked) in enumerate(
            zip(queries, finals_by_query(finals, len(queries)), strict=True)
        ):
            spans = [span for s in asked if s.query == query for span in s.spans]
            for chunk in chunks:
                shown = any(a <= t <= b for t in chunk.timestamps for a, b in spans)
                said = any(s.chunk_index == chunk.index and s.query_index == qi for s in raw)
                counts[("T" if shown == said else "F") + ("P" if said else "N")] += 1
            ious = [best_iou((f.start_s, f.end_s), spans) for f in ranked]
            top1.append(ious[0] if ious else 0.0)
            best.append(max(ious, default=0.0))
    n = max(1, len(top1))
    return {"videos": len(order), "queries": len(top1), **counts,
            "top1_mIoU": round(sum(top1) / n, 3), "top1_R1@0.5": round(sum(i >= 0.5 for i in top1) / n, 3),
            "best_candidate_mIoU": round(sum(best) / n, 3)}  # fmt: skip


@torch.no_grad()
def crop_exactness(
    checkpoint: str | Path,
    *,
    examples: int = 240,
    videos: int = 50,
    max_crop_s: float = 8.0,
    device: str = "cpu",
    batch: int = 16,
) -> dict[str, Any]:
    """Share of answers predicted entirely right (greedy, teacher-forced) on a fixed set, per kind:
    `examples` grounding questions over crops of ≤ `max_crop_s` (a span to find, or `none`) and as many
    caption questions (1–4 frames), drawn from `videos` synthetic videos with seeds `CROP_SEED`…; the
    same set for every checkpoint trained with the same sampling."""
    processor = KeyeProcessor.from_pretrained(checkpoint)
    model = load_model(checkpoint, device=device, dtype=torch.float32)
    params = checkpoint_sampling(checkpoint)
    clips = [
        c
        for seed in range(CROP_SEED, CROP_SEED + videos)
        for c in sample_clips(seed, min_s=20, max_s=40, params=params)
    ]
    frames = FrameStore(clips, torch.device(device))
    rng = np.random.default_rng(CROP_SEED)
    items = [draw_example(processor, clips, rng, max_crop_s=max_crop_s) for _ in range(examples)]
    items += [draw_caption(processor, clips, rng) for _ in range(examples)]
    right: dict[str, list[float]] = {}
    for first in range(0, len(items), batch):
        part = items[first : first + batch]
        inputs = make_batch(part, frames, processor, torch.device(device))
        logits = model(inputs["input_ids"], inputs["positions"], inputs["segments"],
                       inputs["pixel_values"], inputs["grids"])  # fmt: skip
        targets = next_token_targets(inputs["labels"])
        kinds = [e.kind for e in part]
        _, exact = answer_accuracy(logits, targets, [e.n_tokens for e in part], kinds)
        for kind, share in exact.items():
            right.setdefault(kind, []).extend([share] * kinds.count(kind))
    report: dict[str, Any] = {"videos": videos, "max_crop_s": max_crop_s}
    for kind, shares in sorted(right.items()):
        report[f"{kind}_exact"] = round(sum(shares) / len(shares), 3)
        report[f"{kind}_count"] = len(shares)
    return report


def _rounded(top1: list[Any]) -> list[tuple[float, float]]:
    return [(round(s, 1), round(e, 1)) for s, e, *_ in top1]


def main() -> None:
    p = argparse.ArgumentParser(description="Score a checkpoint on held-out synthetic videos.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--seed", type=int, default=HELDOUT_SEED)
    p.add_argument("--device", default="cpu")
    p.add_argument("--attn-impl", action="append", dest="attn_impls")
    p.add_argument("--videos-dir")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: fp32 on the CPU, bf16 on a GPU")
    p.add_argument("--crops", type=int, default=0, help="score N fixed short-crop questions instead")
    p.add_argument("--per-window", type=int, default=0, help="count per-window answers of N videos instead")
    p.add_argument("--quantize", action="append", choices=["none", "fp8"],
                   help="expert weights per variant (repeat: none then fp8 compares FP8 with full precision)")  # fmt: skip
    args = p.parse_args()
    if args.crops:
        print(
            json.dumps(crop_exactness(args.checkpoint, examples=args.crops, device=args.device)), flush=True
        )
        return
    impls = tuple(args.attn_impls or ["reference"])
    if args.per_window:
        with heldout_set(args.videos_dir, args.per_window, args.seed) as folder:
            samples, _ = load_annotations(folder / "annotations.json")
            engine = NativeEngine(args.checkpoint, device=args.device, dtype=args.dtype, attn_impl=impls[0])
            report = window_counts(
                samples, folder, engine, checkpoint_sampling(args.checkpoint), args.per_window
            )
        print(json.dumps({"checkpoint": args.checkpoint, "attn_impl": impls[0], **report}), flush=True)
        return

    def progress(name: str, entry: dict[str, Any]) -> None:
        print(json.dumps({"variant": name, **entry}), file=sys.stderr, flush=True)

    print(json.dumps(evaluate(args.checkpoint, count=args.count, seed=args.seed, device=args.device,
                              attn_impls=impls, videos_dir=args.videos_dir, dtype=args.dtype, on_variant=progress,
                              quantizes=tuple(None if q == "none" else q for q in args.quantize or ["none"]))),
          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
