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
from model_runtime.model import KVCache, Segment
from model_runtime.vlm import KeyeVL


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


def _decode_caches(model: KeyeVL, device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[KVCache]:
    """Two branches carved from one video prefix (one storage, past the tiny top-k of 48: the indexer really
    selects), then a short sequence with a storage of its own (below the top-k: every key selected). Indexer
    keys in e4m3 when the model rounds them so (`index_fp8`)."""
    text, fp8 = model.config.text, model.model.index_fp8

    def prefill(cache: KVCache, n: int, seed: int) -> None:
        ids = torch.randint(0, 400, (n,), generator=torch.Generator().manual_seed(seed)).to(device)
        positions = torch.arange(cache.length, cache.length + n, device=device).expand(3, -1)
        model.model(model.model.embed_tokens(ids), positions, [Segment(n, cache)])

    prefix = KVCache(text, capacity=90, device=device, dtype=dtype, spare=2 * 24, index_fp8=fp8)
    prefill(prefix, 90, 1)
    branches = [prefix.branch(extra_capacity=24) for _ in range(2)]
    for i, branch in enumerate(branches):
        prefill(branch, 4 + i, 2 + i)
    alone = KVCache(text, capacity=40, device=device, dtype=dtype, index_fp8=fp8)
    prefill(alone, 30, 9)
    return [*branches, alone]


@pytest.fixture
def decode_caches() -> Callable[..., list[KVCache]]:
    """(model, device, dtype) → the caches the decode tests step through (test_decode.py, test_cuda.py)."""
    return _decode_caches
