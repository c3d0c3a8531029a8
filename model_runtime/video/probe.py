"""What a video is, read cheaply: duration, frame rates, size after rotation, codec, keyframe spacing.

`probe_video` opens the source once, reads the container's own numbers, demuxes at most a short prefix
of packets (keyframe spacing, first pts) and decodes the first frame (the rotation lives on frames,
and a file whose first frame does not decode is rejected here rather than in a GPU worker). It never
reads a whole remote file. Times in `VideoInfo` are seconds from the first frame: `start_time_s` is the
stream's own offset, which decoding subtracts from every pts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import av

from model_runtime.video.container import display_name, open_input, video_stream
from model_runtime.video.errors import AbsurdDimensionsError, NoFramesError, UnreadableVideoError
from model_runtime.video.sampling import MAX_ASPECT_RATIO

MAX_SIDE = 16_384  # larger than any real camera or screen recording (8K is 7680x4320)
PREFIX_PACKETS = 4_000  # demux budget for the keyframe-spacing estimate (~2 min at 30 fps)
PREFIX_SECONDS = 120.0


@dataclass
class VideoInfo:
    """Facts about one video; width/height are as displayed (rotation applied)."""

    duration_s: float
    avg_fps: float  # frames / duration, as the container reports it
    real_fps: float  # the stream's base rate (r_frame_rate); differs from avg_fps on VFR content
    width: int
    height: int
    rotation: int  # degrees counter-clockwise the decoded picture must be turned for display: 0/90/180/270
    codec: str
    n_frames: int
    keyframe_interval_s: float  # median spacing of keyframes in the probed prefix
    start_time_s: float  # pts of the first frame in seconds; subtracted from every decoded pts
    has_audio: bool
    coded_width: int = 0  # decoded picture size before rotation
    coded_height: int = 0

    def __post_init__(self) -> None:
        if not self.coded_width:
            swap = self.rotation % 180 == 90
            self.coded_width = self.height if swap else self.width
            self.coded_height = self.width if swap else self.height

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoInfo:
        return cls(**d)


def check_dimensions(width: int, height: int, source: str = "video") -> None:
    """Reject sizes the model cannot use; raises AbsurdDimensionsError."""
    if width < 1 or height < 1:
        raise AbsurdDimensionsError(f"{source} has an empty frame size {width}x{height}")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise AbsurdDimensionsError(
            f"{source} is {width}x{height}; sides above {MAX_SIDE} px are not accepted"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise AbsurdDimensionsError(
            f"{source} is {width}x{height}: aspect ratio above {MAX_ASPECT_RATIO}:1 cannot be resized for the model"
        )


def _rate(value: Fraction | None) -> float:
    return float(value) if value else 0.0


def _normalise_rotation(counter_clockwise: float) -> int:
    return int(round(counter_clockwise / 90.0)) * 90 % 360


def probe_video(source: str, *, timeout_s: float = 15.0) -> VideoInfo:
    """Probe a local path or http(s) URL (presigned S3 URLs included); raises a VideoError subclass."""
    name = display_name(source)
    with open_input(source, timeout_s=timeout_s) as container:
        stream = video_stream(container, source)
        codec = stream.codec_context
        time_base = stream.time_base or Fraction(1, 1_000_000)
        check_dimensions(codec.width, codec.height, name)

        keyframe_pts: list[int] = []
        first_frame = None
        n_packets = 0
        first_pts: int | None = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                n_packets += 1
                if packet.pts is not None:
                    first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                    if packet.is_keyframe:
                        keyframe_pts.append(packet.pts)
                if first_frame is None:
                    for frame in packet.decode():
                        first_frame = frame
                        break
                seconds = float((packet.pts or 0) * time_base)
                if first_frame is not None and (n_packets >= PREFIX_PACKETS or seconds >= PREFIX_SECONDS):
                    break
            if first_frame is None:  # frames held back by the decoder's reordering delay
                for frame in codec.decode(None):
                    first_frame = frame
                    break
        except av.error.InvalidDataError as exc:
            raise UnreadableVideoError(f"{name}: the video stream does not decode") from exc
        if first_frame is None:
            raise NoFramesError(f"{name} has a video stream but no decodable frame")

        coded_w, coded_h = first_frame.width, first_frame.height
        check_dimensions(coded_w, coded_h, name)
        rotation = _normalise_rotation(first_frame.rotation or 0)
        width, height = (coded_h, coded_w) if rotation % 180 == 90 else (coded_w, coded_h)

        if stream.start_time is not None:
            start_time_s = float(stream.start_time * time_base)
        elif first_pts is not None:
            start_time_s = float(first_pts * time_base)
        else:
            start_time_s = 0.0
        if stream.duration:
            duration_s = float(stream.duration * time_base)
        elif container.duration:
            duration_s = container.duration / 1_000_000 - max(0.0, start_time_s)
        else:
            duration_s = 0.0

        avg_fps = _rate(stream.average_rate) or _rate(stream.guessed_rate)
        real_fps = _rate(stream.base_rate) or avg_fps
        n_frames = stream.frames or (round(duration_s * avg_fps) if avg_fps else 0)
        if not avg_fps and duration_s > 0 and n_frames:
            avg_fps = n_frames / duration_s
        if duration_s <= 0 and avg_fps and n_frames:
            duration_s = n_frames / avg_fps
        if not (math.isfinite(duration_s) and duration_s > 0) or n_frames < 1:
            if n_packets == 1:  # a single still frame: one frame "lasting" one frame interval
                n_frames, duration_s = 1, 1.0 / (avg_fps or 1.0)
            else:
                raise NoFramesError(f"{name}: duration or frame count is unknown or zero")

        keyframe_interval_s = _keyframe_interval(keyframe_pts, time_base, duration_s)

        return VideoInfo(
            duration_s=duration_s,
            avg_fps=avg_fps,
            real_fps=real_fps,
            width=width,
            height=height,
            rotation=rotation,
            codec=codec.name,
            n_frames=int(n_frames),
            keyframe_interval_s=keyframe_interval_s,
            start_time_s=start_time_s,
            has_audio=bool(container.streams.audio),
            coded_width=coded_w,
            coded_height=coded_h,
        )


def _keyframe_interval(keyframe_pts: list[int], time_base: Fraction, duration_s: float) -> float:
    """Median keyframe spacing in the prefix; the whole duration when only one keyframe was seen."""
    times = sorted(float(p * time_base) for p in keyframe_pts)
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False) if b > a)
    if not gaps:
        return duration_s
    return gaps[len(gaps) // 2]
