"""Shared fixtures for the engine tests: a tiny random checkpoint, a small synthetic video, a live server.

The server is the real `create_app` over a `NativeEngine`, run by uvicorn in a thread on a free
127.0.0.1 port, once per test module.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Small frames: 1 fps, 4-16 tokens per frame, so a 4-second video is a few dozen visual tokens.
VIDEO_KWARGS = {"fps": 1.0, "min_pixels": 4 * 784, "max_pixels": 16 * 784}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_runtime.checkpoint import init_checkpoint

    return init_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_runtime.video import SyntheticEvent, make_synthetic_video

    path = tmp_path_factory.mktemp("video") / "red-circle.mp4"
    events = [SyntheticEvent("red circle", "circle", "red", 1.0, 3.0)]
    make_synthetic_video(path, duration_s=4.0, fps=8.0, width=112, height=84, events=events, seed=0)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tiny_checkpoint: Path) -> Iterator[str]:
    import uvicorn

    from model_runtime.engine.server import create_app

    app = create_app(tiny_checkpoint, model_name="keye-tiny")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the model server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def http_files(small_video: Path) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving the synthetic video's folder (for http(s) video URLs)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

    handler = functools.partial(QuietHandler, directory=str(small_video.parent))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(timeout=10)
