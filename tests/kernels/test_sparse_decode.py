"""Sparse decode over a paged KV cache (`sparse_decode`) against the PyTorch oracle.

Pages of each sequence are scattered through the cache in random order so a wrong page-table
lookup cannot pass. Tolerances as for prefill: fp32 1e-5, fp16 2e-3, bf16 1e-2 relative.
"""

from __future__ import annotations

import pytest
import torch

from kernels import KernelInputError, sparse_decode, sparse_decode_ref
from kernels.testing import assert_close

GPU = pytest.mark.gpu
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_case(batch, length, q_heads, kv_heads, dim, topk, page, dtype, generator):
    pages_per_seq = -(-length // page)
    n_pages = batch * pages_per_seq + 3  # a few pages nobody owns
    k_cache = torch.randn(n_pages, page, kv_heads, dim, generator=generator).to(dtype)
    v_cache = torch.randn(n_pages, page, kv_heads, dim, generator=generator).to(dtype)
    table = torch.randperm(n_pages, generator=generator)[: batch * pages_per_seq]
    table = table.view(batch, pages_per_seq).to(torch.int32)
    q = torch.randn(batch, q_heads, dim, generator=generator).to(dtype)
    rows = []
    for _ in range(batch):
        chosen = torch.randperm(length, generator=generator)[: min(topk, length)]
        rows.append(torch.cat([chosen, torch.full((max(0, topk - length),), -1)]))
    idx = torch.stack(rows).to(torch.int32)
    if batch > 1:
        idx[1] = -1  # a sequence with nothing selected must give zeros
    return q, k_cache, v_cache, table, idx


CASES = [
    # (batch, length, q heads, kv heads, head dim, topk, page size, dtype)
    pytest.param(1, 1, 2, 1, 32, 4, 4, torch.float32, id="B1-L1-H2-KV1-K4"),
    pytest.param(3, 100, 12, 4, 64, 40, 16, torch.float16, id="B3-L100-H12-KV4-K40-fp16"),
    pytest.param(2, 70, 6, 3, 24, 200, 8, torch.float32, id="B2-L70-H6-KV3-D24-K200"),
    pytest.param(5, 2049, 32, 4, 128, 2048, 64, torch.bfloat16, id="B5-L2049-H32-KV4-K2048", marks=GPU),
    pytest.param(4, 5000, 32, 4, 128, 2048, 64, torch.bfloat16, id="B4-L5000-H32-KV4-K2048", marks=GPU),
]


@pytest.mark.parametrize(("batch", "length", "q_heads", "kv_heads", "dim", "topk", "page", "dtype"), CASES)
def test_sparse_decode_matches_reference(batch, length, q_heads, kv_heads, dim, topk, page, dtype, device):
    generator = torch.Generator().manual_seed(5)
    tensors = make_case(batch, length, q_heads, kv_heads, dim, topk, page, dtype, generator)
    q, k_cache, v_cache, table, idx = (t.to(device) for t in tensors)
    scale = dim**-0.5
    out = sparse_decode(q, k_cache, v_cache, table, idx, scale)
    ref = sparse_decode_ref(q, k_cache, v_cache, table, idx, scale)
    assert not out.isnan().any(), "NaN in the output"
    assert_close(out, ref, rel_tol=REL_TOL[dtype], what="sparse_decode")
    if batch > 1:
        assert (out[1] == 0).all(), "a sequence with no selected position must be zero"
    # The split count changes only the order of the exact merge.
    one_split = sparse_decode(q, k_cache, v_cache, table, idx, scale, n_splits=1)
    assert_close(one_split, ref, rel_tol=REL_TOL[dtype], what="sparse_decode n_splits=1")
    # Another tile width (the default is 64) walks the same keys in a different order.
    narrow = sparse_decode(q, k_cache, v_cache, table, idx, scale, block_n=32)
    assert_close(narrow, ref, rel_tol=REL_TOL[dtype], what="sparse_decode block_n=32")


def test_sparse_decode_rejects_bad_input(device: str) -> None:
    q = torch.randn(2, 4, 16, device=device)
    cache = torch.randn(3, 4, 2, 16, device=device)
    table = torch.zeros(2, 3, dtype=torch.int32, device=device)
    idx = torch.zeros(2, 5, dtype=torch.int32, device=device)
    with pytest.raises(KernelInputError, match="4 dims"):
        sparse_decode(q, cache[0], cache[0], table, idx, 0.25)
    with pytest.raises(KernelInputError, match="one page-table/idx row"):
        sparse_decode(q, cache, cache, table[:1], idx, 0.25)
    with pytest.raises(KernelInputError, match="share one dtype"):
        sparse_decode(q, cache.half(), cache.half(), table, idx, 0.25)
