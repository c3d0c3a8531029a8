"""The Keye-VL-2.0 server's video sampling arithmetic (spec keye-vl-2.md §4.1–§4.2), as pure functions.

`SamplingParams` carries the server's knobs under the fork's `preprocess_kwargs` names. `smart_resize`
picks a frame size in multiples of 28 under a pixel budget; `keye_frame_count` / `keye_tokens_per_frame`
/ `keye_server_sampling` reproduce what the official server does with a whole clip (all frames slow).
`fit_frame_size` is our planner's variant: the largest frame size whose tokens, times the frame count,
stay inside the budget (the server may overshoot by up to one token per frame; our context may not).
Nothing here touches a file: the planner and the tests call these with numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_runtime.video.errors import AbsurdDimensionsError, NoFramesError

PATCH_FACTOR = 28  # 14-pixel ViT patches merged 2x2: one LLM token per 28x28 block
PIXELS_PER_TOKEN = PATCH_FACTOR * PATCH_FACTOR  # 784
MAX_ASPECT_RATIO = 200
SERVER_MIN_PIXELS_FLOOR = 64 * PIXELS_PER_TOKEN  # the server never goes below 64 tokens per video frame


@dataclass
class SamplingParams:
    """Per-request video knobs, same names and defaults as the Keye-VL-2.0 server (spec §4.2).

    `video_total_pixels / 784` is the token budget of one context (184,320 tokens by default);
    `max_frames=None` means "only the budget limits the frame count".
    """

    fps: float = 2.0
    min_pixels: int = 50_176  # 64 tokens per frame
    max_pixels: int = 200_704  # 256 tokens per frame
    video_total_pixels: int = 144_506_880  # 184,320 tokens
    max_frames: int | None = None
    min_frames: int = 2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if self.min_pixels < PIXELS_PER_TOKEN:
            raise ValueError(
                f"min_pixels must be at least {PIXELS_PER_TOKEN} (one token), got {self.min_pixels}"
            )
        if self.max_pixels < self.min_pixels:
            raise ValueError(f"max_pixels ({self.max_pixels}) is below min_pixels ({self.min_pixels})")
        if self.video_total_pixels < self.min_pixels:
            raise ValueError("video_total_pixels must hold at least one frame of min_pixels")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")

    @property
    def budget_tokens(self) -> int:
        """Visual tokens one context may spend on a video."""
        return self.video_total_pixels // PIXELS_PER_TOKEN

    @property
    def min_tokens(self) -> int:
        return self.min_pixels // PIXELS_PER_TOKEN

    @property
    def max_tokens(self) -> int:
        return self.max_pixels // PIXELS_PER_TOKEN

    @property
    def frame_cap(self) -> int:
        """Most frames one context may hold: the server's floor(budget / min_pixels), and the user's max_frames."""
        cap = self.video_total_pixels // self.min_pixels
        return cap if self.max_frames is None else min(cap, self.max_frames)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any] | None) -> SamplingParams:
        """Build from the fork's `preprocess_kwargs` (unknown keys are an error, None means default)."""
        kwargs = dict(kwargs or {})
        known = {"fps", "min_pixels", "max_pixels", "video_total_pixels", "max_frames", "min_frames"}
        unknown = set(kwargs) - known
        if unknown:
            raise ValueError(f"unknown sampling parameters: {sorted(unknown)}")
        values = {k: v for k, v in kwargs.items() if v is not None}
        for name in ("min_pixels", "max_pixels", "video_total_pixels", "max_frames", "min_frames"):
            if name in values:
                values[name] = int(values[name])
        if "fps" in values:
            values["fps"] = float(values["fps"])
        return cls(**values)

    def to_kwargs(self) -> dict[str, Any]:
        """The fork's `preprocess_kwargs` for these params (None entries dropped)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingParams:
        return cls(**d)


def smart_resize(
    height: int,
    width: int,
    factor: int = PATCH_FACTOR,
    min_pixels: int = 50_176,
    max_pixels: int = 200_704,
) -> tuple[int, int]:
    """Frame size in multiples of `factor` whose area lies in [min_pixels, max_pixels] (spec §4.1).

    Same float arithmetic as the upstream function (Python `round`, floor/ceil after dividing by β), so
    sizes match the server's bit for bit.
    """
    if height <= 0 or width <= 0:
        raise AbsurdDimensionsError(f"frame size {width}x{height} is empty")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise AbsurdDimensionsError(
            f"aspect ratio of {width}x{height} exceeds {MAX_ASPECT_RATIO}:1, which the model cannot take"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return max(h_bar, factor), max(w_bar, factor)


def frame_tokens(height: int, width: int) -> int:
    """LLM tokens of one resized frame (one per 28x28 block)."""
    return (height // PATCH_FACTOR) * (width // PATCH_FACTOR)


def keye_frame_count(total_frames: int, video_fps: float, params: SamplingParams) -> int:
    """Frames the server samples from a whole clip (spec §4.2 step 3), fps capped at the file's fps."""
    if total_frames < 1:
        raise NoFramesError("the video has no frames")
    fps = min(params.fps, video_fps) if video_fps > 0 else params.fps
    max_frames = min(params.frame_cap, total_frames)
    wanted = math.floor(total_frames / video_fps * fps) if video_fps > 0 else total_frames
    return min(max(wanted, params.min_frames), max_frames)


def keye_frame_indices(total_frames: int, n_frames: int) -> list[int]:
    """Uniform frame indices over the whole clip, first and last frame included (spec §4.2 step 4)."""
    if n_frames == 1:
        return [0]
    return [int(i) for i in np.linspace(0, total_frames - 1, n_frames).round()]


def keye_tokens_per_frame(n_frames: int, params: SamplingParams) -> int:
    """The server's binary search: smallest τ with n·τ·784 > budget, else max tokens (spec §4.2 step 5).

    This can exceed the budget by up to one token per frame; `fit_frame_size` is the exact-fit variant.
    """
    lo, hi = params.min_tokens, params.max_tokens
    while lo < hi:
        mid = (lo + hi) // 2
        if n_frames * mid * PIXELS_PER_TOKEN > params.video_total_pixels:
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass
class ServerSampling:
    """What the Keye-VL-2.0 server would feed the model for a whole clip."""

    frame_indices: list[int]
    timestamps: list[float]  # index / video_fps, as the server writes them
    height: int
    width: int
    tokens_per_frame: int  # actual tokens of the resized frame
    max_tokens_searched: int  # τ from the binary search


def keye_server_sampling(
    total_frames: int, video_fps: float, height: int, width: int, params: SamplingParams
) -> ServerSampling:
    """The server's full recipe for one clip (all frames slow): count, indices, timestamps, size."""
    n = keye_frame_count(total_frames, video_fps, params)
    indices = keye_frame_indices(total_frames, n)
    tau = keye_tokens_per_frame(n, params)
    min_pixels = max(params.min_pixels, SERVER_MIN_PIXELS_FLOOR)
    h, w = smart_resize(height, width, PATCH_FACTOR, min_pixels=min_pixels, max_pixels=tau * PIXELS_PER_TOKEN)
    fps = video_fps if video_fps > 0 else 1.0
    return ServerSampling(
        frame_indices=indices,
        timestamps=[i / fps for i in indices],
        height=h,
        width=w,
        tokens_per_frame=frame_tokens(h, w),
        max_tokens_searched=tau,
    )


def size_for_tokens(height: int, width: int, tau: int, params: SamplingParams) -> tuple[int, int]:
    """smart_resize of a (height, width) video under a cap of `tau` tokens per frame."""
    return smart_resize(
        height, width, PATCH_FACTOR, min_pixels=params.min_pixels, max_pixels=tau * PIXELS_PER_TOKEN
    )


def max_frames_per_context(height: int, width: int, params: SamplingParams) -> int:
    """Most frames one context holds at the smallest frame size the params allow."""
    h, w = size_for_tokens(height, width, params.min_tokens, params)
    return max(1, min(params.frame_cap, params.budget_tokens // frame_tokens(h, w)))


def fit_frame_size(n_frames: int, height: int, width: int, params: SamplingParams) -> tuple[int, int]:
    """Largest smart_resize'd size, τ in [min_tokens, max_tokens], with n_frames · tokens ≤ budget.

    Tokens grow monotonically with τ, so a binary search over τ finds it. Raises ValueError when even
    the smallest size does not fit (the caller planned too many frames).
    """
    budget = params.budget_tokens
    smallest = size_for_tokens(height, width, params.min_tokens, params)
    if n_frames * frame_tokens(*smallest) > budget:
        raise ValueError(f"{n_frames} frames do not fit {budget} tokens even at {smallest}")
    lo, hi = params.min_tokens, params.max_tokens
    while lo < hi:  # largest τ that fits
        mid = (lo + hi + 1) // 2
        if n_frames * frame_tokens(*size_for_tokens(height, width, mid, params)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return size_for_tokens(height, width, lo, params)


@dataclass
class FramePromptPiece:
    """What the processor writes for one frame: `<|frame|>` + `timestamp_text` + tokens x `<|video_pad|>`."""

    timestamp_text: str  # seconds, one decimal (spec §4.4)
    grid_h: int  # height / 28: merged-token rows
    grid_w: int  # width / 28: merged-token columns

    @property
    def n_tokens(self) -> int:
        return self.grid_h * self.grid_w


def frame_prompt_pieces(
    timestamps: list[float], height: int, width: int, *, origin_s: float = 0.0
) -> list[FramePromptPiece]:
    """Timestamp text and token grid per frame; pass `origin_s=chunk.start_s` for chunk-local times."""
    grid_h, grid_w = height // PATCH_FACTOR, width // PATCH_FACTOR
    return [FramePromptPiece(f"{max(0.0, t - origin_s):.1f}", grid_h, grid_w) for t in timestamps]


def checkpoint_video_sampling(checkpoint: str | Path) -> dict[str, Any] | None:
    """The sampling a checkpoint was trained with (`video_sampling` in its preprocessor config), if any:
    the service, `timemark ground/eval` and the held-out scorer make it their default."""
    path = Path(checkpoint) / "preprocessor_config.json"
    if not path.is_file():
        return None
    sampling = json.loads(path.read_text()).get("video_sampling")
    return dict(sampling) if isinstance(sampling, dict) and sampling else None
