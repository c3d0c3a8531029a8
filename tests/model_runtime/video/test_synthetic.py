"""The synthetic generator: known events, real GOPs (not all-intra), determinism, readable barcodes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from model_runtime.video import (
    SyntheticTruth,
    make_event,
    make_synthetic_video,
    random_events,
    read_barcode,
)


def keyframe_times(path: str) -> list[float]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        return [float(p.pts * stream.time_base) for p in container.demux(stream) if p.size and p.is_keyframe]


def test_gops_and_b_frames_are_real(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("basic")  # 80 frames, gop 20
    assert keyframe_times(truth.path) == [0.0, 2.0, 4.0, 6.0]
    with av.open(truth.path) as container:
        kinds = {av.video.frame.PictureType(f.pict_type).name for f in container.decode(video=0)}
    assert kinds == {"I", "P", "B"}


def test_scene_cuts_start_new_gops(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("cuts_audio")
    assert keyframe_times(truth.path) == [0.0, 2.0, 4.0]  # gop 60 = 6 s, so only the cuts add keyframes


def test_every_frame_carries_its_index(synthetic: Callable[[str], SyntheticTruth]) -> None:
    for name in ("basic", "vfr", "odd"):
        truth = synthetic(name)
        with av.open(truth.path) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                index = read_barcode(frame.to_ndarray(format="rgb24"))
                assert float(frame.pts * stream.time_base) == pytest.approx(
                    truth.frame_times_s[index], abs=1e-3
                )


def test_vfr_frame_times_are_irregular(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("vfr")
    gaps = [b - a for a, b in zip(truth.frame_times_s, truth.frame_times_s[1:], strict=False)]
    assert max(gaps) > 1.3 / truth.fps and min(gaps) < 0.7 / truth.fps


def test_deterministic_per_seed(tmp_path: Path) -> None:
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    kwargs = dict(duration_s=2.0, fps=5.0, width=64, height=48, seed=11)
    a = make_synthetic_video(tmp_path / "a.mp4", **kwargs)
    b = make_synthetic_video(tmp_path / "b.mp4", **kwargs)
    make_synthetic_video(tmp_path / "c.mp4", **{**kwargs, "seed": 12})
    assert digest(tmp_path / "a.mp4") == digest(tmp_path / "b.mp4") != digest(tmp_path / "c.mp4")
    assert a.events == b.events and a.distractors == b.distractors


def test_random_events_have_unique_labels() -> None:
    events = random_events(3, 60.0, n_events=8, min_len_s=2.0, max_len_s=10.0)
    assert len({e.label for e in events}) == 8
    for e in events:
        assert e.label == f"{e.color} {e.shape}"
        assert 0.0 <= e.start_s < e.end_s <= 60.0 and 2.0 <= e.end_s - e.start_s <= 10.0 + 0.01
    assert random_events(3, 60.0, n_events=8, min_len_s=2.0, max_len_s=10.0) == events


def test_distractors_never_share_an_event_label(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("basic")
    assert {d.label for d in truth.distractors}.isdisjoint({e.label for e in truth.events})
    assert truth.labels_at(2.0) == ["red circle"] and truth.labels_at(5.0) == ["blue square"]
    assert truth.event("blue square").end_s == 6.5


def test_truth_round_trips_through_json(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("basic")
    assert SyntheticTruth.from_dict(json.loads(json.dumps(truth.to_dict()))) == truth


def test_bad_generator_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_event("blob", "red", 0, 1)
    with pytest.raises(ValueError):
        make_event("circle", "mauve", 0, 1)
    with pytest.raises(ValueError):
        make_synthetic_video(tmp_path / "x.mp4", duration_s=1.0, rotation=45)
    with pytest.raises(ValueError):
        random_events(0, 10.0, n_events=1000)
