"""`timemark demo` from the outside: it must start the embedded service, run a job and exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_demo_runs_to_the_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMEMARK_")}
    env.update({"OMP_NUM_THREADS": "1", "COLUMNS": "120"})
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", "from timemark.cli import main; main()", "demo", "--out", str(out),
         "--data-dir", str(tmp_path / "service"), "--timeout-s", "300"],
        env=env,
        capture_output=True,
        text=True,
        timeout=380,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "segments found" in result.stdout
    assert "succeeded" in result.stdout
    with Image.open(out / "timeline.png") as picture:
        assert picture.format == "PNG" and picture.width == 1000
    assert (out / "demo.mp4").stat().st_size > 0
