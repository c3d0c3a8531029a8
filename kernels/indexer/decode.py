"""Batched decode indexer: one new query per sequence, every sequence's paged index keys in one launch.

`indexer_topk` serves one sequence per call. For a decode step of B sequences that is B launches, each a
scan too small to fill the GPU (one query against S keys: ~0.3 TB/s at 128K, kernels/NOTES.md). Here one
launch scores all of them: a program per (sequence, BLOCK_S positions) gathers the keys through the page
table as [BLOCK_S, D] rows, multiplies them by the sequence's [D, H] queries on the tensor cores (M = keys,
N = heads), applies ReLU and the head weights and sums over heads; positions at or past the sequence's
length get -inf. Then one top-k over the B score rows (`indexer_topk`'s "auto" choice).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._validate import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    require,
    require_dtype,
    require_rank,
    require_same_device,
)
from kernels.indexer.rows import auto_topk_method, contiguous_last, torch_topk_rows
from kernels.topk.kernel import TOPK_METHODS, launch_select_topk


@triton.jit
def _indexer_decode_kernel(
    q_ptr,
    w_ptr,
    k_ptr,
    scale_ptr,
    table_ptr,
    lengths_ptr,
    out_ptr,
    S,
    stride_qb,
    stride_qh,
    stride_wb,
    stride_kp,
    stride_ks,
    stride_sp,
    stride_ss,
    stride_tb,
    stride_ob,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    PAGE: tl.constexpr,
    PRECISION: tl.constexpr,
    SCALED: tl.constexpr,  # e4m3 keys with one power-of-two scale each
):
    seq = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    length = tl.minimum(tl.load(lengths_ptr + seq).to(tl.int32), S)  # never past the page table
    offs_s = tile * BLOCK_S + tl.arange(0, BLOCK_S)
    out_ptrs = out_ptr + seq * stride_ob + offs_s
    if tile * BLOCK_S < length:
        visible = offs_s < length
        offs_d = tl.arange(0, BLOCK_D)
        offs_h = tl.arange(0, BLOCK_H)
        if PAGE == 0:  # one contiguous [S, D] key buffer (`indexer_topk`'s single query)
            rows = k_ptr + offs_s[:, None].to(tl.int64) * stride_ks + offs_d[None, :]
            scale_at = offs_s.to(tl.int64) * stride_ss
        else:
            page = tl.load(table_ptr + seq * stride_tb + offs_s // PAGE, mask=visible, other=0).to(tl.int64)
            rows = k_ptr + page[:, None] * stride_kp + (offs_s % PAGE)[:, None] * stride_ks + offs_d[None, :]
            scale_at = page * stride_sp + (offs_s % PAGE) * stride_ss
        keys = tl.load(rows, mask=visible[:, None] & (offs_d < D)[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
        if SCALED:  # e4m3 → q's dtype is exact; the key's scale multiplies its products after the MMA
            keys = keys.to(q_ptr.dtype.element_ty)
        q_t = tl.load(
            q_ptr + seq * stride_qb + offs_h[None, :] * stride_qh + offs_d[:, None],
            mask=(offs_h < H)[None, :] & (offs_d < D)[:, None],
            other=0.0,
        )  # [BLOCK_D, BLOCK_H]
        logits = tl.dot(keys, q_t, input_precision=PRECISION)  # [BLOCK_S, BLOCK_H]
        if SCALED:
            logits *= tl.load(scale_ptr + scale_at, mask=visible, other=0.0)[:, None]
        w = tl.load(w_ptr + seq * stride_wb + offs_h, mask=offs_h < H, other=0.0).to(tl.float32)
        scores = tl.sum(tl.maximum(logits, 0.0) * w[None, :], 1)
        tl.store(out_ptrs, tl.where(visible, scores, float("-inf")), mask=offs_s < S)
    else:
        tl.store(out_ptrs, tl.full((BLOCK_S,), float("-inf"), tl.float32), mask=offs_s < S)


def check_indexer_decode_args(
    q: torch.Tensor,
    w: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    lengths: torch.Tensor,
    k_scale: torch.Tensor | None = None,
) -> None:
    require_rank("q", q, 3)
    require_rank("w", w, 2)
    require_rank("k_cache", k_cache, 3)
    require_rank("page_table", page_table, 2)
    require_rank("lengths", lengths, 1)
    require_dtype("q", q, FLOAT_DTYPES)
    require_dtype("w", w, FLOAT_DTYPES)
    require_dtype("page_table", page_table, INDEX_DTYPES)
    require_dtype("lengths", lengths, INDEX_DTYPES)
    if k_scale is None:
        require(k_cache.dtype == q.dtype, f"k_cache dtype {k_cache.dtype} must match q dtype {q.dtype}")
    else:
        require(
            k_cache.dtype == torch.float8_e4m3fn, f"k_cache must be e4m3 with k_scale, got {k_cache.dtype}"
        )
        require(
            k_scale.dtype == torch.float32 and k_scale.shape == k_cache.shape[:2],
            f"k_scale must be float32 [P, page] = {tuple(k_cache.shape[:2])}, got {k_scale.dtype} "
            f"{tuple(k_scale.shape)}",
        )
        require_same_device(q=q, k_scale=k_scale)
    require_same_device(q=q, w=w, k_cache=k_cache, page_table=page_table, lengths=lengths)
    batch, heads, dim = q.shape
    require(w.shape == (batch, heads), f"w must be [B, H_I] = {(batch, heads)}, got {tuple(w.shape)}")
    require(k_cache.shape[2] == dim, f"k_cache head dim {k_cache.shape[2]} must match q head dim {dim}")
    require(page_table.shape[0] == batch, f"page_table must have one row per sequence ({batch})")
    require(lengths.shape[0] == batch, f"lengths must have one entry per sequence ({batch})")


def launch_indexer_decode_scores(
    q: torch.Tensor,
    w: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    lengths: torch.Tensor,
    out: torch.Tensor,
    *,
    k_scale: torch.Tensor | None = None,
    block_s: int = 128,
    num_warps: int = 4,
    num_stages: int = 2,
) -> None:
    """Scores into out [B, S] (S <= page_table columns x page size); no checks. A 2-D k_cache [S, D] is one
    contiguous key buffer for a single sequence (page_table unused); `k_scale` ([P, page], or [S] with it) the
    scales of e4m3 keys."""
    batch, heads, dim = q.shape
    columns = out.shape[1]
    if batch == 0 or columns == 0:
        return
    grid = (batch, triton.cdiv(columns, block_s))
    paged = k_cache.dim() == 3
    stride_page, stride_key = (k_cache.stride(0), k_cache.stride(1)) if paged else (0, k_cache.stride(0))
    scaled = k_scale is not None
    if k_scale is None:
        k_scale, stride_scale = out, (0, 0)  # unused
    else:
        stride_scale = (k_scale.stride(0), k_scale.stride(1)) if paged else (0, k_scale.stride(0))
    _indexer_decode_kernel[grid](
        q, w, k_cache, k_scale, page_table, lengths, out, columns,
        q.stride(0), q.stride(1), w.stride(0), stride_page, stride_key, *stride_scale, page_table.stride(0),
        out.stride(0), H=heads, D=dim, BLOCK_H=max(16, triton.next_power_of_2(heads)),
        BLOCK_D=max(16, triton.next_power_of_2(dim)), BLOCK_S=block_s, PAGE=k_cache.shape[1] if paged else 0,
        PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32", SCALED=scaled, num_warps=num_warps,
        num_stages=num_stages,
    )  # fmt: skip


def _prepare(
    q: torch.Tensor,
    w: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    lengths: torch.Tensor,
    k_scale: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """Checked arguments with unit inner strides, int32 lengths clamped to the page table's capacity."""
    check_indexer_decode_args(q, w, k_cache, page_table, lengths, k_scale)
    capacity = page_table.shape[1] * k_cache.shape[1]
    lengths = lengths.to(torch.int32).clamp(0, capacity).contiguous()
    q, w, k_cache = contiguous_last(q), contiguous_last(w), contiguous_last(k_cache)
    return q, w, k_cache, page_table.contiguous(), lengths


def indexer_decode_scores(
    q: torch.Tensor,
    w: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    lengths: torch.Tensor,
    *,
    k_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 [B, page_table columns x page size] indexer scores of each sequence's new query against its cached
    keys; -inf at and past the sequence's length. Arguments as `indexer_decode_topk`."""
    q, w, k_cache, page_table, lengths = _prepare(q, w, k_cache, page_table, lengths, k_scale)
    out = torch.empty(
        q.shape[0], page_table.shape[1] * k_cache.shape[1], dtype=torch.float32, device=q.device
    )
    launch_indexer_decode_scores(q, w, k_cache, page_table, lengths, out, k_scale=k_scale)
    return out


def indexer_decode_topk(
    q: torch.Tensor,
    w: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    lengths: torch.Tensor,
    topk: int,
    *,
    topk_method: str = "auto",
    k_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sequence of a decode batch, the `topk` cached positions with the largest indexer scores.

    Args:
        q: [B, H_I, D_I] fp32/fp16/bf16, each sequence's new indexer query (at position lengths[b] - 1).
        w: [B, H_I] per-head weights.
        k_cache: [P, page_size, D_I] paged index keys, q's dtype (or e4m3 with `k_scale`).
        page_table: int32/int64 [B, max_pages]; position p of sequence b lives at
            (page_table[b, p // page_size], p % page_size). Entries must be valid pages of k_cache.
        lengths: int32/int64 [B], keys each query sees (positions 0 .. lengths[b] - 1, the new token's
            own key included); clamped to the page table's capacity.
        topk: positions to keep per sequence.
        topk_method: as `indexer_topk`'s ("auto": "cooperative" up to 32 sequences, torch.topk up to 64,
            "minmax" beyond).
        k_scale: float32 [P, page_size], the power-of-two scale of each e4m3 key (key = e4m3 value x scale,
            as `model_runtime.KVCache(index_fp8=True)` stores them); q then holds 16-bit or fp32 values.

    Returns:
        int32 [B, topk] positions in no particular order; a sequence with L <= topk keys selects all of
        them, padded with -1.
    """
    q, w, k_cache, page_table, lengths = _prepare(q, w, k_cache, page_table, lengths, k_scale)
    require(topk >= 1, f"topk must be >= 1, got {topk}")
    methods = ("auto", "torch", *TOPK_METHODS)
    require(topk_method in methods, f"topk_method must be one of {methods}, got {topk_method!r}")
    batch = q.shape[0]
    columns = page_table.shape[1] * k_cache.shape[1]
    out = torch.empty(batch, topk, dtype=torch.int32, device=q.device)
    if batch == 0:
        return out
    method = topk_method
    if method == "auto":
        method = auto_topk_method(batch)
    scores = torch.empty(batch, columns, dtype=torch.float32, device=q.device)
    if columns <= topk:  # every sequence selects all its keys: the scores are never read
        launch_select_topk(scores, topk, lengths, out, method="radix")
        return out
    launch_indexer_decode_scores(q, w, k_cache, page_table, lengths, scores, k_scale=k_scale)
    if method == "torch":
        torch_topk_rows(scores, topk, lengths, out)
    else:
        launch_select_topk(scores, topk, lengths, out, method=method)
    return out
