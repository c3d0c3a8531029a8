"""The batched decode indexer (`indexer_decode_topk`) against its per-sequence PyTorch oracle."""

from __future__ import annotations

import pytest
import torch

from kernels import KernelInputError, indexer_decode_topk, indexer_decode_topk_ref
from kernels.indexer import indexer_decode_scores, indexer_decode_scores_ref
from kernels.testing import assert_close, assert_same_selection

GPU = pytest.mark.gpu
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}


def make_case(lengths: list[int], heads: int, dim: int, page: int, dtype: torch.dtype, seed: int):
    """Paged index keys shuffled across pages (one spare page per sequence), one query per sequence."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    pages_per_seq = -(-max(lengths) // page) + 1
    k_cache = torch.randn(batch * pages_per_seq, page, dim, generator=generator).to(dtype)  # [P, page, D]
    table = (
        torch.randperm(batch * pages_per_seq, generator=generator).view(batch, pages_per_seq).to(torch.int32)
    )
    q = torch.randn(batch, heads, dim, generator=generator).to(dtype)  # [B, H, D]
    w = torch.randn(batch, heads, generator=generator)  # [B, H], signed like the real weights
    return q, w, k_cache, table, torch.tensor(lengths, dtype=torch.int32)


CASES = [
    # (lengths, heads, dim, page, topk, dtype, top-k method)
    pytest.param([1], 2, 16, 16, 4, torch.float32, "auto", id="B1-L1-auto-cooperative"),
    pytest.param([37, 1, 100, 24, 0], 3, 32, 16, 24, torch.float32, "auto", id="B5-K24-auto-cooperative"),
    pytest.param([37, 1, 100] * 12, 3, 32, 16, 24, torch.float32, "auto", id="B36-K24-auto-torch"),
    pytest.param([300, 129, 70], 5, 32, 8, 40, torch.float16, "minmax", id="B3-K40-fp16-minmax"),
    pytest.param([200, 65], 4, 16, 32, 16, torch.float32, "compact", id="B2-K16-compact"),
    pytest.param(
        [5000, 2049, 2047, 131], 16, 64, 64, 2048, torch.bfloat16, "auto", id="B4-K2048-bf16", marks=GPU
    ),
    pytest.param(
        [4096] * 70, 16, 64, 64, 2048, torch.bfloat16, "auto", id="B70-K2048-auto-minmax", marks=GPU
    ),
]


@pytest.mark.parametrize(("lengths", "heads", "dim", "page", "topk", "dtype", "method"), CASES)
def test_indexer_decode_topk_matches_reference(
    lengths, heads, dim, page, topk, dtype, method, device
) -> None:
    q, w, k_cache, table, lens = (t.to(device) for t in make_case(lengths, heads, dim, page, dtype, seed=4))
    picked = indexer_decode_topk(q, w, k_cache, table, lens, topk, topk_method=method)
    expected = indexer_decode_topk_ref(q, w, k_cache, table, lens, topk)
    scores = indexer_decode_scores_ref(q, w, k_cache, table, lens)
    assert picked.dtype == torch.int32 and picked.shape == (len(lengths), topk)
    assert_same_selection(picked, expected, scores, lens, score_tol=TOL[dtype], what="indexer_decode_topk")


def test_indexer_decode_scores_match_reference(device: str) -> None:
    q, w, k_cache, table, lens = (
        t.to(device) for t in make_case([90, 3, 200], 3, 32, 16, torch.float32, seed=8)
    )
    out = indexer_decode_scores(q, w, k_cache, table, lens)
    ref = indexer_decode_scores_ref(q, w, k_cache, table, lens)
    future = torch.isinf(ref)
    assert torch.equal(torch.isneginf(out), future), (
        "exactly the positions at or past each length must be -inf"
    )
    assert_close(out[~future], ref[~future], rel_tol=TOL[torch.float32], what="indexer_decode_scores")


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=GPU)])
def test_e4m3_keys_score_as_the_values_they_hold(dtype: torch.dtype, device: str) -> None:
    """Keys cached as e4m3 + a power-of-two scale each (the runtime's `index_fp8` cache) give the scores and
    the selection of their exact values (key = e4m3 value x scale)."""
    q, w, k_cache, table, lens = (t.to(device) for t in make_case([90, 3, 200], 3, 32, 16, dtype, seed=6))
    k8 = k_cache.to(torch.float8_e4m3fn)
    scale = 2.0 ** torch.randint(-4, 4, k8.shape[:2], generator=torch.Generator().manual_seed(1)).float()
    scale = scale.to(device)
    values = (k8.float() * scale[..., None]).to(dtype)
    out = indexer_decode_scores(q, w, k8, table, lens, k_scale=scale)
    ref = indexer_decode_scores_ref(q, w, values, table, lens)
    future = torch.isinf(ref)
    assert torch.equal(torch.isneginf(out), future)
    assert_close(out[~future], ref[~future], rel_tol=TOL[dtype], what="e4m3 keys")
    torch.testing.assert_close(indexer_decode_scores_ref(q, w, k8, table, lens, k_scale=scale), ref)
    picked = indexer_decode_topk(q, w, k8, table, lens, 24, k_scale=scale)
    expected = indexer_decode_topk_ref(q, w, values, table, lens, 24)
    assert_same_selection(picked, expected, ref, lens, score_tol=TOL[dtype], what="e4m3 top-k")
    with pytest.raises(KernelInputError, match="k_scale must be"):
        indexer_decode_topk(q, w, k8, table, lens, 24, k_scale=scale[:, :1])
    with pytest.raises(KernelInputError, match="must match q dtype"):
        indexer_decode_topk(q, w, k8, table, lens, 24)
    with pytest.raises(KernelInputError, match="must be e4m3"):
        indexer_decode_topk(q, w, k_cache, table, lens, 24, k_scale=scale)


def test_lengths_past_the_page_table_are_clamped(device: str) -> None:
    """A length beyond the table's capacity reads no page it does not have: it sees the whole table."""
    q, w, k_cache, table, _ = (t.to(device) for t in make_case([40, 40], 2, 16, 16, torch.float32, seed=2))
    capacity = table.shape[1] * k_cache.shape[1]
    too_long = torch.tensor([capacity + 500, capacity], dtype=torch.int32, device=device)
    picked = indexer_decode_topk(q, w, k_cache, table, too_long, 8)
    expected = indexer_decode_topk_ref(q, w, k_cache, table, too_long, 8)
    scores = indexer_decode_scores_ref(q, w, k_cache, table, too_long)
    assert_same_selection(
        picked, expected, scores, too_long.clamp(max=capacity), score_tol=1e-5, what="clamped"
    )


def test_indexer_decode_topk_rejects_bad_input(device: str) -> None:
    q, w, k_cache, table, lens = (t.to(device) for t in make_case([10, 20], 2, 16, 8, torch.float32, seed=0))
    with pytest.raises(KernelInputError, match="w must be"):
        indexer_decode_topk(q, w[:, :1], k_cache, table, lens, 4)
    with pytest.raises(KernelInputError, match="head dim"):
        indexer_decode_topk(q, w, k_cache[..., :8], table, lens, 4)
    with pytest.raises(KernelInputError, match="one row per sequence"):
        indexer_decode_topk(q, w, k_cache, table[:1], lens, 4)
    with pytest.raises(KernelInputError, match="one entry per sequence"):
        indexer_decode_topk(q, w, k_cache, table, lens[:1], 4)
    with pytest.raises(KernelInputError, match="dtype"):
        indexer_decode_topk(q, w, k_cache.half(), table, lens, 4)
    with pytest.raises(KernelInputError, match="lengths has dtype"):
        indexer_decode_topk(q, w, k_cache, table, lens.float(), 4)
    with pytest.raises(KernelInputError, match="topk"):
        indexer_decode_topk(q, w, k_cache, table, lens, 0)
    with pytest.raises(KernelInputError, match="topk_method"):
        indexer_decode_topk(q, w, k_cache, table, lens, 4, topk_method="heap")
