"""`timemark serve-model` starts a real server process that answers health, model and chat requests."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .conftest import _free_port


def _start_server(checkpoint: Path) -> tuple[subprocess.Popen[str], str]:
    """`timemark serve-model` on a free port; another attempt if a concurrent process took the port first."""
    for _ in range(3):
        port = _free_port()
        command = [
            sys.executable, "-c", "from timemark.cli import main; main()", "serve-model",
            "--checkpoint", str(checkpoint), "--port", str(port), "--model-name", "cli-tiny", "--max-batch", "2",
            "--index-fp8", "--no-cuda-graphs",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/healthz", timeout=2).ok:
                    return process, base
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        output = process.stdout.read() if process.poll() is not None and process.stdout else ""
        process.kill()
        process.wait(timeout=20)
        if "address already in use" not in output.lower():
            raise AssertionError(f"serve-model did not come up: {output[-2000:]}")
    raise AssertionError("no free port after 3 attempts")


def _serve_model(*args: str) -> subprocess.CompletedProcess[str]:
    """`timemark serve-model ARGS` for a command that is expected to stop before serving."""
    command = [sys.executable, "-c", "from timemark.cli import main; main()", "serve-model", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_serve_model_command_serves_the_checkpoint(tiny_checkpoint: Path) -> None:
    process, base = _start_server(tiny_checkpoint)
    try:
        assert requests.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"] == "cli-tiny"
        body = {"model": "cli-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        reply = requests.post(f"{base}/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["prompt_tokens"] > 0
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_serve_model_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    result = _serve_model("--checkpoint", str(tmp_path / "nope"))
    assert result.returncode == 2 and "--checkpoint" in result.stdout + result.stderr  # a usage error


def test_serve_model_refuses_what_the_memory_planner_says_cannot_fit(tiny_checkpoint: Path) -> None:
    result = _serve_model("--checkpoint", str(tiny_checkpoint), "--gpu-memory-gib", "0.5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "does not fit" in result.stderr and "reserve 3.0" in result.stderr


def test_serve_model_refuses_an_unknown_quantisation(tiny_checkpoint: Path) -> None:
    result = _serve_model("--checkpoint", str(tiny_checkpoint), "--quantize", "int4")
    assert result.returncode == 2 and "--quantize must be none or fp8" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_serve_model_plans_memory_with_fp8_experts_when_asked(tiny_checkpoint: Path) -> None:
    result = _serve_model(
        "--checkpoint", str(tiny_checkpoint), "--gpu-memory-gib", "0.5", "--quantize", "fp8"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "fp8 weights" in result.stderr  # the refused plan is the FP8 one


def test_serve_model_plans_an_e4m3_indexer_cache_with_the_fp8_indexer(tiny_checkpoint: Path) -> None:
    indexer_gib = {}
    for extra in ((), ("--index-fp8",)):
        result = _serve_model(
            "--checkpoint",
            str(tiny_checkpoint),
            "--gpu-memory-gib",
            "0.5",
            "--context-tokens",
            "8000000",
            *extra,
        )
        assert result.returncode == 1, result.stdout + result.stderr
        indexer_gib[bool(extra)] = float(re.search(r"indexer ([0-9.]+)", result.stderr).group(1))
    assert indexer_gib[True] < indexer_gib[False]  # 68 against 128 bytes per token and layer


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--port", "70000"), ("--max-batch", "0"), ("--batch-window-ms", "-1"), ("--context-tokens", "0")],
)
def test_serve_model_refuses_out_of_range_numbers(tiny_checkpoint: Path, flag: str, value: str) -> None:
    result = _serve_model("--checkpoint", str(tiny_checkpoint), flag, value)
    assert (
        result.returncode == 2 and flag in result.stdout + result.stderr
    )  # a usage error, before any loading
