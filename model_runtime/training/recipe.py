"""The shipped `keye-synth-small` line as one command: three `train` runs on one GPU, each from the last.

    python -m model_runtime.training.recipe --out DIR              # ~18 min of H200 steps + ~2.3 min of videos
    python -m model_runtime.training.recipe --out DIR -- --device cpu --max-steps 2 ...   # flags for every run

The stages are session 10's runs b1 → c3 → e4 (`benchmarks/results/training.md`) with the flags that shape
learning; the final checkpoint is `DIR/final`. Runs 1 and 2 made their videos from seed 1,000,000 (the default
then), so they pin `--seed-offset 1000000`; run 3's new videos are what lifted the line over its bar. The shipped
runs shared a 32-core host two at a time (14 video makers, 5 then 9 example drawers each); here those follow
the machine (`train`'s defaults) unless passed after `--`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model_runtime.training.train import parse_args, train

SHARED = (
    "--bf16 --turns 4 --near-miss-p 0.5 --present-p 0.3 --match-weight 3 "
    "--batch-examples 128 --batch-tokens 98304 --hang-report-s 120"
)
WHOLE_WINDOWS_SPARSE = "--caption-p 0.1 --crop-start-s 8 --crop-ramp 0.01 --dense-fraction 0"
STAGES: list[tuple[str, str]] = [
    (
        "run1_from_scratch",  # short crops and dense attention first (the curriculum), then whole windows
        "--lr 2e-3 --vision-steps 600 --vision-batch 512 --caption-p 0.2 --crop-start-s 3 --crop-ramp 0.3 "
        "--dense-fraction 0.3 --minutes 7.0 --data-seconds 45 --seed 22 --seed-offset 1000000",
    ),
    (
        "run2",
        f"--lr 1e-3 {WHOLE_WINDOWS_SPARSE} --minutes 7.5 --data-seconds 45 --seed 23 --seed-offset 1000000",
    ),
    ("final", f"--lr 5e-4 {WHOLE_WINDOWS_SPARSE} --minutes 3.6 --data-seconds 40 --seed 25"),
]


def stage_args(
    out: Path, name: str, flags: str, previous: Path | None, extra: list[str]
) -> argparse.Namespace:
    """One stage's `train` arguments: the shared flags, the stage's, the previous stage as `--init`, then
    `extra` (last, so they win)."""
    init = ["--init", str(previous)] if previous is not None else []
    return parse_args(["--out", str(out / name), *SHARED.split(), *flags.split(), *init, *extra])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="one folder per stage is made here; the result is OUT/final")
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    chained = {"--out", "--init"} & {flag.split("=")[0] for flag in extra}
    if chained:
        p.error(
            f"{', '.join(sorted(chained))} after -- would break the chain of stages; the recipe sets them"
        )
    out = Path(args.out)
    previous: Path | None = None
    for name, flags in STAGES:
        summary = train(stage_args(out, name, flags, previous, extra))
        print(json.dumps({"stage": name, "steps": summary["steps"], "train_seconds": summary["train_seconds"]}),
              flush=True)  # fmt: skip
        previous = out / name


if __name__ == "__main__":
    main()
