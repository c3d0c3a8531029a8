"""Average checkpoints of one model (a "model soup", Wortsman et al. 2022).

Runs trained from the same weights with different recipes or seeds tend to end in one basin of the loss,
where the mean of their weights can answer better than either; that is how the shipped keye-synth-small
was made from session 8's two lineages (chosen on a validation seed, scored on the held-out one). Only
identical configs average: anything else would mix weights that mean different things.

    python -m model_runtime.training.average RUN_A RUN_B [...] --out DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"


def average_checkpoints(sources: list[str | Path], out: str | Path) -> Path:
    """Writes the element-wise mean of `sources`' weights (float tensors; others must be equal) to `out`,
    with the first source's config, tokenizer and preprocessor files."""
    paths = [Path(s) for s in sources]
    if len(paths) < 2:
        raise ValueError("averaging needs at least two checkpoints")
    configs = [json.loads((p / "config.json").read_text(encoding="utf-8")) for p in paths]
    if any(c != configs[0] for c in configs[1:]):
        raise ValueError("checkpoints with different config.json cannot be averaged")
    states = [load_file(p / WEIGHTS) for p in paths]
    for p, state in zip(paths[1:], states[1:], strict=True):
        if state.keys() != states[0].keys():
            raise ValueError(f"{p} holds other tensor names than {paths[0]}")
        for name, tensor in state.items():
            first = states[0][name]
            if tensor.shape != first.shape or tensor.dtype != first.dtype:
                raise ValueError(f"{name}: {p} has {tuple(tensor.shape)} {tensor.dtype}, {paths[0]} "
                                 f"{tuple(first.shape)} {first.dtype}")  # fmt: skip
            if not tensor.is_floating_point() and not torch.equal(tensor, first):
                raise ValueError(f"{name}: integer tensors differ between {paths[0]} and {p}")
    mean = {
        name: (sum(s[name].double() for s in states) / len(states)).to(first.dtype)
        if first.is_floating_point()
        else first
        for name, first in states[0].items()
    }
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for item in paths[0].iterdir():
        if item.is_file() and item.suffix == ".json" and not item.name.startswith("training_log"):
            shutil.copy2(item, target / item.name)
    save_file(mean, target / WEIGHTS, metadata={"format": "pt"})
    return target


def main() -> None:
    p = argparse.ArgumentParser(description="Average the weights of checkpoints of one config.")
    p.add_argument("sources", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    try:
        print(average_checkpoints(args.sources, args.out))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"average: {e}") from None


if __name__ == "__main__":
    main()
