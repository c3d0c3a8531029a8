"""The one-command recipe: its stages are the shipped runs' flags, and it chains them (each from the last)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_runtime.checkpoint import load_state
from model_runtime.tokenizer import build_tiny_tokenizer
from model_runtime.training.recipe import STAGES, main, stage_args
from model_runtime.training.train import TIME_TOKENS_S, small_config
from model_runtime.vlm import KeyeVL
from workers.embedded import TRAINED_CHECKPOINT

# Where the shipped runs' machine differed from a recipe run's (or what only names the run).
MACHINE = {"out", "init", "device", "workers", "draw_workers", "trainer_threads", "profile"}


def test_the_stages_are_the_shipped_checkpoints_runs() -> None:
    logs = ["training_log_run1_from_scratch.json", "training_log_run2.json", "training_log.json"]
    assert [name for name, _ in STAGES] == ["run1_from_scratch", "run2", "final"]
    for (name, flags), log in zip(STAGES, logs, strict=True):
        shipped = json.loads((TRAINED_CHECKPOINT / log).read_text())["summary"]["args"]
        ours = vars(stage_args(Path("x"), name, flags, None, []))
        differ = {k: (ours[k], shipped[k]) for k in ours if k not in MACHINE and ours[k] != shipped.get(k)}
        assert not differ, f"{name}: {differ}"


def test_the_recipe_chains_its_stages_on_the_cpu(tmp_path: Path) -> None:
    tiny = (
        "--device cpu --max-steps 2 --videos 2 --data-seconds 60 --min-seconds 6 --max-seconds 8 --workers 0 "
        "--draw-workers 0 --batch-tokens 2048 --vision-steps 1 --vision-batch 4 --log-every 1"
    )
    main(["--out", str(tmp_path), "--", *tiny.split()])
    logs = [json.loads((tmp_path / name / "training_log.json").read_text()) for name, _ in STAGES]
    assert [log["summary"]["steps"] for log in logs] == [2, 2, 2]
    inits = [log["summary"]["args"]["init"] for log in logs]
    assert inits == [None, str(tmp_path / "run1_from_scratch"), str(tmp_path / "run2")]
    assert [log["summary"]["args"]["lr"] for log in logs] == [2e-3, 1e-3, 5e-4]
    model = KeyeVL(small_config(build_tiny_tokenizer(time_tokens_s=TIME_TOKENS_S)))
    load_state(model, tmp_path / "final")  # the result is a whole checkpoint in the official layout


def test_flags_that_chain_the_stages_are_refused_after_the_separator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for flag in ("--out", "--init=x"):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path), "--", flag, "elsewhere"])
        assert "would break the chain" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any stage ran
