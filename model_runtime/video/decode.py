"""Decode one chunk: the frames nearest its planned times, resized for the model, with their true times.

At 2 fps the sample spacing is shorter than almost every GOP, so the decoder has to walk through
every GOP that holds a target anyway (spec video-and-eval §1.3); seeking per sample would decode the
same frames again and again. So: seek once to the keyframe before the window, then demux forward one
GOP at a time. A GOP with no target is dropped undecoded (sparse plans); one with targets is decoded
from its buffered packets, optionally skipping frames no one references (`skip_frame`), and each
target keeps the decoded frame nearest to it. Only kept frames are converted, by swscale straight to
the chunk's size. If skipping left a target further from its frame than `max_skew_s`, that GOP is
decoded again in full, so the timestamp error stays bounded. Memory holds one GOP's packets and the
kept frames, never the whole video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import av
import numpy as np

from model_runtime.video.container import display_name, open_input, video_stream
from model_runtime.video.errors import (
    BackendMissingError,
    InvalidTimestampError,
    NoFramesError,
    TruncatedVideoError,
    UnreadableVideoError,
    VideoSourceError,
)
from model_runtime.video.plan import Chunk
from model_runtime.video.probe import _normalise_rotation

SkipMode = Literal["auto", "none", "nonref", "bidir"]
SKIP_TO_FFMPEG = {"none": "DEFAULT", "nonref": "NONREF", "bidir": "BIDIR"}
SEEK_MARGIN_S = 0.05  # plus 3 frames: mp4 indexes keyframes by dts, which trails pts by the reorder delay
END_TOLERANCE_S = 1.0  # targets this far past the last decodable frame mean the file was cut short


@dataclass
class DecodeStats:
    """How a chunk was decoded; `max_skew_s` is the largest |true frame time − planned time|."""

    backend: str = "pyav"
    skip_mode: str = "none"
    frames_decoded: int = 0
    gops_decoded: int = 0
    gops_skipped: int = 0
    gops_redecoded: int = 0
    seeks: int = 0
    corrupt_packets: int = 0
    max_skew_s: float = 0.0
    processes: int = 1
    worker_peak_rss_kib: int = 0  # summed over worker processes (parallel decoding only)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SampledFrames:
    """Frames [N, H, W, 3] uint8 RGB at the chunk's size and their true presentation times (video seconds)."""

    frames: np.ndarray
    timestamps: list[float]
    stats: DecodeStats = field(default_factory=DecodeStats)

    def __post_init__(self) -> None:
        if len(self.timestamps) != self.frames.shape[0]:
            raise ValueError(f"{len(self.timestamps)} timestamps for {self.frames.shape[0]} frames")


def check_chunk(chunk: Chunk) -> list[float]:
    """The chunk's planned times, validated: finite, non-negative, non-decreasing."""
    times = [float(t) for t in chunk.timestamps]
    if not times:
        raise InvalidTimestampError("the chunk plans no frames")
    for t in times:
        if not math.isfinite(t) or t < 0:
            raise InvalidTimestampError(f"planned frame time {t!r} is negative or not a number")
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        raise InvalidTimestampError("planned frame times must be non-decreasing")
    if chunk.height % 28 or chunk.width % 28 or chunk.height <= 0 or chunk.width <= 0:
        raise ValueError(f"chunk size {chunk.height}x{chunk.width} is not a positive multiple of 28")
    return times


def choose_skip_mode(skip: SkipMode, codec: str, times: list[float], stream_fps: float) -> str:
    """Which frames the decoder may drop without moving any target by more than a frame or two.

    NONREF frames are referenced by nothing: always safe. Dropping every B-frame (BIDIR) is safe for
    H.264 as x264 writes it (B-references are used only by other B-frames) but not for HEVC, whose
    random-access streams are nearly all B-slices. Both only pay off when samples are several source
    frames apart; the per-GOP skew check catches the rest.
    """
    if skip != "auto":
        return skip
    if len(times) < 2 or stream_fps <= 0:
        return "none"
    spacing = min((b - a for a, b in zip(times, times[1:], strict=False) if b > a), default=0.0)
    frames_per_sample = spacing * stream_fps
    if codec == "h264" and frames_per_sample >= 8:
        return "bidir"
    if frames_per_sample >= 4:
        return "nonref"
    return "none"


class _Picker:
    """Nearest decoded frame per target, among the frames of the GOP the target falls in."""

    def __init__(self, targets: list[float]) -> None:
        self.targets = targets
        self.best: list[tuple[float, float, Any] | None] = [None] * len(targets)  # (distance, time, frame)

    def offer(self, ids: list[int], time_s: float, frame: Any) -> None:
        for i in ids:
            distance = abs(time_s - self.targets[i])
            current = self.best[i]
            if current is None or distance < current[0]:
                self.best[i] = (distance, time_s, frame)

    def worst(self, ids: list[int]) -> float:
        return max((self.best[i][0] if self.best[i] else math.inf) for i in ids)


def _convert(frame: av.VideoFrame, height: int, width: int, rotation: int) -> np.ndarray:
    """RGB at the displayed size: swscale resizes in the coded orientation, then a lossless turn."""
    turns = (rotation // 90) % 4
    coded_h, coded_w = (width, height) if turns % 2 else (height, width)
    rgb = frame.to_ndarray(width=coded_w, height=coded_h, format="rgb24", interpolation="AREA")  # [h, w, 3]
    return np.rot90(rgb, turns) if turns else rgb


def _sample_pyav(source: str, chunk: Chunk, times: list[float], *, skip: SkipMode, threads: int,
                 max_skew_s: float | None, timeout_s: float, seek_s: float | None = None,
                 out: np.ndarray | None = None) -> SampledFrames:  # fmt: skip
    """PyAV decode of one chunk; `seek_s` (a keyframe time) replaces the first seek's safety margin,
    `out` ([N, H, W, 3] uint8, e.g. a shared mapping) receives the frames instead of a new array."""
    name = display_name(source)
    with open_input(source, timeout_s=timeout_s) as container:
        stream = video_stream(container, source)
        ctx = stream.codec_context
        ctx.thread_type = "AUTO"
        ctx.thread_count = threads
        time_base = stream.time_base
        start_s = float(stream.start_time * time_base) if stream.start_time is not None else 0.0
        stream_fps = float(stream.average_rate or stream.guessed_rate or 0)
        frame_dt = 1.0 / stream_fps if stream_fps > 0 else 0.04
        mode = choose_skip_mode(skip, ctx.name, times, stream_fps)
        if max_skew_s is None:  # a quarter of the sample spacing, never below one source frame
            spacing = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1.0
            max_skew_s = max(0.25 * spacing, frame_dt)
        stats = DecodeStats(backend="pyav", skip_mode=mode)
        picker = _Picker(times)
        rotation: int | None = None
        pending = 0  # index of the first target not yet assigned to a GOP
        if out is None:
            out = np.empty((len(times), chunk.height, chunk.width, 3), dtype=np.uint8)  # [N, H, W, 3]
        true_times = [math.nan] * len(times)
        skews = [math.inf] * len(times)

        def decode_gop(packets: list[av.Packet], ids: list[int], skip_mode: str) -> None:
            nonlocal rotation
            ctx.skip_frame = SKIP_TO_FFMPEG[skip_mode]
            last_target = times[ids[-1]]
            for packet in [*packets, None]:
                try:
                    frames = ctx.decode(packet)
                except av.error.InvalidDataError:
                    # A damaged packet (cut file, bit rot): FFmpeg conceals what it can and goes on;
                    # targets left without a frame nearby are reported as truncation below.
                    stats.corrupt_packets += 1
                    continue
                passed_last = False
                for frame in frames:
                    stats.frames_decoded += 1
                    if rotation is None:
                        rotation = _normalise_rotation(frame.rotation or 0)
                    if frame.pts is not None:
                        time_s = float(frame.pts * time_base) - start_s
                        picker.offer(ids, time_s, frame)
                        passed_last = passed_last or time_s >= last_target
                if passed_last:  # frames come out in pts order: none later can be nearer to any target
                    break
            ctx.flush_buffers()  # drop what is still in flight and reopen the decoder for the next GOP

        def finish_gop(packets: list[av.Packet], gop_end_s: float) -> None:
            nonlocal pending
            ids = []
            while pending < len(times) and times[pending] < gop_end_s:
                ids.append(pending)
                pending += 1
            if not ids:
                stats.gops_skipped += 1
                return
            stats.gops_decoded += 1
            decode_gop(packets, ids, mode)
            if mode != "none" and picker.worst(ids) > max_skew_s:
                stats.gops_redecoded += 1
                decode_gop(packets, ids, "none")
            keep_gop(ids)

        def keep_gop(ids: list[int]) -> None:
            """Convert this GOP's kept frames now and let go of the decoded pictures (bounded memory)."""
            converted: dict[int, int] = {}  # id(frame) -> row already holding it
            for i in ids:
                best = picker.best[i]
                if best is None:
                    continue
                distance, time_s, frame = best
                row = converted.get(id(frame))
                out[i] = (
                    out[row] if row is not None else _convert(frame, chunk.height, chunk.width, rotation or 0)
                )
                converted.setdefault(id(frame), i)
                true_times[i], skews[i] = time_s, distance
                picker.best[i] = None

        def seek_to(t: float, margin: bool = True) -> None:
            t = max(0.0, t - SEEK_MARGIN_S - 3 * frame_dt) if margin else t
            offset = int(math.floor((t + start_s) / time_base))
            container.seek(offset, stream=stream, backward=True, any_frame=False)
            stats.seeks += 1

        if seek_s is None:
            seek_to(times[0])
        else:
            seek_to(seek_s, margin=False)
        gop_span_s = 0.0  # longest GOP seen: decides when seeking ahead beats demuxing through
        while pending < len(times):
            packets: list[av.Packet] = []
            gop_start_s: float | None = None
            reseek: float | None = None
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                t = float(packet.pts * time_base) - start_s if packet.pts is not None else None
                if packet.is_keyframe and packets and t is not None:
                    finish_gop(packets, t)
                    if gop_start_s is not None:
                        gop_span_s = max(gop_span_s, t - gop_start_s)
                    packets = []
                    if pending >= len(times):
                        break
                    if times[pending] - t > 2 * gop_span_s + 2.0:  # far ahead: jump instead of reading
                        reseek = times[pending]
                        break
                if packet.is_keyframe and t is not None:
                    gop_start_s = t
                packets.append(packet)
            if reseek is not None:
                seek_to(reseek)
                continue
            if packets:
                finish_gop(packets, math.inf)
            break  # end of stream

        if stats.frames_decoded == 0 and stats.corrupt_packets:
            raise UnreadableVideoError(f"{name}: the video data does not decode")
        if stats.frames_decoded == 0:
            raise NoFramesError(f"{name}: no frame decoded in [{times[0]:.2f}s, {times[-1]:.2f}s]")
        for i, skew in enumerate(skews):
            if skew > END_TOLERANCE_S + max_skew_s:
                raise TruncatedVideoError(
                    f"{name}: no frame near {times[i]:.2f}s (the file ends early or is cut short)"
                )
        stats.max_skew_s = max(skews)
        return SampledFrames(out, true_times, stats)


def _sample_decord(
    source: str, chunk: Chunk, times: list[float], *, threads: int, timeout_s: float
) -> SampledFrames:
    """decord's VideoReader + get_batch, resized by decord; for cross-checking and benchmarks."""
    try:
        import decord
    except ImportError as exc:
        raise BackendMissingError("the decord backend is not installed (pip install decord)") from exc
    from model_runtime.video.container import is_url
    from model_runtime.video.probe import probe_video

    if is_url(source):  # decord has no read timeout; a stalled server would hang the worker
        raise VideoSourceError("the decord backend reads local files only; use the pyav backend for URLs")
    info = probe_video(source, timeout_s=timeout_s)  # start time: decord reports raw pts
    try:
        # decord applies the display rotation itself and takes the size as displayed.
        reader = decord.VideoReader(
            source, ctx=decord.cpu(0), width=chunk.width, height=chunk.height, num_threads=threads
        )
        frame_times = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0] - info.start_time_s  # [F]
    except decord.DECORDError as exc:
        raise UnreadableVideoError(f"{display_name(source)}: decord cannot read it ({exc})") from exc
    target = np.asarray(times)
    right = np.clip(np.searchsorted(frame_times, target), 0, len(frame_times) - 1)
    left = np.clip(right - 1, 0, len(frame_times) - 1)
    nearest = np.where(np.abs(frame_times[left] - target) <= np.abs(frame_times[right] - target), left, right)
    batch = reader.get_batch(nearest.tolist()).asnumpy()  # [N, H, W, 3]
    if batch.shape[1:3] != (chunk.height, chunk.width):
        raise UnreadableVideoError(
            f"decord returned {batch.shape[1:3]}, expected {(chunk.height, chunk.width)}"
        )
    chosen = np.round(frame_times[nearest].astype(np.float64), 6)  # decord's float32 seconds
    stats = DecodeStats(backend="decord", max_skew_s=float(np.max(np.abs(chosen - target))))
    return SampledFrames(batch, [float(t) for t in chosen], stats)


def sample_chunk(
    source: str,
    chunk: Chunk,
    *,
    backend: str = "pyav",
    skip: SkipMode = "auto",
    threads: int = 2,
    max_skew_s: float | None = None,
    timeout_s: float = 15.0,
    processes: int = 1,
) -> SampledFrames:
    """Decode the frames nearest `chunk.timestamps`, resized to chunk.height x chunk.width.

    One output frame per planned time (a frame may repeat when two targets share it). `skip="auto"`
    drops unreferenced frames when the sampling spacing allows; `max_skew_s` (default a quarter of the
    spacing) bounds how far a kept frame may sit from its target before its GOP is decoded in full.
    `processes` > 1 splits the chunk at keyframes over that many processes (`sample_chunk_parallel`).
    """
    times = check_chunk(chunk)
    if backend == "pyav" and processes > 1:
        from model_runtime.video.parallel import sample_chunk_parallel

        per_process = max(1, threads // processes)
        return sample_chunk_parallel(source, chunk, processes=processes, threads_per_process=per_process,
                                     skip=skip, max_skew_s=max_skew_s, timeout_s=timeout_s)  # fmt: skip
    if backend == "pyav":
        return _sample_pyav(
            source, chunk, times, skip=skip, threads=threads, max_skew_s=max_skew_s, timeout_s=timeout_s
        )
    if backend == "decord":
        return _sample_decord(source, chunk, times, threads=threads, timeout_s=timeout_s)
    raise BackendMissingError(f"unknown video backend {backend!r} (known: pyav, decord)")
