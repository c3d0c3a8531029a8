"""Triton radix select: the `topk` largest fp32 scores of each row's valid prefix.

One program per row. Scores become order-preserving uint32 keys; four passes of an 8-bit
histogram narrow down the exact key of the k-th largest element (the threshold), and a last
pass writes every column above the threshold plus just enough columns equal to it (ties are
taken in column order, so the result is deterministic). Rows with at most `topk` valid
columns never read their scores: they select 0 .. L-1 and pad with -1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.topk.reference import check_select_topk_args


@triton.jit
def _ordered_key(x):
    """Map fp32 to uint32 so that unsigned order equals float order (-inf lowest)."""
    bits = x.to(tl.uint32, bitcast=True)
    negative = (bits >> 31) == 1
    return tl.where(negative, ~bits, bits | 0x80000000)


@triton.jit
def _select_topk_kernel(
    scores_ptr,
    lengths_ptr,
    out_ptr,
    stride_row,
    stride_out,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    length = tl.load(lengths_ptr + row).to(tl.int32)
    row_scores = scores_ptr + row.to(tl.int64) * stride_row
    row_out = out_ptr + row.to(tl.int64) * stride_out
    lanes = tl.arange(0, BLOCK)
    if length <= K:
        for first in range(0, K, BLOCK):
            slot = first + lanes
            tl.store(row_out + slot, tl.where(slot < length, slot, -1), mask=slot < K)
    else:
        bins = tl.arange(0, 512)
        prefix = tl.zeros((), dtype=tl.uint32)
        needed = tl.full((), K, tl.int32)  # how many of the prefix-matching keys still go in
        for step in tl.static_range(4):
            shift = 24 - 8 * step  # constexpr: the loop is unrolled
            hist = tl.zeros((512,), dtype=tl.int32)
            for first in range(0, length, BLOCK):
                col = first + lanes
                valid = col < length
                key = _ordered_key(tl.load(row_scores + col, mask=valid, other=0.0))
                if step > 0:
                    valid = valid & ((key >> (shift + 8)) == (prefix >> (shift + 8)))
                # Keys outside the current prefix land in bin 256, which is never read.
                digit = tl.where(valid, ((key >> shift) & 255).to(tl.int32), 256)
                hist += tl.histogram(digit, 512)
            hist = tl.where(bins < 256, hist, 0)
            above = tl.sum(hist, 0) - tl.cumsum(hist, 0)  # keys in bins strictly above each bin
            crossing = (above < needed) & (above + hist >= needed)
            chosen = tl.sum(tl.where(crossing, bins, 0), 0)
            needed -= tl.sum(tl.where(crossing, above, 0), 0)
            prefix = prefix | (chosen.to(tl.uint32) << shift)
        # prefix is now the exact threshold key; `needed` of the keys equal to it are taken.
        n_above = K - needed
        taken_above = tl.zeros((), dtype=tl.int32)
        taken_equal = tl.zeros((), dtype=tl.int32)
        for first in range(0, length, BLOCK):
            col = first + lanes
            valid = col < length
            key = _ordered_key(tl.load(row_scores + col, mask=valid, other=0.0))
            above_mask = valid & (key > prefix)
            equal_mask = valid & (key == prefix)
            rank_above = taken_above + tl.cumsum(above_mask.to(tl.int32), 0) - 1
            rank_equal = taken_equal + tl.cumsum(equal_mask.to(tl.int32), 0) - 1
            keep_equal = equal_mask & (rank_equal < needed)
            slot = tl.where(above_mask, rank_above, n_above + rank_equal)
            tl.store(row_out + slot, col, mask=above_mask | keep_equal)
            taken_above += tl.sum(above_mask.to(tl.int32), 0)
            taken_equal += tl.sum(equal_mask.to(tl.int32), 0)


def launch_select_topk(
    scores: torch.Tensor, topk: int, lengths: torch.Tensor, out: torch.Tensor, *, block: int = 2048
) -> None:
    """Write the selection of each row of `scores` into `out` (int32 [R, topk]); no checks."""
    if scores.shape[0] == 0:
        return
    _select_topk_kernel[(scores.shape[0],)](
        scores, lengths, out, scores.stride(0), out.stride(0), K=topk, BLOCK=block, num_warps=8
    )


def select_topk(scores: torch.Tensor, topk: int, lengths: torch.Tensor) -> torch.Tensor:
    """Top-k column ids of each row's valid prefix.

    Args:
        scores: fp32 [R, S]; row r is valid on columns [0, lengths[r]) (lengths <= S).
        topk: how many columns to select per row.
        lengths: int32/int64 [R].

    Returns:
        int32 [R, topk]: selected column ids in no particular order, padded with -1 when a row
        has fewer than `topk` valid columns (then all of them are selected). Among equal scores
        at the threshold, lower column ids win.
    """
    check_select_topk_args(scores, topk, lengths)
    if scores.stride(1) != 1:
        scores = scores.contiguous()
    lengths = lengths.to(torch.int32).clamp(max=scores.shape[1]).contiguous()
    out = torch.empty(scores.shape[0], topk, dtype=torch.int32, device=scores.device)
    launch_select_topk(scores, topk, lengths, out)
    return out
