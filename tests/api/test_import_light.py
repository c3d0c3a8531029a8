"""`api/` and `core/` never import torch, the model runtime or the kernels (DESIGN §1)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_api_leaves_torch_out() -> None:
    # A fresh interpreter: this test process may already hold torch from other tests.
    code = (
        "import sys, api.main, api.submission, core.storage, core.security, core.queue, core.webhooks\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'model_runtime', 'kernels', 'av'))\n"
        "print(','.join(heavy))\n"
    )
    answer = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert answer.stdout.strip() == "", f"api import pulled in: {answer.stdout.strip()}"
