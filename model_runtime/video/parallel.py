"""Decode one chunk with several processes, each over its own keyframe-aligned time range.

Decoding is bound by the CPU, and frame threading inside one FFmpeg decoder scales poorly beyond a
couple of threads; independent processes over disjoint GOP ranges scale almost linearly (spec
video-and-eval §1.3 (c)). The chunk's targets are split at keyframes read from the container's index
(MP4/MKV index entries: no extra pass over the file), so no GOP is decoded twice; each process seeks
straight to its first keyframe and writes its frames into one memory-mapped file, so frames are
neither pickled through pipes nor copied. Files without an index are split at equal times instead (at most one partial
GOP decoded twice per split).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np

from model_runtime.video.container import open_input, video_stream
from model_runtime.video.decode import DecodeStats, SampledFrames, SkipMode, _sample_pyav, check_chunk
from model_runtime.video.plan import Chunk


def keyframe_times(source: str, *, timeout_s: float = 15.0) -> list[float]:
    """Approximate keyframe presentation times (video seconds) from the container index, or [].

    MP4 index entries carry decode timestamps; keyframes of a B-frame stream are shown a fixed
    reorder delay later, which the first entry's offset from the stream start gives.
    """
    with open_input(source, timeout_s=timeout_s) as container:
        stream = video_stream(container, source)
        entries = stream.index_entries
        if entries is None or len(entries) == 0:
            return []
        time_base = stream.time_base
        first_dts = entries[0].timestamp
        start_pts = stream.start_time if stream.start_time is not None else first_dts
        shift = max(0, start_pts - first_dts)  # reorder delay in time_base units
        return [float((e.timestamp + shift - start_pts) * time_base) for e in entries if e.is_keyframe]


def split_targets(
    times: list[float], keyframes: list[float], parts: int
) -> list[tuple[int, int, float | None]]:
    """Split sorted target times into up to `parts` contiguous runs of similar span, cut at keyframes.

    Returns (first, last_exclusive, seek_s) per run; seek_s is the keyframe the run starts at (None for
    the first run, or where no keyframe index exists).
    """
    if parts <= 1 or len(times) < 2 * parts:
        return [(0, len(times), None)]
    lo, hi = times[0], times[-1]
    cuts: list[tuple[int, float | None]] = []
    for p in range(1, parts):
        ideal = lo + (hi - lo) * p / parts
        if keyframes:
            key = min(keyframes, key=lambda k: abs(k - ideal))
            index = int(np.searchsorted(times, key))
            cuts.append((index, key))
        else:
            cuts.append((int(np.searchsorted(times, ideal)), None))
    runs = []
    first, seek = 0, None
    for index, key in cuts:
        if index > first and index < len(times):  # drop empty runs (keyframes too sparse to split here)
            runs.append((first, index, seek))
            first, seek = index, key
    runs.append((first, len(times), seek))
    return runs


def _shared_folder(size: int) -> str:
    """RAM-backed /dev/shm when it has room (Docker gives it 64 MB by default), else the temp folder."""
    try:
        usage = os.statvfs("/dev/shm")
        if os.access("/dev/shm", os.W_OK) and usage.f_bavail * usage.f_frsize > 2 * size:
            return "/dev/shm"
    except OSError:
        pass
    return tempfile.gettempdir()


def _worker(source: str, chunk: Chunk, first: int, last: int, seek_s: float | None, rows_path: str,
            skip: SkipMode, threads: int, max_skew_s: float | None, timeout_s: float) -> tuple[list[float], dict, int]:  # fmt: skip
    """Decode targets [first, last) of `chunk` straight into rows first..last of the shared file."""
    times = [float(t) for t in chunk.timestamps[first:last]]
    part = replace(chunk, timestamps=times)
    shape = (len(chunk.timestamps), chunk.height, chunk.width, 3)
    rows = np.memmap(rows_path, dtype=np.uint8, mode="r+", shape=shape)  # [N, H, W, 3]
    try:
        sampled = _sample_pyav(source, part, times, skip=skip, threads=threads, max_skew_s=max_skew_s,
                               timeout_s=timeout_s, seek_s=seek_s, out=rows[first:last])  # fmt: skip
        rows.flush()
    finally:
        del rows
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return sampled.timestamps, sampled.stats.to_dict(), peak_kib


def sample_chunk_parallel(
    source: str,
    chunk: Chunk,
    *,
    processes: int = 2,
    threads_per_process: int = 1,
    skip: SkipMode = "auto",
    max_skew_s: float | None = None,
    timeout_s: float = 15.0,
) -> SampledFrames:
    """Like `sample_chunk` (PyAV), with the chunk split over `processes` worker processes.

    Workers write their frames into one memory-mapped file (in /dev/shm); the returned array is that
    mapping, so frames are neither pickled nor copied, and the file is unlinked before returning (the
    memory goes when the array does). The workers' peak RSS is summed into
    `stats.worker_peak_rss_kib`; it counts the shared pages each worker wrote, so it is an upper bound.
    Uses 'spawn' processes, safe from programs that hold threads; daemonic pool workers (Celery
    prefork) cannot start processes and should call `sample_chunk` with processes=1.
    """
    times = check_chunk(chunk)
    runs = split_targets(times, keyframe_times(source, timeout_s=timeout_s), processes)
    shape = (len(times), chunk.height, chunk.width, 3)
    size = int(np.prod(shape))
    handle, rows_path = tempfile.mkstemp(prefix="timemark-frames-", suffix=".u8", dir=_shared_folder(size))
    os.close(handle)
    try:
        frames = np.memmap(rows_path, dtype=np.uint8, mode="w+", shape=shape)  # [N, H, W, 3]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=len(runs), mp_context=context) as pool:
            futures = [
                pool.submit(
                    _worker,
                    source,
                    chunk,
                    first,
                    last,
                    seek,
                    rows_path,
                    skip,
                    threads_per_process,
                    max_skew_s,
                    timeout_s,
                )  # fmt: skip
                for first, last, seek in runs
            ]
            results = [f.result() for f in futures]
    finally:
        os.unlink(rows_path)  # the mapping above stays valid; the memory is freed with the array
    stats = DecodeStats(backend="pyav-parallel", skip_mode=results[0][1]["skip_mode"])
    timestamps: list[float] = []
    for part_times, part_stats, peak_kib in results:
        timestamps.extend(part_times)
        for name in (
            "frames_decoded",
            "gops_decoded",
            "gops_skipped",
            "gops_redecoded",
            "seeks",
            "corrupt_packets",
        ):
            setattr(stats, name, getattr(stats, name) + part_stats[name])
        stats.max_skew_s = max(stats.max_skew_s, part_stats["max_skew_s"])
        stats.worker_peak_rss_kib += peak_kib
    stats.processes = len(runs)
    return SampledFrames(np.asarray(frames), timestamps, stats)
