"""Benchmark: sampling 2 fps from long H.264 files, timemark's sampler vs decord, PyAV and ffmpeg.

`python -m benchmarks.video` makes the test files once (cached outside the repo, ~/.cache/timemark-bench):
a 10-minute 1280x720 30 fps H.264 file and a 60-minute 1920x1080 one, both from ffmpeg's `testsrc2`
with temporal noise, libx264 veryfast CRF 23 (B-frames and scene-cut keyframes as x264 writes them).
The hour is a 2-minute encode repeated 30 times with stream copy (ffmpeg's concat demuxer): the same
bitstream structure as one long encode, 30x cheaper to make on two cores. Each method then runs in its
own process (wall time, peak RSS from getrusage) on the same frame times, at the same output size:

- timemark: probe + plan_chunks + sample_chunk over every chunk (keyframe-aligned processes, skip_frame)
- timemark-1proc: the same in one process (two decoder threads), to show what the processes add
- pyav-seq: plain PyAV sequential decode, AUTO threads, converting only the kept frames
- decord: VideoReader resized to the model size + get_batch per chunk
- ffmpeg: the command line `-vf fps=2,scale=W:H` to raw RGB on a pipe

Results go to stdout as a table and JSON; benchmarks/results/video.md is written from them by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CACHE = Path(os.path.expanduser("~/.cache/timemark-bench"))
# name -> (size, fps, seconds, file name, noise strength of ffmpeg's noise filter)
FILES = {
    "720p-10min": ("1280x720", 30, 600, "h264_720p30_10min.mp4", 12),
    "1080p-2min": ("1920x1080", 30, 120, "piece_1920x1080_30_120.mp4", 4),
    "1080p-60min": ("1920x1080", 30, 3600, "h264_1080p30_60min.mp4", 4),
}
PIECE = "1080p-2min"  # the hour is this piece repeated
METHODS = ("timemark", "timemark-1proc", "pyav-seq", "decord", "ffmpeg")


# ----- test files -------------------------------------------------------------------------------


def _ffmpeg_encode(size: str, fps: int, seconds: int, out: Path, noise: int) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}", "-vf", f"noise=alls={noise}:allf=t",
         "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-threads", "2",
         str(out)],
        check=True,
    )  # fmt: skip


def _pyav_encode(size: str, fps: int, seconds: int, out: Path, noise: int) -> None:
    """Fallback without an ffmpeg binary: moving gradients plus cycled noise, libx264 veryfast CRF 23."""
    import av
    import numpy as np

    width, height = (int(v) for v in size.split("x"))
    rng = np.random.default_rng(0)
    grains = [rng.normal(0, noise, (height, width, 1)).astype(np.int16) for _ in range(7)]
    x = np.arange(width, dtype=np.int16)[None, :, None]
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast", "crf": "23"}
        for k in range(fps * seconds):
            base = ((x + 3 * k) % 256 + np.array([0, 60, 120], np.int16)) % 256  # [1, W, 3]
            img = np.clip(np.broadcast_to(base, (height, width, 3)) + grains[k % 7], 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pict_type = av.video.frame.PictureType.NONE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def ensure_file(name: str) -> Path:
    size, fps, seconds, filename, noise = FILES[name]
    path = CACHE / filename
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    have_ffmpeg = shutil.which("ffmpeg") is not None
    encode = _ffmpeg_encode if have_ffmpeg else _pyav_encode
    began = time.perf_counter()
    if seconds <= 600 or not have_ffmpeg:
        tmp = path.with_suffix(".tmp.mp4")
        encode(size, fps, seconds, tmp, noise)
    else:  # a short encode, repeated with stream copy
        piece = ensure_file(PIECE)
        listing = CACHE / "concat.txt"
        repeats = seconds // FILES[PIECE][2]
        listing.write_text("".join(f"file '{piece}'\n" for _ in range(repeats)))
        tmp = path.with_suffix(".tmp.mp4")
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
                        "-i", str(listing), "-c", "copy", str(tmp)], check=True)  # fmt: skip
    tmp.rename(path)
    print(f"made {path} in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    return path


def describe_file(path: Path) -> dict[str, Any]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        kinds: dict[str, int] = {}
        n_key = 0
        for packet in container.demux(stream):
            if packet.size:
                n_key += packet.is_keyframe
        container.seek(0)
        for k, frame in enumerate(container.decode(stream)):  # picture types of the first 600 frames
            kind = av.video.frame.PictureType(frame.pict_type).name
            kinds[kind] = kinds.get(kind, 0) + 1
            if k >= 600:
                break
        return {
            "file": path.name,
            "size_mb": round(path.stat().st_size / 1e6, 1),
            "size": f"{stream.width}x{stream.height}",
            "frames": stream.frames,
            "duration_s": round(float(stream.duration * stream.time_base), 1),
            "bitrate_mbps": round(
                path.stat().st_size * 8 / float(stream.duration * stream.time_base) / 1e6, 2
            ),
            "keyframes": n_key,
            "picture_types_first_600": kinds,
        }


# ----- one measurement per process -------------------------------------------------------------


def _plan(path: str) -> Any:
    from model_runtime.video import SamplingParams, plan_chunks, probe_video

    return plan_chunks(probe_video(path), SamplingParams())


def _nearest_indices(frame_times: Any, targets: Any) -> Any:
    import numpy as np

    right = np.clip(np.searchsorted(frame_times, targets), 0, len(frame_times) - 1)
    left = np.clip(right - 1, 0, len(frame_times) - 1)
    return np.where(np.abs(frame_times[left] - targets) <= np.abs(frame_times[right] - targets), left, right)


def run_method(method: str, path: str, processes: int) -> dict[str, Any]:
    """Run one method in this process; returns its numbers."""
    import numpy as np

    began = time.perf_counter()
    extra: dict[str, Any] = {}
    frames_out = 0
    checksum = 0
    if method in ("timemark", "timemark-1proc"):
        from model_runtime.video import sample_chunk

        plan = _plan(path)
        worker_kib = 0
        skews, decoded = [], 0
        for chunk in plan.chunks:
            if method == "timemark":
                sampled = sample_chunk(path, chunk, processes=processes, threads=processes)
            else:
                sampled = sample_chunk(path, chunk, threads=2)
            frames_out += sampled.frames.shape[0]
            checksum += int(sampled.frames[::97].sum())
            worker_kib = max(worker_kib, sampled.stats.worker_peak_rss_kib)  # chunks run one after another
            skews.append(sampled.stats.max_skew_s)
            decoded += sampled.stats.frames_decoded
            extra["skip_mode"] = sampled.stats.skip_mode
            del sampled
        extra.update(chunks=len(plan.chunks), frames_decoded=decoded, max_skew_s=round(max(skews), 4),
                     size=f"{plan.chunks[0].width}x{plan.chunks[0].height}", worker_peak_rss_kib=worker_kib)  # fmt: skip
    elif method == "pyav-seq":
        import av

        plan = _plan(path)
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_type = "AUTO"
            stream.codec_context.thread_count = 2
            start = float(stream.start_time * stream.time_base)
            for chunk in plan.chunks:  # chunk by chunk, like the sampler (bounded memory)
                targets = list(chunk.timestamps)
                container.seek(int((max(0.0, targets[0] - 1.0) + start) / stream.time_base), stream=stream)
                i, previous = 0, None
                for frame in container.decode(stream):
                    t = float(frame.pts * stream.time_base) - start
                    while i < len(targets) and t >= targets[i]:
                        keep = (
                            frame
                            if previous is None or abs(t - targets[i]) <= abs(previous[0] - targets[i])
                            else previous[1]
                        )
                        rgb = keep.to_ndarray(
                            width=chunk.width, height=chunk.height, format="rgb24", interpolation="AREA"
                        )
                        checksum += int(rgb[0].sum()) if i % 97 == 0 else 0
                        frames_out += 1
                        i += 1
                    previous = (t, frame)
                    if i >= len(targets):
                        break
        extra["size"] = f"{plan.chunks[0].width}x{plan.chunks[0].height}"
    elif method == "decord":
        import decord

        plan = _plan(path)
        chunk0 = plan.chunks[0]
        reader = decord.VideoReader(
            path, ctx=decord.cpu(0), width=chunk0.width, height=chunk0.height, num_threads=2
        )
        frame_times = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0]
        for chunk in plan.chunks:
            indices = _nearest_indices(frame_times, np.asarray(chunk.timestamps))
            batch = reader.get_batch(indices.tolist()).asnumpy()
            frames_out += batch.shape[0]
            checksum += int(batch[::97].sum())
            del batch
        extra["size"] = f"{chunk0.width}x{chunk0.height}"
    elif method == "ffmpeg":
        plan = _plan(path)
        chunk0 = plan.chunks[0]
        frame_bytes = chunk0.width * chunk0.height * 3
        command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-threads", "2", "-i", path, "-vf",
                   f"fps=2,scale={chunk0.width}:{chunk0.height}:flags=area", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]  # fmt: skip
        with subprocess.Popen(command, stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            total = 0
            while block := proc.stdout.read(frame_bytes * 16):
                total += len(block)
        frames_out = total // frame_bytes
        extra["size"] = f"{chunk0.width}x{chunk0.height}"
    else:
        raise SystemExit(f"unknown method {method}")
    wall = time.perf_counter() - began
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # Peak RSS: this process plus the largest child (ffmpeg) or, for the process pool, the sum of
    # every worker's peak (they run at the same time).
    peak_kib = self_kib + max(children_kib if method == "ffmpeg" else 0, extra.get("worker_peak_rss_kib", 0))
    return {"method": method, "wall_s": round(wall, 2), "frames_out": frames_out, "peak_rss_mb": round(peak_kib / 1024),
            "checksum": checksum, **extra}  # fmt: skip


def measure(method: str, path: Path, processes: int) -> dict[str, Any]:
    """Run `method` in a fresh interpreter so peak RSS is its own."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.video", "--child", method, "--path", str(path), "--processes", str(processes)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return {
            "method": method,
            "error": result.stderr.strip().splitlines()[-1] if result.stderr else "failed",
        }
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import av

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "pyav": av.__version__,
            "ffmpeg_cli": shutil.which("ffmpeg") is not None, "load_avg": os.getloadavg()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="*", default=["720p-10min", "1080p-60min"], choices=list(FILES))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_method(args.child, args.path, args.processes)))
        return

    report: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "files": {},
    }
    for name in args.files:
        path = ensure_file(name)
        entry: dict[str, Any] = {"file": describe_file(path), "runs": []}
        report["files"][name] = entry
        for repeat in range(args.repeats):
            for method in args.methods:  # interleaved, so load changes on a shared machine hit all alike
                if method == "ffmpeg" and shutil.which("ffmpeg") is None:
                    continue
                result = measure(method, path, args.processes)
                result.update(repeat=repeat, load_avg_1m=round(os.getloadavg()[0], 2))
                entry["runs"].append(result)
                print(f"{name:12s} {method:15s} {result.get('wall_s', '-'):>8} s  {result.get('peak_rss_mb', '-'):>6} MB  "
                      f"{result.get('frames_out', result.get('error'))} frames", file=sys.stderr, flush=True)  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
