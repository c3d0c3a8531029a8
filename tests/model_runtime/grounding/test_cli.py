"""`timemark synth`, `timemark ground` and `timemark eval` end to end, and their one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import timemark.cli.grounding  # noqa: F401  (registers the commands)
from model_runtime.checkpoint import init_checkpoint
from timemark.cli import app

# Small frames and a low fps keep the tiny model's prompts short.
SMALL = ["--fps", "0.5", "--min-pixels", "3136", "--max-pixels", "3136", "--max-new-tokens", "8"]


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    result = CliRunner().invoke(app, ["synth", "--out", str(out), "--count", "2", "--seed", "7", "--duration", "20",
                                      "--width", "64", "--height", "48"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "videos": 2,
        "queries": 4,
        "annotations": str(out / "annotations.json"),
    }
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_checkpoint(tmp_path_factory.mktemp("ckpt"), size="tiny", seed=0)


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_synth_writes_videos_and_timelens_bench_annotations(synth_set: Path) -> None:
    data = json.loads((synth_set / "annotations.json").read_text())
    assert sorted(data) == ["synth_000", "synth_001"]
    for vid, entry in data.items():
        assert (synth_set / f"{vid}.mp4").stat().st_size > 0
        assert entry["duration"] == pytest.approx(20.0, abs=0.2)
        assert len(entry["spans"]) == len(entry["queries"]) == 2
        assert all(q.startswith("When does the ") for q in entry["queries"])
        assert all(0 <= s < e <= 20 for s, e in entry["spans"])


def test_eval_scores_a_predictions_file(synth_set: Path, tmp_path: Path) -> None:
    data = json.loads((synth_set / "annotations.json").read_text())
    preds = []
    for vid, entry in data.items():
        (s, e), (s2, e2) = entry["spans"]
        preds.append(
            {
                "video": f"{vid}.mp4",
                "query": entry["queries"][0],
                "segments": [{"start_s": s, "end_s": e, "confidence": 0.9}],
            }
        )
        # Second query: a prediction of 0.6 of the truth inside it -> IoU 0.6.
        preds.append(
            {
                "video": vid,
                "query": entry["queries"][1],
                "segments": [{"start_s": s2, "end_s": s2 + (e2 - s2) * 0.6}],
            }
        )
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(preds))
    code, out, _ = _run(
        "eval", "--annotations", str(synth_set / "annotations.json"), "--predictions", str(path), "--details"
    )
    assert code == 0
    report = json.loads(out)
    assert report["count"] == 4 and report["mode"] == "timemark"
    assert report["mIoU"] == pytest.approx(0.8) and report["R1@0.5"] == 1.0 and report["R1@0.7"] == 0.5
    assert len(report["rows"]) == 4 and report["missing"] == 0
    code, out, _ = _run(
        "eval", "--annotations", str(synth_set / "annotations.json"), "--predictions", str(path), "--timelens"
    )
    assert code == 0 and json.loads(out)["mode"] == "timelens" and json.loads(out)["scale"] == 100.0


def test_ground_with_the_tiny_checkpoint(synth_set: Path, checkpoint: Path, tmp_path: Path) -> None:
    video = synth_set / "synth_000.mp4"
    out_file = tmp_path / "g.json"
    code, out, err = _run("ground", str(video), "-q", "When does the red circle appear?", "-q", "blue square",
                          "--checkpoint", str(checkpoint), "--out", str(out_file), "--stats", *SMALL)  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)
    assert [r["query"] for r in rows] == ["When does the red circle appear?", "blue square"]
    assert all(r["video"] == str(video) and isinstance(r["segments"], list) for r in rows)
    for seg in (s for r in rows for s in r["segments"]):
        assert 0 <= seg["start_s"] <= seg["end_s"] <= 20.5 and seg["rank"] >= 1
    assert json.loads(out_file.read_text()) == rows
    assert json.loads(err.strip().splitlines()[-1])["engine_calls"] >= 1


def test_ground_samples_as_the_checkpoint_was_trained_unless_told(
    synth_set: Path, checkpoint: Path, tmp_path: Path
) -> None:
    own = tmp_path / "own"
    shutil.copytree(checkpoint, own)
    pre = json.loads((own / "preprocessor_config.json").read_text())
    pre["video_sampling"] = {
        "fps": 0.5,
        "min_pixels": 3136,
        "max_pixels": 3136,
        "video_total_pixels": 4 * 3136,
    }
    (own / "preprocessor_config.json").write_text(json.dumps(pre))

    def chunks(*flags: str) -> int:
        code, _, err = _run("ground", str(synth_set / "synth_000.mp4"), "-q", "red circle", "--checkpoint",
                            str(own), "--stats", "--max-new-tokens", "4", *flags)  # fmt: skip
        assert code == 0, err
        return json.loads(err.strip().splitlines()[-1])["chunks"]

    assert chunks() >= 3  # 10 frames at 0.5 fps, 4 frames per context (the checkpoint's own sampling)
    assert chunks("--total-pixels", str(64 * 3136)) == 1  # a flag overrides it


def test_eval_runs_the_tiny_checkpoint(synth_set: Path, checkpoint: Path, tmp_path: Path) -> None:
    saved = tmp_path / "run.json"
    code, out, err = _run("eval", "--annotations", str(synth_set / "annotations.json"), "--videos", str(synth_set),
                          "--checkpoint", str(checkpoint), "--strategy", "coarse_to_fine",
                          "--save-predictions", str(saved), *SMALL)  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["count"] == 4 and 0.0 <= report["mIoU"] <= 1.0 and report["missing"] == 0
    assert len(json.loads(saved.read_text())) == 4


def test_eval_with_the_colour_baseline_engine(tmp_path: Path) -> None:
    code, out, err = _run("synth", "--out", str(tmp_path), "--count", "2", "--seed", "2", "--duration", "40",
                          "--distractors", "0", "--min-event", "8", "--width", "64", "--height", "48")  # fmt: skip
    assert code == 0, err
    code, out, err = _run("eval", "--annotations", str(tmp_path / "annotations.json"), "--videos", str(tmp_path),
                          "--engine", "color", "--fps", "2", "--min-pixels", "3136", "--max-pixels", "3136")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    # Seed 2 gives every event its own colour, so the baseline finds each one to within a frame (0.5 s).
    assert report["count"] == 4 and report["mIoU"] >= 0.8 and report["R1@0.7"] == 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ground", "/nope.mp4", "-q", "x", "--checkpoint", "/tmp"], "no such file"),
        (["eval", "--annotations", "/nope.json", "--predictions", "/nope2.json"], "no such file"),
        (["eval", "--annotations", "{synth}/annotations.json"], "nothing to score"),
        (
            [
                "eval",
                "--annotations",
                "{synth}/annotations.json",
                "--predictions",
                "{synth}/annotations.json",
            ],
            "expected a list",
        ),
        (["eval", "--annotations", "{synth}/annotations.json", "--checkpoint", "{synth}"], "needs --videos"),
        (
            [
                "eval",
                "--annotations",
                "{synth}/annotations.json",
                "--checkpoint",
                "{synth}",
                "--videos",
                "/tmp",
            ],
            "not found in /tmp",
        ),
        (
            [
                "eval",
                "--annotations",
                "{synth}/annotations.json",
                "--checkpoint",
                "{synth}",
                "--predictions",
                "x",
            ],
            "not both",
        ),
        (
            ["ground", "{synth}/synth_000.mp4", "-q", "x", "--checkpoint", "{synth}"],
            "not a checkpoint folder",
        ),
        (["ground", "{synth}/synth_000.mp4", "-q", "x", "--engine", "openai"], "needs --base-url"),
        (["ground", "{synth}/synth_000.mp4", "-q", "x", "--strategy", "zigzag"], "unknown strategy"),
        (["ground", "{synth}/synth_000.mp4", "-q", "x", "--fps", "-1"], "fps must be"),
        (["synth", "--out", "{tmp}/s", "--count", "0"], "count must be"),
        (["synth", "--out", "{tmp}/s", "--min-event", "-1"], "min event must be positive"),
        (["synth", "--out", "{tmp}/s", "--duration", "inf"], "duration must be within"),
        (["synth", "--out", "{tmp}/s", "--video-fps", "1e9"], "video fps must be within"),
        (["synth", "--out", "{tmp}/s", "--width", "99999999"], "width and height must be within"),
        (["synth", "--out", "{tmp}/s", "--distractors", "-1"], "distractors must be within"),
        # An output that would replace an input, or cannot be written, is refused before any work.
        (
            [
                "ground",
                "{synth}/synth_000.mp4",
                "-q",
                "x",
                "--engine",
                "color",
                "--out",
                "{synth}/synth_000.mp4",
            ],
            "would overwrite an input",
        ),
        (
            ["ground", "{synth}/synth_000.mp4", "-q", "x", "--engine", "color", "--out", "{tmp}"],
            "is a folder",
        ),
        (
            ["ground", "{synth}/synth_000.mp4", "-q", "x", "--engine", "color", "--out", "{tmp}/no/x.json"],
            "does not exist",
        ),
        (
            [
                "eval",
                "--annotations",
                "{synth}/annotations.json",
                "--videos",
                "{synth}",
                "--engine",
                "color",
                "--save-predictions",
                "{synth}/annotations.json",
            ],
            "would overwrite an input",
        ),
        (
            [
                "eval",
                "--annotations",
                "{synth}/annotations.json",
                "--predictions",
                "{tmp}/p.json",
                "--save-predictions",
                "{tmp}/q.json",
            ],
            "needs a model run",
        ),
        (
            ["eval", "--annotations", "{synth}/annotations.json", "--timelens", "--unit", "nan"],
            "--unit must be",
        ),
    ],
)
def test_one_line_errors(args: list[str], message: str, synth_set: Path, tmp_path: Path) -> None:
    code, _, err = _run(*(a.format(synth=synth_set, tmp=tmp_path) for a in args))
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_the_script_turns_an_unexpected_error_into_one_line(tmp_path: Path) -> None:
    """The `timemark` entry point itself (not the Typer app): what no command expected still ends as one line."""
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / "config.json").write_text("[1, 2]")
    script = "import sys; from timemark.cli import main; sys.argv = ['timemark', *sys.argv[1:]]; main()"
    env = {**os.environ, "TIMEMARK_DEBUG": ""}
    done = subprocess.run([sys.executable, "-c", script, "model", "info", str(broken)], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and "expected a JSON object" in done.stderr
    debug = subprocess.run([sys.executable, "-c", script, "model", "info", str(broken)], capture_output=True,
                           text=True, env={**env, "TIMEMARK_DEBUG": "1"}, timeout=120)  # fmt: skip
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    # Typer's own usage errors (a bad value, a missing argument) also end in one line, with a pointer to --help.
    usage = subprocess.run([sys.executable, "-c", script, "frames", "x.mp4", "--fps", "abc"], capture_output=True,
                           text=True, env=env, timeout=120)  # fmt: skip
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1, usage.stderr
    assert (
        usage.stderr.startswith("error: Invalid value for '--fps'")
        and "timemark frames --help" in usage.stderr
    )
