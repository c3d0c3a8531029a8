"""Sparse-attention prefill (`sparse_attention`) and its block union against the PyTorch oracle.

Tolerances (relative Frobenius error vs the fp32 oracle on the same rounded inputs): fp32 1e-5,
fp16 2e-3, bf16 1e-2 (P is rounded to the input dtype before the P.V product, as in flash
attention). The launcher writes into a NaN-filled buffer, so an unwritten element fails.
"""

from __future__ import annotations

import pytest
import torch

from kernels import KernelInputError, sparse_attention, sparse_attention_ref
from kernels.sparse_attention import build_block_union
from kernels.sparse_attention import union as union_module
from kernels.sparse_attention.kernel import default_block_q, launch_sparse_attention
from kernels.sparse_attention.union import BlockUnion, build_block_union_torch
from kernels.testing import assert_close

GPU = pytest.mark.gpu
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def random_selection(tokens: int, keys: int, topk: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform random causal picks (the union worst case), -1 padded, with duplicates sprinkled in."""
    idx = torch.randint(-1, keys, (tokens, topk), generator=generator, dtype=torch.int32)
    if tokens > 3 and topk > 3:
        idx[3, :3] = idx[3, 3]  # duplicates must count once
    idx[0] = -1  # a query with nothing selected must give zeros, not NaN
    return idx


def structured_selection(tokens: int, keys: int, topk: int) -> torch.Tensor:
    """Attention-sink + local-window picks (what trained indexers mostly produce): small unions."""
    position = torch.arange(tokens)[:, None] + (keys - tokens)  # absolute query positions
    offsets = torch.arange(topk)[None, :]
    sinks = 4
    local = position - (offsets - sinks)  # most recent keys, newest first
    idx = torch.where(offsets < sinks, offsets, local)
    return torch.where((idx >= 0) & (idx <= position), idx, -1).to(torch.int32)


CASES = [
    # (tokens, keys, q heads, kv heads, head dim, topk, dtype, selection)
    pytest.param(1, 1, 2, 1, 32, 4, torch.float32, "random", id="T1-S1-H2-KV1-D32-K4"),
    pytest.param(63, 80, 12, 4, 64, 16, torch.float16, "random", id="T63-S80-H12-KV4-D64-K16-fp16"),
    pytest.param(40, 200, 6, 3, 24, 33, torch.float32, "random", id="T40-S200-H6-KV3-D24-K33"),
    pytest.param(33, 50, 5, 1, 16, 20, torch.float32, "structured", id="T33-S50-H5-KV1-D16-K20-local"),
    pytest.param(40, 64, 2, 2, 16, 8, torch.float32, "random", id="T40-S64-H2-KV2-D16-K8-mha"),
    pytest.param(
        2049, 2049, 32, 4, 128, 2048, torch.bfloat16, "structured", id="T2049-H32-KV4-K2048-local", marks=GPU
    ),  # fmt: skip
    pytest.param(
        300, 5000, 32, 4, 128, 2048, torch.bfloat16, "random", id="T300-S5000-H32-KV4-K2048", marks=GPU
    ),  # fmt: skip
]


@pytest.mark.parametrize(("tokens", "keys", "q_heads", "kv_heads", "dim", "topk", "dtype", "kind"), CASES)
def test_sparse_attention_matches_reference(tokens, keys, q_heads, kv_heads, dim, topk, dtype, kind, device):
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(tokens, q_heads, dim, generator=generator).to(dtype).to(device)
    k = torch.randn(keys, kv_heads, dim, generator=generator).to(dtype).to(device)
    v = torch.randn(keys, kv_heads, dim, generator=generator).to(dtype).to(device)
    if kind == "random":
        idx = random_selection(tokens, keys, topk, generator)
    else:
        idx = structured_selection(tokens, keys, topk)
    idx = idx.to(device)
    scale = dim**-0.5
    # Poison the output buffer so a row the kernel forgets to write fails the comparison.
    out = torch.full_like(q, float("nan"))
    block_q = default_block_q(q_heads // kv_heads)  # 32 for MHA (G = 1): one bit per query of an owner word
    union = build_block_union(idx, block_q=block_q)
    launch_sparse_attention(q, k, v, union, block_q, scale, out)
    ref = sparse_attention_ref(q, k, v, idx, scale)
    assert not out.isnan().any(), "unwritten or NaN output"
    assert_close(out, ref, rel_tol=REL_TOL[dtype], what="sparse_attention")
    assert torch.equal(sparse_attention(q, k, v, idx, scale), out), "public entry must equal the launcher"
    empty_rows = (idx < 0).all(dim=1)
    assert (out[empty_rows] == 0).all(), "queries with no selected key must be zero"


@pytest.mark.parametrize(
    "builder", [build_block_union, build_block_union_torch], ids=["triton-union", "torch-union"]
)
def test_sparse_attention_softmax_survives_growing_logits(builder, device: str) -> None:
    """Keys whose logits grow along the union walk move each row's running max by large steps many times,
    and some rows see their first key late; the PyTorch union (exactly U wide, not a whole number of key tiles)
    makes the launcher pad it."""
    generator = torch.Generator().manual_seed(11)
    tokens, keys, q_heads, kv_heads, dim, topk = 20, 150, 8, 2, 16, 40
    q = torch.randn(tokens, q_heads, dim, generator=generator)
    growth = (1.0 + torch.arange(keys) / 4.0)[:, None, None]  # logits up to ~38x larger at the last keys
    k = torch.randn(keys, kv_heads, dim, generator=generator) * growth
    v = torch.randn(keys, kv_heads, dim, generator=generator)
    idx = random_selection(tokens, keys, topk, generator)
    idx[5, 1:] = -1  # one pick only
    q, k, v, idx = q.to(device), k.to(device), v.to(device), idx.to(device)
    block_q = default_block_q(q_heads // kv_heads)
    union = builder(idx, block_q)
    out = torch.full_like(q, float("nan"))
    launch_sparse_attention(q, k, v, union, block_q, dim**-0.5, out)
    assert not out.isnan().any(), "unwritten or NaN output"
    assert_close(
        out, sparse_attention_ref(q, k, v, idx, dim**-0.5), rel_tol=REL_TOL[torch.float32], what="growing"
    )


def test_block_union_lists_each_key_once_and_marks_owners(device: str) -> None:
    idx = torch.tensor([[3, 1, -1], [1, 7, 7], [-1, -1, -1], [2, 2, 9]], dtype=torch.int32, device=device)
    union = build_block_union(idx, block_q=2)
    assert union.counts.tolist() == [3, 2]
    assert union.keys[0, :3].tolist() == [1, 3, 7]
    assert union.keys[1, :2].tolist() == [2, 9]
    # owners[b, u]: bit j set when query j of block b picked keys[b, u]
    assert union.owners[0, :3].tolist() == [0b11, 0b01, 0b10]  # key 1: both; 3: query 0; 7: query 1
    assert union.owners[1, :2].tolist() == [0b10, 0b10]  # query 2 picked nothing; query 3 picked 2 and 9


def owners(union: BlockUnion) -> torch.Tensor:
    """int32 [n_blocks, U]: the owner words of the union's valid width (padding slots cut off)."""
    return union.owners[:, : union.width].cpu()


UNION_CASES = [
    # (tokens, keys, topk, block_q, selection)
    pytest.param(1, 1, 4, 8, "random", id="T1-K4-q8"),
    pytest.param(63, 80, 16, 8, "random", id="T63-K16-q8"),
    pytest.param(37, 100, 20, 3, "random", id="T37-K20-q3"),
    pytest.param(33, 50, 20, 5, "structured", id="T33-K20-q5-local"),
    # consecutive selections (newest first) across a dozen bitmap words: set bits ORs long runs per word
    pytest.param(40, 300, 64, 8, "structured", id="T40-S300-K64-q8-local"),
    pytest.param(2049, 2049, 2048, 8, "structured", id="T2049-K2048-q8-local", marks=GPU),
    pytest.param(70, 90, 24, 32, "random", id="T70-K24-q32"),
    pytest.param(300, 5000, 2048, 8, "random", id="T300-S5000-K2048-q8", marks=GPU),
    # 16 and 32 queries x top-2048: more pairs than the sort kernel holds; the bitmap kernels take them
    pytest.param(600, 5000, 2048, 16, "random", id="T600-S5000-K2048-q16", marks=GPU),
    pytest.param(300, 3000, 2048, 32, "structured", id="T300-K2048-q32-local", marks=GPU),
]


@pytest.mark.parametrize("method", ["bitmap", "sort"])
@pytest.mark.parametrize(("tokens", "keys", "topk", "block_q", "kind"), UNION_CASES)
def test_triton_block_union_equals_torch(tokens, keys, topk, block_q, kind, method, device) -> None:
    if method == "sort" and block_q * topk > 1 << 15:
        pytest.skip("the sort kernel holds a block's pairs in registers; PyTorch builds these unions")
    generator = torch.Generator().manual_seed(5)
    if kind == "random":
        idx = random_selection(tokens, keys, topk, generator)
    else:
        idx = structured_selection(tokens, keys, topk)
    fast = build_block_union(idx.to(device), block_q, method=method)
    oracle = build_block_union_torch(idx, block_q)
    assert fast.keys.shape[1] == block_q * topk  # the Triton builder ran (the PyTorch one is U wide)
    assert torch.equal(fast.counts.cpu(), oracle.counts), "union sizes differ"
    assert torch.equal(fast.keys[:, : oracle.width].cpu(), oracle.keys), "union keys differ"
    assert torch.equal(owners(fast), owners(oracle)), "owner bits differ"
    assert (owners(oracle) != 0).sum() == oracle.counts.sum(), "every union slot has an owner"


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_block_union_sets_the_same_bits_per_key_as_by_runs(kind: str, device, monkeypatch) -> None:
    """`SET_BITS_RUNS` = False (one atomic per key, the benchmark's A-B alternative) builds the same union."""
    generator = torch.Generator().manual_seed(9)
    idx = random_selection(50, 400, 40, generator) if kind == "random" else structured_selection(50, 400, 40)
    by_runs = build_block_union(idx.to(device), 8)
    monkeypatch.setattr(union_module, "SET_BITS_RUNS", False)
    per_key = build_block_union(idx.to(device), 8)
    assert torch.equal(per_key.counts, by_runs.counts) and torch.equal(per_key.keys, by_runs.keys)
    assert torch.equal(per_key.owners, by_runs.owners)
    oracle = build_block_union_torch(idx, 8)
    assert torch.equal(by_runs.keys[:, : oracle.width].cpu(), oracle.keys)


def test_block_union_falls_back_to_torch_where_the_kernel_cannot_go() -> None:
    empty = build_block_union(torch.empty(3, 0, dtype=torch.int32), block_q=2)  # no keys selected at all
    assert empty.counts.tolist() == [0, 0] and (empty.owners == 0).all()
    far = torch.tensor([[1 << 29, 5], [5, -1]], dtype=torch.int64)  # beyond 32-bit (key << 3 | query) codes
    union = build_block_union(far, block_q=8, method="sort")
    assert union.keys[0, :2].tolist() == [5, 1 << 29] and union.counts.tolist() == [2]
    with pytest.raises(ValueError, match="block_q"):
        build_block_union(far, block_q=33)
    with pytest.raises(ValueError, match="block_q"):
        build_block_union_torch(far, block_q=33)  # owner words hold 32 queries
    with pytest.raises(ValueError, match="method"):
        build_block_union(far, block_q=8, method="heap")
    beyond_int32 = torch.tensor([[1 << 31, 5]], dtype=torch.int64)  # would wrap to a negative key
    for build in (build_block_union, build_block_union_torch):
        with pytest.raises(ValueError, match="below 2\\*\\*31"):
            build(beyond_int32, block_q=8)


def test_sparse_attention_rejects_bad_input(device: str) -> None:
    q = torch.randn(4, 6, 16, device=device)
    k = torch.randn(8, 4, 16, device=device)
    idx = torch.zeros(4, 2, dtype=torch.int32, device=device)
    with pytest.raises(KernelInputError, match="multiple of Hkv"):
        sparse_attention(q, k, k, idx, 0.25)
    with pytest.raises(KernelInputError, match="one row per query"):
        sparse_attention(q, k[:, :2], k[:, :2], idx[:3], 0.25)
    with pytest.raises(KernelInputError, match="dtype"):
        sparse_attention(q, k[:, :2], k[:, :2], idx.float(), 0.25)
    with pytest.raises(KernelInputError, match="one shape"):
        sparse_attention(q, k[:, :2], k[:6, :2], idx, 0.25)
