"""Chunk planning: one chunk with the server's own sampling when a video fits, overlapping windows at
the requested fps when it does not, the coarse plan, refinement windows, and JSON round trips."""

from __future__ import annotations

import json
import math

import pytest

from model_runtime.video import (
    Chunk,
    InvalidTimestampError,
    SamplingParams,
    VideoInfo,
    VideoPlan,
    frame_tokens,
    keye_server_sampling,
    plan_chunks,
    plan_coarse,
    plan_window,
)

DEFAULT = SamplingParams()


def make_info(duration_s: float, fps: float = 30.0, width: int = 1280, height: int = 720) -> VideoInfo:
    return VideoInfo(
        duration_s=duration_s,
        avg_fps=fps,
        real_fps=fps,
        width=width,
        height=height,
        rotation=0,
        codec="h264",
        n_frames=round(duration_s * fps),
        keyframe_interval_s=2.0,
        start_time_s=0.0,
        has_audio=False,
    )


def test_video_that_fits_gives_one_chunk_with_server_sampling() -> None:
    info = make_info(600.0)
    plan = plan_chunks(info, DEFAULT)
    server = keye_server_sampling(18_000, 30.0, 720, 1280, DEFAULT)
    assert plan.kind == "chunked" and len(plan.chunks) == 1
    chunk = plan.chunks[0]
    assert chunk.timestamps == server.timestamps
    assert (chunk.height, chunk.width) == (server.height, server.width) == (252, 448)
    assert chunk.start_s == 0.0 and chunk.end_s == 600.0
    assert chunk.total_tokens == 1200 * 144


def test_hour_long_video_is_chunked_at_requested_fps() -> None:
    info = make_info(3600.0)
    plan = plan_chunks(info, DEFAULT, overlap_s=4.0)
    # 7200 grid frames, 2880 per context, 8 overlap frames -> 3 chunks of ceil(7192 / 3) + 8 = 2406
    # frames, starting at round(i * (7200 - 2406) / 2) = 0, 2397, 4794.
    assert len(plan.chunks) == 3
    assert [c.n_frames for c in plan.chunks] == [2406, 2406, 2406]
    assert [c.start_s for c in plan.chunks] == [0.0, 2397 / 2, 4794 / 2]
    assert plan.overlap_s == 4.0 and plan.sample_fps == 2.0
    seen: set[float] = set()
    for chunk in plan.chunks:
        assert chunk.total_tokens <= DEFAULT.budget_tokens
        assert chunk.tokens_per_frame >= 60  # the size min_pixels gives for 720p (168x280)
        assert chunk.tokens_per_frame == frame_tokens(chunk.height, chunk.width)
        steps = {round(b - a, 9) for a, b in zip(chunk.timestamps, chunk.timestamps[1:], strict=False)}
        assert steps == {0.5}  # the requested fps is kept, no thinning
        assert chunk.start_s <= chunk.timestamps[0] and chunk.timestamps[-1] < chunk.end_s
        seen.update(chunk.timestamps)
    assert (plan.chunks[0].height, plan.chunks[0].width) == (168, 336)
    assert len(seen) == 7200  # every grid point covered
    for a, b in zip(plan.chunks, plan.chunks[1:], strict=False):
        shared = set(a.timestamps) & set(b.timestamps)
        assert len(shared) >= 8 and a.end_s - b.start_s >= 4.0


def test_small_budget_makes_many_equal_chunks() -> None:
    params = SamplingParams(video_total_pixels=784 * 64 * 40)  # 40 frames at 64 tokens per context
    plan = plan_chunks(make_info(120.0, fps=10.0, width=224, height=224), params, overlap_s=2.0)
    lengths = [c.n_frames for c in plan.chunks]
    assert max(lengths) <= 40 and max(lengths) == min(lengths)
    assert all(c.total_tokens <= params.budget_tokens for c in plan.chunks)
    assert plan.chunks[-1].timestamps[-1] == pytest.approx(119.5)


def test_overlap_cannot_swallow_a_chunk_and_must_be_valid() -> None:
    params = SamplingParams(video_total_pixels=784 * 64 * 10)
    plan = plan_chunks(make_info(60.0), params, overlap_s=100.0)
    assert plan.overlap_s == 2.5  # clamped to half a chunk (5 frames at 2 fps)
    for bad in (-1.0, math.nan):
        with pytest.raises(InvalidTimestampError):
            plan_chunks(make_info(60.0), params, overlap_s=bad)


def test_coarse_plan_is_the_server_thinning() -> None:
    info = make_info(3600.0)
    plan = plan_coarse(info, DEFAULT)
    assert plan.kind == "coarse" and len(plan.chunks) == 1
    chunk = plan.chunks[0]
    assert chunk.n_frames == 2880 and chunk.total_tokens <= DEFAULT.budget_tokens
    assert chunk.timestamps[0] == 0.0 and chunk.timestamps[-1] == pytest.approx(107_999 / 30)
    assert plan.sample_fps == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("duration_s", "fps", "expected_frames"),
    [
        pytest.param(0.3, 30.0, 2, id="shorter-than-1-over-fps"),
        pytest.param(1 / 25, 25.0, 1, id="one-frame"),
        pytest.param(5.0, 1.0, 5, id="fps-capped-at-1"),
    ],
)
def test_tiny_videos(duration_s: float, fps: float, expected_frames: int) -> None:
    plan = plan_chunks(make_info(duration_s, fps=fps, width=64, height=64), DEFAULT)
    assert [c.n_frames for c in plan.chunks] == [expected_frames]
    assert (plan.chunks[0].height, plan.chunks[0].width) == (224, 224)


def test_extreme_aspect_ratio_plans() -> None:
    plan = plan_chunks(make_info(10.0, width=4000, height=20), DEFAULT)
    chunk = plan.chunks[0]
    assert chunk.height == 28 and chunk.width % 28 == 0 and chunk.total_tokens <= DEFAULT.budget_tokens


def test_plan_window_lines_up_with_the_grid() -> None:
    info = make_info(3600.0)
    chunk = plan_window(info, DEFAULT, 100.2, 110.0, index=7)
    assert chunk.index == 7
    assert chunk.timestamps == [k / 2 for k in range(201, 220)]
    assert chunk.tokens_per_frame == 256 or chunk.total_tokens <= DEFAULT.budget_tokens
    tiny = plan_window(info, DEFAULT, 50.1, 50.3)  # no grid point inside -> min_frames spread
    assert tiny.n_frames == 2 and tiny.timestamps[0] == pytest.approx(50.1)
    wide = plan_window(info, SamplingParams(max_frames=16), 0.0, 3600.0)
    assert wide.n_frames == 16


@pytest.mark.parametrize(
    ("start", "end"), [(-1.0, 5.0), (math.nan, 5.0), (1.0, math.inf), (5.0, 5.0), (4000.0, 4001.0)]
)
def test_plan_window_rejects_bad_times(start: float, end: float) -> None:
    with pytest.raises(InvalidTimestampError) as err:
        plan_window(make_info(3600.0), DEFAULT, start, end)
    assert err.value.code == "invalid-timestamp"


def test_plan_json_round_trip() -> None:
    plan = plan_chunks(make_info(3600.0), DEFAULT)
    text = json.dumps(plan.to_dict())
    again = VideoPlan.from_dict(json.loads(text))
    assert again == plan
    assert Chunk.from_dict(plan.chunks[1].to_dict()) == plan.chunks[1]
    assert VideoInfo.from_dict(plan.info.to_dict()) == plan.info
