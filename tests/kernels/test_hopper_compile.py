"""`python -m kernels.compile_check`: every Triton kernel compiles for sm_90 and fits its shared memory.

Runs in a subprocess without TRITON_INTERPRET (this suite's conftest sets it for the interpreter tests,
and interpreted kernels cannot be compiled). kernels/compile_check.py says what it catches.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

from kernels.compile_check import CASES

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason="this Triton has no offline CUDA compiler")
def test_every_kernel_compiles_for_hopper() -> None:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "kernels.compile_check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],  # the repository root, where `kernels` is importable
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == len(CASES) and all(line.endswith("ok") for line in lines), done.stdout
