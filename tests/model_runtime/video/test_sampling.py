"""The Keye-VL-2.0 sampling arithmetic against cases worked by hand from spec §4.1–§4.2."""

from __future__ import annotations

import pytest

from model_runtime.video import (
    AbsurdDimensionsError,
    NoFramesError,
    SamplingParams,
    fit_frame_size,
    frame_prompt_pieces,
    frame_tokens,
    keye_frame_count,
    keye_frame_indices,
    keye_server_sampling,
    keye_tokens_per_frame,
    max_frames_per_context,
    smart_resize,
)

DEFAULT = SamplingParams()


@pytest.mark.parametrize(
    ("height", "width", "max_pixels", "expected"),
    [
        # 720p: round gives 728x1288 > max; beta = sqrt(921600/200704) = 2.1429 -> floor(12.0)*28, floor(21.3)*28
        pytest.param(720, 1280, 200_704, (336, 588), id="720p-default"),
        pytest.param(1080, 1920, 200_704, (336, 588), id="1080p-default"),
        # 480x640: beta = 1.2372 -> floor(13.86)=13 -> 364, floor(18.47)=18 -> 504
        pytest.param(480, 640, 200_704, (364, 504), id="vga"),
        # under min_pixels: 140x168 < 50176, beta = 1.4071 -> ceil(7.24)=8 -> 224, ceil(8.85)=9 -> 252
        pytest.param(144, 176, 200_704, (224, 252), id="qcif-upscaled"),
        # tiny 64x64: 56x56 < min, beta = 3.5 -> ceil(8.0) = 8 -> 224x224 = 64 tokens
        pytest.param(64, 64, 200_704, (224, 224), id="tiny-64"),
        # tau = 154 cap: beta = 2.7628 -> floor(9.3)=9 -> 252, floor(16.5)=16 -> 448
        pytest.param(720, 1280, 154 * 784, (252, 448), id="720p-tau154"),
        # tau = 65 cap: beta = 4.2527 -> floor(6.05)=6 -> 168, floor(10.75)=10 -> 280
        pytest.param(720, 1280, 65 * 784, (168, 280), id="720p-tau65"),
        # aspect exactly 200: 10 rounds to 0 -> clamped to 28; 2000 -> 71*28 = 1988
        pytest.param(10, 2000, 200_704, (28, 1988), id="aspect-200"),
    ],
)
def test_smart_resize_hand_cases(height: int, width: int, max_pixels: int, expected: tuple[int, int]) -> None:
    assert smart_resize(height, width, 28, min_pixels=50_176, max_pixels=max_pixels) == expected


@pytest.mark.parametrize(("height", "width"), [(10, 2001), (1, 5000), (0, 100)])
def test_smart_resize_rejects_absurd_shapes(height: int, width: int) -> None:
    with pytest.raises(AbsurdDimensionsError) as err:
        smart_resize(height, width)
    assert err.value.code == "absurd-dimensions"


@pytest.mark.parametrize(
    ("total_frames", "video_fps", "expected"),
    [
        pytest.param(18_000, 30.0, 1200, id="10min-30fps"),  # floor(600 s * 2)
        pytest.param(108_000, 30.0, 2880, id="1h-capped"),  # 7200 > floor(144506880 / 50176) = 2880
        pytest.param(100, 1.0, 100, id="fps-capped-at-stream"),  # 2 fps capped to the file's 1 fps
        pytest.param(9, 30.0, 2, id="shorter-than-1-over-fps"),  # floor(0.6) = 0 -> min_frames 2
        pytest.param(1, 25.0, 1, id="one-frame"),  # min_frames cannot exceed total frames
    ],
)
def test_keye_frame_count(total_frames: int, video_fps: float, expected: int) -> None:
    assert keye_frame_count(total_frames, video_fps, DEFAULT) == expected


def test_keye_frame_count_rejects_empty_and_honours_max_frames() -> None:
    with pytest.raises(NoFramesError):
        keye_frame_count(0, 30.0, DEFAULT)
    assert keye_frame_count(18_000, 30.0, SamplingParams(max_frames=32)) == 32


def test_frame_indices_are_uniform_and_include_both_ends() -> None:
    assert keye_frame_indices(9, 2) == [0, 8]
    assert keye_frame_indices(1, 1) == [0]
    assert keye_frame_indices(300, 4) == [0, 100, 199, 299]  # linspace 0, 99.67, 199.33, 299 rounded


@pytest.mark.parametrize(
    ("n_frames", "expected"),
    [
        pytest.param(10, 256, id="few-frames-max"),  # nothing exceeds the budget -> max tokens
        pytest.param(1200, 154, id="1200-frames"),  # smallest tau with 1200 tau > 184320 -> 154
        pytest.param(2880, 65, id="2880-frames"),  # 2880*64 == budget (not >) -> 65
        pytest.param(720, 256, id="720-frames"),  # 720*256 == budget, not above -> stays 256
        pytest.param(721, 256, id="721-frames"),  # 721*256 > budget, 721*255 = 183855 not -> 256
    ],
)
def test_server_binary_search(n_frames: int, expected: int) -> None:
    assert keye_tokens_per_frame(n_frames, DEFAULT) == expected


def test_server_sampling_10min_720p() -> None:
    server = keye_server_sampling(18_000, 30.0, 720, 1280, DEFAULT)
    assert len(server.frame_indices) == 1200
    assert server.frame_indices[0] == 0 and server.frame_indices[-1] == 17_999
    assert (server.height, server.width) == (252, 448)  # tau 154 -> 9 x 16 = 144 tokens
    assert server.tokens_per_frame == 144
    assert server.timestamps[-1] == pytest.approx(17_999 / 30.0)


def test_server_sampling_applies_its_64_token_floor() -> None:
    # The server clamps min_pixels up to 50176 whatever the request says.
    small = SamplingParams(min_pixels=784 * 4, max_pixels=784 * 16, video_total_pixels=784 * 16 * 100)
    server = keye_server_sampling(40, 10.0, 64, 64, small)
    assert (server.height, server.width) == (224, 224)


def test_fit_frame_size_never_exceeds_budget() -> None:
    # 2406 frames: 184320 / 2406 = 76.6 tokens; tau 81 gives 6 x 12 = 72, tau 87 would give 84.
    assert fit_frame_size(2406, 720, 1280, DEFAULT) == (168, 336)
    for n in (1, 50, 719, 721, 1200, 2000, 2880):
        h, w = fit_frame_size(n, 720, 1280, DEFAULT)
        assert n * frame_tokens(h, w) <= DEFAULT.budget_tokens
    with pytest.raises(ValueError):
        fit_frame_size(4000, 720, 1280, DEFAULT)


def test_max_frames_per_context() -> None:
    # Smallest 720p frame is 168x280 = 60 tokens -> 3072 would fit, but the server's cap is 2880.
    assert max_frames_per_context(720, 1280, DEFAULT) == 2880
    assert max_frames_per_context(720, 1280, SamplingParams(max_frames=100)) == 100
    small = SamplingParams(video_total_pixels=784 * 64 * 10)
    assert max_frames_per_context(720, 1280, small) == 10


def test_params_from_fork_kwargs() -> None:
    params = SamplingParams.from_kwargs({"fps": "1", "max_pixels": 100_352.0, "max_frames": None})
    assert params.fps == 1.0 and params.max_pixels == 100_352 and params.max_frames is None
    assert SamplingParams.from_dict(params.to_dict()) == params
    assert params.to_kwargs()["video_total_pixels"] == 144_506_880
    with pytest.raises(ValueError):
        SamplingParams.from_kwargs({"frames_per_second": 2})
    with pytest.raises(ValueError):
        SamplingParams(fps=float("nan"))
    with pytest.raises(ValueError):
        SamplingParams(min_pixels=200_000, max_pixels=100_000)


def test_frame_prompt_pieces_are_chunk_local_with_one_decimal() -> None:
    pieces = frame_prompt_pieces([600.0, 600.54, 612.25], 252, 448, origin_s=600.0)
    assert [p.timestamp_text for p in pieces] == ["0.0", "0.5", "12.2"]
    assert (pieces[0].grid_h, pieces[0].grid_w, pieces[0].n_tokens) == (9, 16, 144)
