"""`timemark frames`: plan JSON, decoded frames, JPEGs, windows, and one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from model_runtime.video import SyntheticTruth, read_barcode
from timemark.cli import app, grounding, model, serve_model, service, video  # noqa: F401 - as main() does


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["frames", *args])
    return result.exit_code, result.stdout, result.stderr


def test_plan_and_jpegs(synthetic: Callable[[str], SyntheticTruth], tmp_path: Path) -> None:
    truth = synthetic("basic")
    code, stdout, _ = run(truth.path, "--fps", "1", "--out", str(tmp_path / "frames"))
    assert code == 0
    doc = json.loads(stdout)
    assert doc["kind"] == "chunked" and len(doc["chunks"]) == 1
    chunk = doc["chunks"][0]
    # 8 s at 1 fps fits one context: the server's own frames, round(linspace(0, 79, 8)) / 10 fps.
    assert chunk["timestamps"] == [i / 10 for i in (0, 11, 23, 34, 45, 56, 68, 79)]
    assert chunk["tokens_per_frame"] == (chunk["height"] // 28) * (chunk["width"] // 28)
    decoded = doc["decoded"][0]
    assert decoded["frames_shape"] == [8, chunk["height"], chunk["width"], 3]
    files = decoded["files"]
    assert len(files) == 8
    first = np.asarray(Image.open(files[3]))
    assert first.shape == (chunk["height"], chunk["width"], 3)
    # The fourth JPEG shows the frame whose time the command reports (frame 34, or a neighbour when
    # B-frames were skipped), and that time is within the skew bound of the plan.
    assert read_barcode(first) == round(decoded["timestamps"][3] * 10)
    assert abs(decoded["timestamps"][3] - 3.4) <= 0.25 * (7.9 / 7) + 1e-6


def test_window_and_plan_only(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("long_gop")
    code, stdout, _ = run(truth.path, "--start", "10", "--end", "12", "--plan-only")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["kind"] == "window" and "decoded" not in doc
    assert doc["chunks"][0]["timestamps"] == [10.0, 10.5, 11.0, 11.5]


def test_chunked_plan_decodes_every_chunk(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("short_gop")
    code, stdout, _ = run(truth.path, "--total-pixels", str(784 * 64 * 30), "--overlap", "2")
    assert code == 0
    doc = json.loads(stdout)
    assert len(doc["decoded"]) == len(doc["chunks"]) > 1
    for chunk, decoded in zip(doc["chunks"], doc["decoded"], strict=True):
        assert len(decoded["timestamps"]) == len(chunk["timestamps"])
        assert decoded["stats"]["seeks"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fps", "0"], "fps"),
        (["--skip", "sometimes"], "--skip"),
        (["--start", "-3"], "negative"),
        (["--coarse", "--start", "1"], "--coarse"),
    ],
)
def test_bad_options(synthetic: Callable[[str], SyntheticTruth], args: list[str], message: str) -> None:
    code, _, stderr = run(synthetic("basic").path, *args)
    assert code == 2 and message in stderr and stderr.count("\n") == 1


def test_bad_file(bad_files: dict[str, Path]) -> None:
    code, stdout, stderr = run(str(bad_files["audio_only"]))
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: voice.mp4 has no video stream")
