"""Run the kernel tests under Triton's CPU interpreter when no CUDA GPU is present.

TRITON_INTERPRET must be set before any `@triton.jit` function is defined, i.e. before
`kernels` is imported; conftest modules load before the test modules, so this is the place.
With a GPU the same tests run compiled on "cuda", plus the larger `gpu`-marked cases.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

# Kernel tests are tiny; one thread keeps the shared CPU responsive and results reproducible.
torch.set_num_threads(1)


@pytest.fixture
def device() -> str:
    return "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    ours = [item for item in items if here in Path(item.path).parents]
    # A division by zero that the interpreter only warns about is a compile error on the GPU (session 22: a
    # constant-folded `tl.cdiv(S, 0)` that only a one-key launch reached), so it fails the test here.
    for item in ours:
        item.add_marker(pytest.mark.filterwarnings("error:divide by zero:RuntimeWarning"))
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in ours:
        if "gpu" in item.keywords:
            item.add_marker(skip)
