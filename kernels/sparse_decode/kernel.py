"""Triton sparse decode: one query token per sequence, top-k positions, paged KV cache.

Memory-bound (each selected key and value row is read once, 2 * K * Hkv * D elements per
sequence), so the K positions of a sequence are split across programs (split-K, "flash
decoding"): program (b, kv head, split) gathers its slice of positions through the page table,
keeps an online softmax for the G query heads of that kv head, and writes a partial (max, sum,
weighted values); a second small kernel merges the splits exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.sparse_decode.reference import check_sparse_decode_args

_LOG2E = 1.4426950408889634


@triton.jit
def _gather_rows(cache_ptr, page, row_in_page, stride_page, stride_slot, head_offset, offs_d, mask):
    """[keys, D]: one kv head's rows of a paged cache at (page, row in page) per key."""
    offsets = page[:, None] * stride_page + row_in_page[:, None] * stride_slot + head_offset + offs_d[None, :]
    return tl.load(cache_ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _sparse_decode_split_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    table_ptr,
    idx_ptr,
    part_acc_ptr,
    part_max_ptr,
    part_sum_ptr,
    K,
    keys_per_split,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_kp,
    stride_ks,
    stride_kh,
    stride_vp,
    stride_vs,
    stride_vh,
    stride_table,
    stride_idx,
    n_splits,
    PAGE: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < G
    head = kv_head * G + rows
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(
        q_ptr + seq * stride_qb + head[:, None] * stride_qh + offs_d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )  # [BLOCK_M, BLOCK_D]
    row_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    first_key = split * keys_per_split
    last_key = tl.minimum(first_key + keys_per_split, K)
    for first in range(first_key, last_key, BLOCK_N):
        offs_n = first + tl.arange(0, BLOCK_N)
        n_ok = offs_n < last_key
        position = tl.load(idx_ptr + seq * stride_idx + offs_n, mask=n_ok, other=-1)
        picked = position >= 0
        position = tl.maximum(position, 0)
        page = tl.load(table_ptr + seq * stride_table + position // PAGE, mask=picked, other=0).to(tl.int64)
        row_in_page = position % PAGE
        gather_ok = picked[:, None] & d_ok[None, :]
        # Keys gathered like values (one 2*D-byte row per key) and transposed in registers: 6-10 %
        # faster than a [D, keys] gather on the H200 in four same-run tile pairs (session 12).
        k_tile = tl.trans(
            _gather_rows(
                k_ptr, page, row_in_page, stride_kp, stride_ks, kv_head * stride_kh, offs_d, gather_ok
            )
        )
        v_tile = _gather_rows(
            v_ptr, page, row_in_page, stride_vp, stride_vs, kv_head * stride_vh, offs_d, gather_ok
        )
        logits = tl.dot(q, k_tile, input_precision=PRECISION) * qk_scale
        logits = tl.where(picked[None, :], logits, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(logits, 1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        probs = tl.exp2(logits - shift[:, None])
        rescale = tl.exp2(row_max - shift)
        row_sum = row_sum * rescale + tl.sum(probs, 1)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v_tile.dtype), v_tile, input_precision=PRECISION)
        row_max = new_max
    part = (seq * (G * tl.num_programs(1)) + head) * n_splits + split  # [BLOCK_M]
    tl.store(part_max_ptr + part, row_max, mask=row_ok)
    tl.store(part_sum_ptr + part, row_sum, mask=row_ok)
    tl.store(part_acc_ptr + part[:, None] * D + offs_d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _sparse_decode_merge_kernel(
    part_acc_ptr,
    part_max_ptr,
    part_sum_ptr,
    o_ptr,
    n_splits,
    stride_ob,
    stride_oh,
    HQ: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SPLIT: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, BLOCK_SPLIT)
    split_ok = splits < n_splits
    offs_d = tl.arange(0, BLOCK_D)
    part = (seq * HQ + head) * n_splits + splits
    part_max = tl.load(part_max_ptr + part, mask=split_ok, other=float("-inf"))
    part_sum = tl.load(part_sum_ptr + part, mask=split_ok, other=0.0)
    part_acc = tl.load(
        part_acc_ptr + part[:, None] * D + offs_d[None, :],
        mask=split_ok[:, None] & (offs_d[None, :] < D),
        other=0.0,
    )  # [BLOCK_SPLIT, BLOCK_D]
    top = tl.max(part_max, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    weight = tl.exp2(part_max - top)  # splits that saw nothing weigh 0
    total = tl.sum(part_sum * weight, 0)
    out = tl.sum(part_acc * weight[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(
        o_ptr + seq * stride_ob + head * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty), mask=offs_d < D
    )


def sparse_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    idx: torch.Tensor,
    scale: float,
    *,
    block_n: int = 64,
    n_splits: int | None = None,
    num_warps: int = 4,
    num_stages: int = 3,
) -> torch.Tensor:
    """One decode step of top-k sparse attention for a batch of sequences.

    Args:
        q: [B, Hq, D] fp32/fp16/bf16, the new token of each sequence.
        k_cache, v_cache: [P, page_size, Hkv, D] paged caches (same dtype as q).
        page_table: int32/int64 [B, max_pages]; position p of sequence b lives at
            (page_table[b, p // page_size], p % page_size).
        idx: int32/int64 [B, K] selected positions per sequence (-1 entries ignored; positions
            must be covered by the page table). Duplicates must not occur (top-k output never
            has them); use the reference for arbitrary index lists.
        scale: softmax scale.
        block_n: keys per tile; n_splits: programs per (sequence, kv head) (default: enough to
            fill the GPU, at most one per tile); num_warps, num_stages: the split kernel's launch
            configuration (defaults: the best of `kernels.sparse_decode.bench`'s sweep on the H200,
            session 12, which kept the earlier 64 keys, 4 warps, 3 stages).

    Returns:
        [B, Hq, D] in q's dtype; a sequence with no valid index gets zeros.
    """
    check_sparse_decode_args(q, k_cache, v_cache, page_table, idx)
    batch, q_heads, dim = q.shape
    _, page_size, kv_heads, _ = k_cache.shape
    topk = idx.shape[1]
    group = q_heads // kv_heads
    out = torch.empty_like(q)
    if batch == 0:
        return out
    q = q.contiguous()
    idx = idx.contiguous()
    page_table = page_table.contiguous()
    tiles = triton.cdiv(max(topk, 1), block_n)
    if n_splits is None:
        n_splits = max(1, min(tiles, triton.cdiv(264, batch * kv_heads)))
    n_splits = max(1, min(n_splits, tiles))
    keys_per_split = triton.cdiv(tiles, n_splits) * block_n
    n_splits = triton.cdiv(max(topk, 1), keys_per_split)
    part_acc = torch.empty(batch * q_heads * n_splits, dim, dtype=torch.float32, device=q.device)
    part_max = torch.empty(batch * q_heads * n_splits, dtype=torch.float32, device=q.device)
    part_sum = torch.empty_like(part_max)
    block_d = max(16, triton.next_power_of_2(dim))
    precision = "tf32x3" if q.dtype == torch.float32 else "tf32"
    _sparse_decode_split_kernel[(batch, kv_heads, n_splits)](
        q, k_cache, v_cache, page_table, idx, part_acc, part_max, part_sum,
        topk, keys_per_split, scale * _LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), page_table.stride(0), idx.stride(0),
        n_splits, PAGE=page_size, G=group, D=dim, BLOCK_D=block_d,
        BLOCK_M=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, PRECISION=precision,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    _sparse_decode_merge_kernel[(batch, q_heads)](
        part_acc, part_max, part_sum, out, n_splits, out.stride(0), out.stride(1),
        HQ=q_heads, D=dim, BLOCK_D=block_d, BLOCK_SPLIT=max(2, triton.next_power_of_2(n_splits)),
    )  # fmt: skip
    return out
