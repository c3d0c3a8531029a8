"""Fixtures of the native-runtime tests: one tiny random checkpoint per session, a tiny model, a video.

The checkpoint is written by the real `init_checkpoint` (official names, tokenizer, preprocessor
config), so every test exercises the same files a user gets from `timemark model init`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime.checkpoint import init_checkpoint
from model_runtime.engine.base import VideoInput


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_checkpoint(tmp_path_factory.mktemp("tiny_keye"), size="tiny", seed=0)


def _make_video(n_frames: int = 4, height: int = 56, width: int = 84, seed: int = 0) -> VideoInput:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n_frames, height, width, 3), dtype=np.uint8)
    return VideoInput(frames=frames, timestamps=[0.5 * i for i in range(n_frames)])


@pytest.fixture
def make_video() -> Callable[..., VideoInput]:
    """Random frames (n_frames, height, width, seed) with timestamps 0.0, 0.5, 1.0, …"""
    return _make_video


@pytest.fixture
def video() -> VideoInput:
    return _make_video()
