"""Averaging checkpoints (the shipped small model is the mean of two training lineages)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model_runtime.checkpoint import init_checkpoint, load_model
from model_runtime.training.average import average_checkpoints


def test_the_mean_of_two_checkpoints_loads_as_a_model(tmp_path: Path) -> None:
    a, b = init_checkpoint(tmp_path / "a", seed=0), init_checkpoint(tmp_path / "b", seed=1)
    out = average_checkpoints([a, b], tmp_path / "mean")
    wa, wb, mean = (load_file(p / "model.safetensors") for p in (a, b, out))
    assert mean.keys() == wa.keys()
    differing = [n for n in wa if wa[n].is_floating_point() and not torch.equal(wa[n], wb[n])]
    assert differing  # two seeds: the average is not a copy
    for name in differing:
        torch.testing.assert_close(mean[name], (wa[name] + wb[name]) / 2)
    assert (out / "config.json").read_text() == (a / "config.json").read_text()
    assert (out / "tokenizer.json").is_file() and (out / "preprocessor_config.json").is_file()
    model = load_model(out, device="cpu", dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_checkpoints_of_different_configs_are_refused(tmp_path: Path) -> None:
    a, b = init_checkpoint(tmp_path / "a", seed=0), init_checkpoint(tmp_path / "b", seed=1)
    config = json.loads((b / "config.json").read_text())
    config["rope_theta"] = 1.0
    (b / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="different config.json"):
        average_checkpoints([a, b], tmp_path / "mean")
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([a], tmp_path / "mean")
    assert not (tmp_path / "mean").exists()  # nothing half-written
    run = subprocess.run([sys.executable, "-m", "model_runtime.training.average", str(a), str(tmp_path / "none"),
                          "--out", str(tmp_path / "mean")], capture_output=True, text=True)  # fmt: skip
    assert (
        run.returncode != 0
        and run.stderr.strip().startswith("average:")
        and len(run.stderr.splitlines()) == 1
    )
