"""Score a checkpoint on held-out synthetic videos through the service's grounding path.

The same steps as `timemark synth` + `timemark eval --checkpoint`: a `write_synthetic_set` with a seed
never used in training (training draws video seeds from 1,000,000 upward), `predict_samples` (one
`ground_video` per video, the function the workers call) and `score_predictions`. Used right after
training on the GPU (with the attention backends to compare) and by the model card's numbers.

    python -m model_runtime.training.heldout --checkpoint DIR --count 200 --seed 7 [--attn-impl reference]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from model_runtime.engine.native import NativeEngine
from model_runtime.grounding.annotations import load_annotations
from model_runtime.grounding.evaluate import score_predictions
from model_runtime.grounding.predict import predict_samples
from model_runtime.grounding.synth import write_synthetic_set
from model_runtime.video import SamplingParams

HELDOUT_SEED = 7


def checkpoint_sampling(checkpoint: str | Path) -> SamplingParams:
    """The video sampling a checkpoint was trained with (its preprocessor config), else the server's."""
    path = Path(checkpoint) / "preprocessor_config.json"
    pre = json.loads(path.read_text()) if path.is_file() else {}
    return SamplingParams.from_kwargs(pre.get("video_sampling", {}))


def evaluate(
    checkpoint: str | Path,
    *,
    count: int = 200,
    seed: int = HELDOUT_SEED,
    device: str = "cpu",
    attn_impls: tuple[str, ...] = ("reference",),
    videos_dir: str | Path | None = None,
    quantizes: tuple[str | None, ...] = (None,),
) -> dict[str, Any]:
    """Scores per variant (attention backend × expert weights), plus how many greedy top-1 answers differ
    from the first variant's (issue 7: triton vs reference; issue 10: FP8 experts vs full precision)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(videos_dir or tmp)
        annotations = folder / "annotations.json"
        if not annotations.is_file():
            write_synthetic_set(folder, count=count, seed=seed)
        samples, _ = load_annotations(annotations)
        params = checkpoint_sampling(checkpoint)
        results: dict[str, Any] = {"count": len(samples), "seed": seed}
        first: list[Any] | None = None
        for quantize in quantizes:
            for impl in attn_impls:
                engine = NativeEngine(checkpoint, device=device, attn_impl=impl, quantize=quantize)
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
                results[impl if quantize is None else f"{impl}+{quantize}"] = entry
                engine.close()
        return results


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
    p.add_argument("--quantize", action="append", choices=["none", "fp8"],
                   help="expert weights per variant (repeat: none then fp8 compares FP8 with full precision)")  # fmt: skip
    args = p.parse_args()
    impls = tuple(args.attn_impls or ["reference"])
    print(json.dumps(evaluate(args.checkpoint, count=args.count, seed=args.seed, device=args.device,
                              attn_impls=impls, videos_dir=args.videos_dir,
                              quantizes=tuple(None if q == "none" else q for q in args.quantize or ["none"]))),
          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
