"""A corpus of bad videos and requests through the live API and a real worker (issue 9, hostile input).

tests/api/test_bad_input.py already covers request bodies in-process (unknown fields, 10,000 queries,
invalid UTF-8, deep nesting, bad URLs ...). What it cannot cover is a bad *video* going through the
worker: these files are uploaded to S3 (or served over loopback HTTP) and submitted; each must end either
as a 4xx problem document at submission or as a `failed` job whose error names the stage, and a good job
submitted after all of them still succeeds on the same, still running worker. A few request-level cases
that need a real HTTP server (a 1 MB URL query string, a 1 MB query) are here too.
"""

from __future__ import annotations

import io
import os
import random
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import free_port

from .conftest import (
    SAMPLING,
    PgCluster,
    RedisServer,
    Service,
    create_key,
    put_video,
    reliability_env,
    wait_terminal,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
QUERY = "When does the red circle appear?"
STAGES = {"probe", "plan", "infer", "finalize", "download", "decode"}


def _good_mp4(path: Path, **kwargs: Any) -> bytes:
    from model_runtime.video import make_synthetic_video

    make_synthetic_video(path, seed=1, **{"duration_s": 4.0, **kwargs})
    return path.read_bytes()


def _audio_only(path: Path) -> bytes:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16_000)
        samples = (np.sin(np.arange(16_000) / 10.0) * 0.3).astype(np.float32)[None, :]  # [1, 16000]
        for start in range(0, 16_000, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="flt", layout="mono")
            frame.sample_rate = 16_000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path.read_bytes()


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(out, format="PNG")
    return out.getvalue()


def _mpegts_garbage(rng: random.Random) -> bytes:
    return b"".join(b"\x47" + rng.randbytes(187) for _ in range(400))


def corpus(workdir: Path) -> dict[str, tuple[bytes, str, set[str]]]:
    """name → (bytes, file suffix, outcomes allowed: 'rejected' at submit, 'failed', 'succeeded')."""
    rng = random.Random(7)
    good = _good_mp4(workdir / "good.mp4")
    half = len(good) // 2
    flipped = bytearray(good)
    for offset in rng.sample(range(len(good) // 3, len(good)), 200):
        flipped[offset] ^= 0xFF
    bad = {"rejected", "failed"}
    return {
        "zero-byte": (b"", ".mp4", {"rejected"}),
        "one-byte": (b"\x00", ".mp4", bad),
        "truncated-1k": (good[:1024], ".mp4", bad),
        "truncated-half": (good[:half], ".mp4", bad | {"succeeded"}),
        "tail-only": (good[half:], ".mp4", bad),
        "header-only-ftyp": (good[:32], ".mp4", bad),
        "random-bytes": (rng.randbytes(100_000), ".mp4", bad),
        "ftyp-then-random": (good[:32] + rng.randbytes(50_000), ".mp4", bad),
        "mpegts-sync-garbage": (_mpegts_garbage(rng), ".ts", bad),
        "ebml-then-random": (b"\x1a\x45\xdf\xa3" + rng.randbytes(20_000), ".mkv", bad),
        "bit-flipped-mdat": (bytes(flipped), ".mp4", bad | {"succeeded"}),
        "audio-only-aac": (_audio_only(workdir / "audio.mp4"), ".mp4", bad),
        "png-as-mp4": (_png(), ".mp4", bad),
        "text-as-mp4": (b"this is not a video, just words\n" * 100, ".mp4", bad),
        "html-as-mp4": (b"<!doctype html><html><body>404</body></html>" * 50, ".mp4", bad),
        "gzip-as-mp4": (b"\x1f\x8b\x08\x00" + rng.randbytes(4000), ".mp4", bad),
        "pdf-as-mp4": (b"%PDF-1.7\n" + rng.randbytes(4000), ".mp4", bad),
        "zip-as-mp4": (b"PK\x03\x04" + rng.randbytes(4000), ".mp4", bad),
        # A YUV4MPEG2 header claiming a 20000x20000 picture (over the 16,384 px side limit), no real frame.
        "huge-dimensions-y4m": (
            b"YUV4MPEG2 W20000 H20000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\x00\x80" * 5000,
            ".y4m",
            bad,
        ),
        # Tiny on disk, big when decoded: 8K frames of a flat picture (bounded: 2 frames).
        "8k-flat-bomb": (
            _good_mp4(workdir / "big.mp4", duration_s=1.0, fps=2.0, width=7680, height=4320),
            ".mp4",
            bad | {"succeeded"},
        ),
        "one-frame-video": (
            _good_mp4(workdir / "short.mp4", duration_s=0.1, fps=10.0),
            ".mp4",
            bad | {"succeeded"},
        ),
        # The extension lies but the content is a fine MP4: it must simply work.
        "valid-mp4-named-avi": (good, ".avi", {"succeeded"}),
        "valid-mp4-no-extension": (good, "", {"succeeded"}),
    }


class ScriptedHTTP:
    """Loopback HTTP server: /missing → 404, /html → an HTML page, /slow-trickle → a tiny body, /redirect."""

    def __init__(self, payloads: dict[str, tuple[int, str, bytes]]) -> None:
        self.port = free_port()
        payloads_ = payloads

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, with_body: bool) -> None:
                status, content_type, body = payloads_.get(self.path, (404, "text/plain", b"no"))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if status in (301, 302):
                    self.send_header("Location", body.decode())
                self.end_headers()
                if with_body and status not in (301, 302):
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(False)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def service_and_key(
    redis_server: RedisServer,
    pg_cluster: PgCluster,
    start_service: Callable[[dict[str, str]], Service],
    s3_endpoint: str,
    s3_bucket: str,
    checkpoint: Path,
) -> Iterator[tuple[Service, dict[str, str]]]:
    database_url = pg_cluster.create_database()
    env = reliability_env(
        database_url=database_url,
        broker_url=redis_server.url,
        s3_endpoint=s3_endpoint,
        s3_bucket=s3_bucket,
        checkpoint=checkpoint,
    )
    env["TIMEMARK_CHUNK_MAX_ATTEMPTS"] = "2"
    env["TIMEMARK_JOB_MAX_ATTEMPTS"] = "2"
    service = start_service(env)
    yield service, {"Authorization": f"Bearer {create_key(database_url)}"}


def _outcome(answer: httpx.Response) -> str:
    if answer.status_code == 202:
        return "accepted"
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.headers
    problem = answer.json()
    assert problem["status"] == answer.status_code and problem["type"] and problem["title"], problem
    return "rejected"


def test_bad_videos_fail_cleanly_and_the_worker_stays_up(
    service_and_key: tuple[Service, dict[str, str]], s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    service, headers = service_and_key
    assert service.worker is not None
    worker_pid = service.worker.pid
    cases = corpus(tmp_path)
    good = cases["valid-mp4-named-avi"][0]
    http = ScriptedHTTP(
        {
            "/html.mp4": (200, "text/html", b"<html><body>not a video</body></html>"),
            "/empty.mp4": (200, "video/mp4", b""),
            "/garbage.mp4": (200, "video/mp4", os.urandom(30_000)),
            "/redirect-to-metadata.mp4": (302, "text/plain", b"http://169.254.169.254/latest/meta-data/"),
            "/server-error.mp4": (500, "text/plain", b"boom"),
        }
    )
    sources: dict[str, tuple[str, set[str]]] = {}
    for name, (data, suffix, allowed) in cases.items():
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(data)
        sources[name] = (put_video(s3_endpoint, s3_bucket, path), allowed)
    for name in ("html.mp4", "empty.mp4", "garbage.mp4", "redirect-to-metadata.mp4", "missing.mp4"):
        sources[f"http-{name}"] = (http.url(f"/{name}"), {"rejected", "failed"})

    accepted: dict[str, str] = {}
    outcomes: dict[str, str] = {}
    with httpx.Client(base_url=service.url, headers=headers, timeout=30) as client:
        for name, (source, _allowed) in sources.items():
            answer = client.post(
                "/v1/jobs", json={"source": source, "queries": [QUERY], "sampling": SAMPLING}
            )
            outcomes[name] = _outcome(answer)
            if outcomes[name] == "accepted":
                accepted[name] = answer.json()["id"]
        views = wait_terminal(client, list(accepted.values()), timeout_s=180)

        # A good job after all of that still succeeds on the same worker.
        after = client.post(
            "/v1/jobs",
            json={
                "source": put_video(s3_endpoint, s3_bucket, _write(tmp_path / "after.mp4", good)),
                "queries": [QUERY],
                "sampling": SAMPLING,
            },  # fmt: skip
        )
        assert after.status_code == 202, after.text
        final = wait_terminal(client, [after.json()["id"]], timeout_s=90)
    http.server.shutdown()

    problems = []
    for name, job_id in accepted.items():
        view = views.get(job_id, {})
        state = view.get("state")
        outcomes[name] = state or "not-terminal"
        if state == "failed":
            error = view["error"]
            if error.get("stage") not in STAGES or not error.get("detail") or not error.get("type"):
                problems.append((name, "error without stage/detail/type", error))
            if s3_endpoint in str(error):  # the client never sees the storage endpoint or a signed URL
                problems.append((name, "error shows the internal storage URL", error))
    for name, (_source, allowed) in sources.items():
        if outcomes[name] not in allowed:
            problems.append((name, outcomes[name], views.get(accepted.get(name, ""), {}).get("error")))
    expected_types = {
        "audio-only-aac": "no-video-stream",
        "http-redirect-to-metadata.mp4": "address-not-allowed",  # the redirect was re-checked
        "http-missing.mp4": "not-found",
    }
    for name, slug in expected_types.items():
        error = views[accepted[name]]["error"]
        if not error["type"].endswith(f"/{slug}") or error["retryable"]:
            problems.append((name, f"expected a final {slug}", error))
    assert problems == [], (problems, service.worker_log()[-3000:])
    assert len(sources) >= 25
    assert final[after.json()["id"]]["state"] == "succeeded"
    assert service.worker.poll() is None and service.worker.pid == worker_pid


def _raw_get(port: int, target: str, headers: dict[str, str]) -> bytes | None:
    """Send one GET with a huge request target over a raw socket; the status line, or None if closed."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            answer = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return None
    return answer.split(b"\r\n", 1)[0] if answer else None


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_oversized_requests_on_the_live_server(service_and_key: tuple[Service, dict[str, str]]) -> None:
    """Cases that need a real HTTP server in front (uvicorn/h11 limits), each a 4xx, never a 5xx."""
    service, headers = service_and_key
    with httpx.Client(base_url=service.url, headers=headers, timeout=30) as client:
        one_mb_query = {"source": "http://127.0.0.1:9/v.mp4", "queries": ["x" * 1_000_000]}
        answer = client.post("/v1/jobs", json=one_mb_query)
        assert answer.status_code in (413, 422), answer.status_code
        assert _outcome(answer) == "rejected"
        status_line = _raw_get(service.port, "/v1/jobs?state=" + "x" * 1_000_000, headers)
        assert status_line is None or b" 4" in status_line, status_line  # 4xx, or h11 hangs up: never 5xx
        answer = client.post(
            "/v1/jobs", json={"source": "http://127.0.0.1:9/v.mp4", "queries": ["q"] * 10_000}
        )
        assert answer.status_code == 422 and _outcome(answer) == "rejected"
        answer = client.post(
            "/v1/jobs", content=b"\xff\xfe\xfd", headers={**headers, "Content-Type": "application/json"}
        )
        assert answer.status_code == 400 and _outcome(answer) == "rejected"
        # The service still answers normally afterwards.
        assert client.get("/readyz").status_code == 200


def test_absurd_dimensions_header_over_http_is_not_retryable(tmp_path: Path) -> None:
    from model_runtime.video import VideoError, probe_video

    http = ScriptedHTTP(
        {
            "/huge.y4m": (
                200,
                "video/x-yuv4mpeg",
                b"YUV4MPEG2 W20000 H20000 F25:1 Ip C420jpeg\nFRAME\n" + b"\0" * 9000,
            )
        }
    )
    try:
        with pytest.raises(VideoError) as caught:
            probe_video(http.url("/huge.y4m"), timeout_s=10)
    finally:
        http.server.shutdown()
    assert caught.value.code != "source-unreachable", str(caught.value)
