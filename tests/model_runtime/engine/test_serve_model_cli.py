"""`timemark serve-model` starts a real server process that answers health, model and chat requests."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests

from .conftest import _free_port


def test_serve_model_command_serves_the_checkpoint(tiny_checkpoint: Path) -> None:
    port = _free_port()
    command = [
        sys.executable, "-c", "from timemark.cli import main; main()", "serve-model",
        "--checkpoint", str(tiny_checkpoint), "--port", str(port), "--model-name", "cli-tiny",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else "server exited"
            try:
                if requests.get(f"{base}/healthz", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "serve-model did not come up"
            time.sleep(0.2)
        assert requests.get(f"{base}/v1/models", timeout=5).json()["data"][0]["id"] == "cli-tiny"
        body = {"model": "cli-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        reply = requests.post(f"{base}/v1/chat/completions", json=body, timeout=30)
        assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] > 0
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_serve_model_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-c",
        "from timemark.cli import main; main()",
        "serve-model",
        "--checkpoint",
        str(tmp_path / "nope"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--checkpoint" in result.stdout + result.stderr  # a usage error


def test_serve_model_refuses_what_the_memory_planner_says_cannot_fit(tiny_checkpoint: Path) -> None:
    command = [
        sys.executable, "-c", "from timemark.cli import main; main()", "serve-model",
        "--checkpoint", str(tiny_checkpoint), "--gpu-memory-gib", "0.5",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "does not fit" in result.stderr and "reserve 3.0" in result.stderr
