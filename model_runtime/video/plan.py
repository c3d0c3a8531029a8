"""Turn a probed video and sampling params into chunks: time windows whose frames fit one context.

The Keye server thins frames until a whole video fits its token budget; for an hour that is one frame
every 1.25 s at the smallest size. We keep the requested fps over the whole video instead and cut it
into overlapping windows, each holding as many frames as fit the budget at the smallest frame size
(`min_pixels`); each window then gets the largest frame size that still fits. A video that fits one
context at the requested fps gives exactly one chunk with the server's own frames and size.
`plan_coarse` is the server's thinned whole-video pass (coarse-to-fine's first look) and
`plan_window` one narrow window for refinement. Plans are plain data, stored with the job as JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from model_runtime.video.errors import InvalidTimestampError
from model_runtime.video.probe import VideoInfo
from model_runtime.video.sampling import (
    SamplingParams,
    fit_frame_size,
    frame_tokens,
    keye_frame_indices,
    keye_server_sampling,
    max_frames_per_context,
)


@dataclass
class Chunk:
    """One context's worth of video: planned frame times (absolute video seconds) and frame size."""

    index: int
    start_s: float
    end_s: float
    timestamps: list[float]
    height: int
    width: int
    tokens_per_frame: int

    @property
    def n_frames(self) -> int:
        return len(self.timestamps)

    @property
    def total_tokens(self) -> int:
        return self.n_frames * self.tokens_per_frame

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chunk:
        return cls(**{**d, "timestamps": [float(t) for t in d["timestamps"]]})


@dataclass
class VideoPlan:
    """The chunks of one job; `sample_fps` is the spacing the frames were planned at."""

    kind: Literal["chunked", "coarse"]
    chunks: list[Chunk]
    info: VideoInfo
    params: SamplingParams
    overlap_s: float = 0.0
    sample_fps: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "chunks": [c.to_dict() for c in self.chunks],
            "info": self.info.to_dict(),
            "params": self.params.to_dict(),
            "overlap_s": self.overlap_s,
            "sample_fps": self.sample_fps,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoPlan:
        return cls(
            kind=d["kind"],
            chunks=[Chunk.from_dict(c) for c in d["chunks"]],
            info=VideoInfo.from_dict(d["info"]),
            params=SamplingParams.from_dict(d["params"]),
            overlap_s=float(d.get("overlap_s", 0.0)),
            sample_fps=float(d.get("sample_fps", 0.0)),
            extra=dict(d.get("extra", {})),
        )


def effective_fps(info: VideoInfo, params: SamplingParams) -> float:
    """Requested fps capped at the stream's (the server does the same)."""
    return min(params.fps, info.avg_fps) if info.avg_fps > 0 else params.fps


def _server_chunk(info: VideoInfo, params: SamplingParams, index: int = 0) -> Chunk:
    """The server's whole-clip sampling as one chunk; the size shrinks only if the server would overshoot."""
    server = keye_server_sampling(info.n_frames, info.avg_fps, info.height, info.width, params)
    cap = max_frames_per_context(info.height, info.width, params)
    if len(server.frame_indices) > cap:  # odd sizes whose smallest frame costs more than min_pixels
        indices = keye_frame_indices(info.n_frames, cap)
        server.frame_indices, server.timestamps = indices, [i / info.avg_fps for i in indices]
    n = len(server.frame_indices)
    height, width = server.height, server.width
    if n * server.tokens_per_frame > params.budget_tokens:  # the server's search allows n extra tokens
        height, width = fit_frame_size(n, info.height, info.width, params)
    # Planned times are clamped into the stream: frame indices beyond a short stream's real length
    # (container metadata over-reporting) would otherwise ask for frames that do not exist.
    timestamps = [min(t, max(0.0, info.duration_s)) for t in server.timestamps]
    return Chunk(
        index=index,
        start_s=0.0,
        end_s=info.duration_s,
        timestamps=timestamps,
        height=height,
        width=width,
        tokens_per_frame=frame_tokens(height, width),
    )


def _fits_one_context(info: VideoInfo, params: SamplingParams) -> bool:
    """Does the server keep every frame the requested fps asks for (no thinning)?"""
    fps = effective_fps(info, params)
    wanted = math.floor(info.n_frames / info.avg_fps * fps) if info.avg_fps else info.n_frames
    return wanted <= max_frames_per_context(info.height, info.width, params)


def plan_chunks(info: VideoInfo, params: SamplingParams, *, overlap_s: float = 4.0) -> VideoPlan:
    """Windows at the requested fps, overlapping by at least `overlap_s`, each within the token budget."""
    if not (math.isfinite(overlap_s) and overlap_s >= 0):
        raise InvalidTimestampError(f"overlap_s must be a non-negative number, got {overlap_s}")
    fps = effective_fps(info, params)
    if _fits_one_context(info, params):
        return VideoPlan(
            "chunked", [_server_chunk(info, params)], info, params, overlap_s=0.0, sample_fps=fps
        )

    grid = [k / fps for k in range(max(1, math.floor(info.duration_s * fps)))]
    n_total = len(grid)
    per_chunk = max_frames_per_context(info.height, info.width, params)
    overlap_frames = min(round(overlap_s * fps), per_chunk // 2)  # overlap may never swallow a chunk
    n_chunks = max(1, math.ceil((n_total - overlap_frames) / (per_chunk - overlap_frames)))
    # Equal-length chunks (no sliver at the end) with evenly spread starts; consecutive starts differ
    # by at most length - overlap frames, so every pair overlaps by at least `overlap_frames`.
    length = min(n_total, math.ceil((n_total - overlap_frames) / n_chunks) + overlap_frames)
    spacing = (n_total - length) / (n_chunks - 1) if n_chunks > 1 else 0.0
    chunks: list[Chunk] = []
    for i in range(n_chunks):
        first = round(i * spacing)
        times = grid[first : first + length]
        height, width = fit_frame_size(len(times), info.height, info.width, params)
        end_s = min(info.duration_s, times[-1] + 1.0 / fps)
        chunks.append(Chunk(i, times[0], end_s, times, height, width, frame_tokens(height, width)))
    return VideoPlan("chunked", chunks, info, params, overlap_s=overlap_frames / fps, sample_fps=fps)


def plan_coarse(info: VideoInfo, params: SamplingParams) -> VideoPlan:
    """The whole video in one context at the fps that fits (the server's own thinning)."""
    chunk = _server_chunk(info, params)
    fps = chunk.n_frames / info.duration_s if info.duration_s > 0 else effective_fps(info, params)
    return VideoPlan(
        "coarse", [chunk], info, params, overlap_s=0.0, sample_fps=min(fps, effective_fps(info, params))
    )


def check_time(value: float, what: str) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidTimestampError(f"{what} must be a finite number of seconds, got {value!r}")
    if value < 0:
        raise InvalidTimestampError(f"{what} must not be negative, got {value}")
    return float(value)


def plan_window(
    info: VideoInfo, params: SamplingParams, start_s: float, end_s: float, *, index: int = 0
) -> Chunk:
    """One window [start_s, end_s) at the requested fps, thinned uniformly only if it exceeds one context."""
    start_s = check_time(start_s, "start")
    end_s = min(check_time(end_s, "end"), info.duration_s)
    if start_s >= info.duration_s:
        raise InvalidTimestampError(
            f"start {start_s:.3f}s is past the end of the video ({info.duration_s:.3f}s)"
        )
    if end_s <= start_s:
        raise InvalidTimestampError(f"window end {end_s:.3f}s is not after its start {start_s:.3f}s")
    fps = effective_fps(info, params)
    # Grid points of the whole-video sampling that fall in the window, so refined frames line up
    # with the chunked plan's frames.
    first_k, last_k = math.ceil(start_s * fps - 1e-9), math.ceil(end_s * fps - 1e-9) - 1
    times = [k / fps for k in range(first_k, last_k + 1)]
    frames_in_window = max(1, math.floor((end_s - start_s) * info.avg_fps)) if info.avg_fps else len(times)
    want = max(len(times), min(params.min_frames, frames_in_window))
    cap = max_frames_per_context(info.height, info.width, params)
    n = min(want, cap)
    if n != len(times):  # too few grid points (tiny window) or too many (long window): spread uniformly
        last_frame_s = max(start_s, end_s - (1.0 / info.avg_fps if info.avg_fps else 0.0))
        times = [float(t) for t in np.linspace(start_s, last_frame_s, n)]
    height, width = fit_frame_size(len(times), info.height, info.width, params)
    return Chunk(index, start_s, end_s, times, height, width, frame_tokens(height, width))
