"""Triton radix select: the `topk` largest fp32 scores of each row's valid prefix.

One program per row. Scores become order-preserving uint32 keys; four passes of an 8-bit
histogram narrow down the exact key of the k-th largest element (the threshold), and a last
pass writes every column above the threshold plus just enough columns equal to it (ties are
taken in column order, so the result is deterministic). Rows with at most `topk` valid
columns never read their scores: they select 0 .. L-1 and pad with -1.

v1 ("radix") streams the whole row for every pass (5 reads). v2 ("compact") reads it twice:
after the first histogram, keys above the threshold bin are written out at once and the keys
inside it are compacted into a scratch list, on which the remaining three passes run. v3
("sample") avoids the histograms (costly in Triton): a threshold from a sorted strided sample,
one compaction pass, one sort of the survivors; exact thanks to a fallback to v2. "split" cuts a
row into column slices, one program each, for decode's single rows; "cooperative" (cooperative.py)
is "split" in one launch; "bound" (bound.py) replaces v2's full-row histogram with a lower bound
from group maxima; "minmax" (minmax.py) bounds with group maxima and minima computed by the score
kernel and reads only the groups that reach the bound (kernels/NOTES.md has the measurements).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._validate import require
from kernels.topk.bound import GROUP, _bound_select
from kernels.topk.cooperative import launch_cooperative
from kernels.topk.minmax import LANES, launch_minmax
from kernels.topk.radix import (
    _compact_select,
    _crossing_bin,
    _finish_candidates,
    _ordered_key,
    _select_everything,
    _total_at,
)
from kernels.topk.reference import check_select_topk_args


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
            chosen, n_above_bin = _crossing_bin(hist, needed)
            needed -= n_above_bin
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
            tl.store(row_out + slot, col, mask=(above_mask | keep_equal) & (slot < K))
            taken_above += tl.sum(above_mask.to(tl.int32), 0)
            taken_equal += tl.sum(equal_mask.to(tl.int32), 0)


@triton.jit
def _select_topk_compact_kernel(
    scores_ptr,
    lengths_ptr,
    out_ptr,
    cand_key_ptr,
    cand_col_ptr,
    stride_row,
    stride_out,
    stride_cand,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
    GROUP: tl.constexpr,  # 0: "compact"; > 0: "bound" with groups of GROUP keys (bound.py)
):
    row = tl.program_id(0).to(tl.int64)
    length = tl.load(lengths_ptr + row).to(tl.int32)
    row_out = out_ptr + row * stride_out
    row_scores = scores_ptr + row * stride_row
    row_key, row_col = cand_key_ptr + row * stride_cand, cand_col_ptr + row * stride_cand
    if length <= K:
        _select_everything(row_out, length, K, BLOCK)
    elif GROUP == 0:
        _compact_select(row_scores, row_out, row_key, row_col, length, K, BLOCK)
    else:
        _bound_select(row_scores, row_out, row_key, row_col, length, K, BLOCK, GROUP)


@triton.jit
def _select_topk_sample_kernel(
    scores_ptr,
    lengths_ptr,
    out_ptr,
    cand_key_ptr,
    cand_col_ptr,
    stride_row,
    stride_out,
    stride_cand,
    K: tl.constexpr,
    SAMPLE: tl.constexpr,
    CAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One row read: a threshold from a strided sample, survivors compacted and sorted.

    Falls back to `_compact_select` when the sampled threshold keeps fewer than K or more than
    CAP keys (heavy ties, adversarial rows), so the result is always exact.
    """
    row = tl.program_id(0)
    length = tl.load(lengths_ptr + row).to(tl.int32)
    row_scores = scores_ptr + row.to(tl.int64) * stride_row
    row_out = out_ptr + row.to(tl.int64) * stride_out
    row_cand_key = cand_key_ptr + row.to(tl.int64) * stride_cand
    row_cand_col = cand_col_ptr + row.to(tl.int64) * stride_cand
    lanes = tl.arange(0, BLOCK)
    if length <= K:
        _select_everything(row_out, length, K, BLOCK)
    else:
        # 1. Threshold: the key of a rank in a strided sample, placed so that (with a margin of
        #    ~4 standard deviations) slightly more than K keys of the row lie above it.
        step = tl.maximum(length // SAMPLE, 1)
        picks = tl.arange(0, SAMPLE)
        sample_ok = picks * step < length
        sample = _ordered_key(tl.load(row_scores + picks * step, mask=sample_ok, other=0.0)).to(tl.int64)
        sample = tl.sort(tl.where(sample_ok, sample, -1), descending=True)
        n_sample = tl.sum(sample_ok.to(tl.int32), 0)
        expected = K * n_sample.to(tl.float32) / length.to(tl.float32)
        rank = tl.minimum((expected * 1.25 + 4.0 * tl.sqrt(expected) + 8.0).to(tl.int32), n_sample - 1)
        threshold = tl.sum(tl.where(picks == rank, sample, 0), 0)
        # 2. One pass over the row: compact every key >= threshold (up to CAP of them).
        count = tl.zeros((), dtype=tl.int32)
        for first in range(0, length, BLOCK):
            col = first + lanes
            valid = col < length
            key = _ordered_key(tl.load(row_scores + col, mask=valid, other=0.0))
            keep = valid & (key.to(tl.int64) >= threshold)
            rank_keep = count + tl.cumsum(keep.to(tl.int32), 0) - 1
            store = keep & (rank_keep < CAP)
            tl.store(row_cand_key + rank_keep, key.to(tl.int32, bitcast=True), mask=store)
            tl.store(row_cand_col + rank_keep, col, mask=store)
            count += tl.sum(keep.to(tl.int32), 0)
        if (count >= K) & (count <= CAP):
            # 3. Sort the survivors by (key, column) packed in one int64 and keep the first K.
            slot = tl.arange(0, CAP)
            ok = slot < count
            key = tl.load(row_cand_key + slot, mask=ok, other=0).to(tl.uint32, bitcast=True).to(tl.int64)
            col = tl.load(row_cand_col + slot, mask=ok, other=0).to(tl.int64)
            packed = tl.sort(tl.where(ok, (key << 20) | col, -1), descending=True)
            tl.store(row_out + slot, (packed & 0xFFFFF).to(tl.int32), mask=slot < K)
        else:
            _compact_select(row_scores, row_out, row_cand_key, row_cand_col, length, K, BLOCK)


# "split": per-row state words (written by the two level kernels, read by the slice kernels)
_BIN1, _ABOVE1, _BIN2, _ABOVE2, _CAND = (tl.constexpr(i) for i in range(5))
STATE_WORDS = 5
_STATE = tl.constexpr(STATE_WORDS)


@triton.jit
def _split_hist_kernel(
    scores_ptr, lengths_ptr, hist_ptr, stride_row, stride_hist, K: tl.constexpr, SLICE: tl.constexpr
):
    """Histogram of the top 8 key bits of one slice of one row (grid: rows x slices)."""
    row, part = tl.program_id(0), tl.program_id(1)
    length = tl.load(lengths_ptr + row).to(tl.int32)
    col = part * SLICE + tl.arange(0, SLICE)
    valid = col < tl.where(length > K, length, 0)  # a row with L <= K selects everything: nothing to read
    key = _ordered_key(tl.load(scores_ptr + row.to(tl.int64) * stride_row + col, mask=valid, other=0.0))
    hist = tl.histogram(tl.where(valid, (key >> 24).to(tl.int32), 256), 512)
    tl.store(hist_ptr + row.to(tl.int64) * stride_hist + part * 512 + tl.arange(0, 512), hist)


@triton.jit
def _split_level_kernel(
    hist_ptr,
    state_ptr,
    offsets_ptr,
    parts,
    stride_hist,
    stride_offsets,
    K: tl.constexpr,
    LEVEL: tl.constexpr,
    PART_BLOCK: tl.constexpr,
):
    """One program per row, between the slice passes: the level's threshold bin from the slices'
    histograms summed, and each slice's first output slot (and, at level 2, first candidate slot),
    so the slice programs read a few words instead of every slice's histogram."""
    row = tl.program_id(0).to(tl.int64)
    row_hist = hist_ptr + row * stride_hist
    state = state_ptr + row * _STATE
    needed = tl.full((), K, tl.int32) if LEVEL == 1 else K - tl.load(state + _ABOVE1)
    bins = tl.arange(0, 512)
    total = tl.zeros((512,), dtype=tl.int32)
    for first in range(0, parts, PART_BLOCK):
        part = first + tl.arange(0, PART_BLOCK)
        hist = tl.load(row_hist + part[:, None] * 512 + bins[None, :], mask=(part < parts)[:, None], other=0)
        total += tl.sum(hist, 0)
    chosen, n_above = _crossing_bin(total, needed)
    above_done = tl.zeros((), dtype=tl.int32)
    inside_done = tl.zeros((), dtype=tl.int32)
    for first in range(0, parts, PART_BLOCK):
        part = first + tl.arange(0, PART_BLOCK)
        ok = part < parts
        hist = tl.load(row_hist + part[:, None] * 512 + bins[None, :], mask=ok[:, None], other=0)
        above = tl.sum(tl.where((bins > chosen) & (bins < 256), hist, 0), 1)  # [PART_BLOCK]
        inside = tl.sum(tl.where(bins == chosen, hist, 0), 1)
        row_offsets = offsets_ptr + row * stride_offsets + part
        tl.store(row_offsets, above_done + tl.cumsum(above, 0) - above, mask=ok)
        if LEVEL == 2:
            tl.store(row_offsets + parts, inside_done + tl.cumsum(inside, 0) - inside, mask=ok)
        above_done += tl.sum(above, 0)
        inside_done += tl.sum(inside, 0)
    if LEVEL == 1:
        tl.store(state + _BIN1, chosen)
        tl.store(state + _ABOVE1, n_above)
    else:
        tl.store(state + _BIN2, chosen)
        tl.store(state + _ABOVE2, n_above)
        tl.store(state + _CAND, _total_at(total, chosen))


@triton.jit
def _split_refine_kernel(
    scores_ptr,
    lengths_ptr,
    state_ptr,
    offsets_ptr,
    hist2_ptr,
    out_ptr,
    stride_row,
    stride_offsets,
    stride_hist,
    stride_out,
    K: tl.constexpr,
    SLICE: tl.constexpr,
):
    """Level 1 -> 2 on one slice: write its keys above the threshold bin, histogram the next 8 bits
    of the keys inside it. Its first slot comes from the level kernel (no atomics), so the output does
    not depend on scheduling."""
    row, part = tl.program_id(0), tl.program_id(1)
    length = tl.load(lengths_ptr + row).to(tl.int32)
    bin1 = tl.load(state_ptr + row.to(tl.int64) * _STATE + _BIN1)
    base_above = tl.load(offsets_ptr + row.to(tl.int64) * stride_offsets + part)
    col = part * SLICE + tl.arange(0, SLICE)
    valid = col < tl.where(length > K, length, 0)  # a row with L <= K selects everything: nothing here
    key = _ordered_key(tl.load(scores_ptr + row.to(tl.int64) * stride_row + col, mask=valid, other=0.0))
    digit = (key >> 24).to(tl.int32)
    above_mask = valid & (digit > bin1)
    rank_above = base_above + tl.cumsum(above_mask.to(tl.int32), 0) - 1
    tl.store(out_ptr + row.to(tl.int64) * stride_out + rank_above, col, mask=above_mask)
    inside = valid & (digit == bin1)
    hist2 = tl.histogram(tl.where(inside, ((key >> 16) & 255).to(tl.int32), 256), 512)
    tl.store(hist2_ptr + row.to(tl.int64) * stride_hist + part * 512 + tl.arange(0, 512), hist2)


@triton.jit
def _split_compact_kernel(
    scores_ptr,
    lengths_ptr,
    state_ptr,
    offsets_ptr,
    out_ptr,
    cand_key_ptr,
    cand_col_ptr,
    parts,
    stride_row,
    stride_offsets,
    stride_out,
    stride_cand,
    K: tl.constexpr,
    SLICE: tl.constexpr,
):
    """Level 2 on one slice: write its keys above the 16-bit threshold prefix, compact the ones equal to it."""
    row, part = tl.program_id(0), tl.program_id(1)
    length = tl.load(lengths_ptr + row).to(tl.int32)
    if (length > K) & (part * SLICE < length):
        state = state_ptr + row.to(tl.int64) * _STATE
        bin1, n_above1, bin2 = tl.load(state + _BIN1), tl.load(state + _ABOVE1), tl.load(state + _BIN2)
        row_offsets = offsets_ptr + row.to(tl.int64) * stride_offsets
        base_above, base_cand = tl.load(row_offsets + part), tl.load(row_offsets + parts + part)
        col = part * SLICE + tl.arange(0, SLICE)
        valid = col < length
        key = _ordered_key(tl.load(scores_ptr + row.to(tl.int64) * stride_row + col, mask=valid, other=0.0))
        inside = valid & ((key >> 24).to(tl.int32) == bin1)
        digit = ((key >> 16) & 255).to(tl.int32)
        above_mask = inside & (digit > bin2)
        cand_mask = inside & (digit == bin2)
        rank_above = n_above1 + base_above + tl.cumsum(above_mask.to(tl.int32), 0) - 1
        rank_cand = base_cand + tl.cumsum(cand_mask.to(tl.int32), 0) - 1
        tl.store(out_ptr + row.to(tl.int64) * stride_out + rank_above, col, mask=above_mask)
        row_cand = row.to(tl.int64) * stride_cand + rank_cand
        tl.store(cand_key_ptr + row_cand, key.to(tl.int32, bitcast=True), mask=cand_mask)
        tl.store(cand_col_ptr + row_cand, col, mask=cand_mask)


@triton.jit
def _split_finish_kernel(
    lengths_ptr,
    state_ptr,
    out_ptr,
    cand_key_ptr,
    cand_col_ptr,
    stride_out,
    stride_cand,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per row: the last two radix steps over the (few) keys of the 16-bit threshold prefix."""
    row = tl.program_id(0)
    length = tl.load(lengths_ptr + row).to(tl.int32)
    row_out = out_ptr + row.to(tl.int64) * stride_out
    if length <= K:
        _select_everything(row_out, length, K, BLOCK)
    else:
        state = state_ptr + row.to(tl.int64) * _STATE
        bin1, bin2 = tl.load(state + _BIN1), tl.load(state + _BIN2)
        written = tl.load(state + _ABOVE1) + tl.load(state + _ABOVE2)
        prefix = (bin1.to(tl.uint32) << 24) | (bin2.to(tl.uint32) << 16)
        _finish_candidates(
            row_out, cand_key_ptr + row.to(tl.int64) * stride_cand, cand_col_ptr + row.to(tl.int64) * stride_cand,
            tl.load(state + _CAND), prefix, K - written, written, K, BLOCK, 2,
        )  # fmt: skip


def _launch_split(
    scores: torch.Tensor,
    topk: int,
    lengths: torch.Tensor,
    out: torch.Tensor,
    cand_key: torch.Tensor,
    cand_col: torch.Tensor,
    slice_size: int,
    block: int,
) -> None:
    """Six launches: slice histograms of the top 8 key bits; per row, the threshold bin and slice
    offsets; slice histograms of the next 8 bits inside that bin; per row again; slice compaction
    at the 16-bit threshold prefix; a per-row finish over its few keys."""
    rows = scores.shape[0]
    parts = triton.cdiv(max(scores.shape[1], 1), slice_size)
    device = scores.device
    hist1, hist2 = torch.empty(2, rows, parts * 512, dtype=torch.int32, device=device)
    offsets = torch.empty(rows, 2 * parts, dtype=torch.int32, device=device)  # first slots: above, candidates
    state = torch.empty(rows, STATE_WORDS, dtype=torch.int32, device=device)
    grid = (rows, parts)
    _split_hist_kernel[grid](
        scores, lengths, hist1, scores.stride(0), hist1.stride(0), K=topk, SLICE=slice_size, num_warps=8
    )
    level = {"K": topk, "PART_BLOCK": 8, "num_warps": 4}
    _split_level_kernel[(rows,)](
        hist1, state, offsets, parts, hist1.stride(0), offsets.stride(0), LEVEL=1, **level
    )
    _split_refine_kernel[grid](
        scores, lengths, state, offsets, hist2, out, scores.stride(0), offsets.stride(0), hist2.stride(0),
        out.stride(0), K=topk, SLICE=slice_size, num_warps=8,
    )  # fmt: skip
    _split_level_kernel[(rows,)](
        hist2, state, offsets, parts, hist2.stride(0), offsets.stride(0), LEVEL=2, **level
    )
    _split_compact_kernel[grid](
        scores, lengths, state, offsets, out, cand_key, cand_col, parts, scores.stride(0), offsets.stride(0),
        out.stride(0), cand_key.stride(0), K=topk, SLICE=slice_size, num_warps=8,
    )  # fmt: skip
    _split_finish_kernel[(rows,)](
        lengths, state, out, cand_key, cand_col, out.stride(0), cand_key.stride(0), K=topk, BLOCK=block,
        num_warps=8,
    )  # fmt: skip


TOPK_METHODS = ("radix", "compact", "sample", "split", "cooperative", "bound", "minmax")
# Columns per slice program by default, the fastest on one 128K row on the H200 (kernels/NOTES.md).
SPLIT_SLICE, COOPERATIVE_SLICE = 2048, 1024


def launch_select_topk(
    scores: torch.Tensor,
    topk: int,
    lengths: torch.Tensor,
    out: torch.Tensor,
    *,
    method: str = "compact",
    scratch: tuple[torch.Tensor, torch.Tensor] | None = None,
    block: int | None = None,
    sample_size: int = 4096,
    slice_size: int | None = None,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Write the selection of each row of `scores` into `out` (int32 [R, topk]); no checks.

    method "radix" reads each row 5 times (4 histogram passes + 1 write pass); "compact" reads it
    twice and runs the last 3 radix passes on the keys of the threshold bin, compacted into
    `scratch` (two int32 [>= R, >= S] buffers; allocated here when not given); "sample" reads it
    once after estimating the threshold from a strided sample, sorts the survivors, and
    falls back to "compact" for rows where the estimate fails; "split" cuts each row into
    `slice_size`-column slices, one program each (decode, few rows), runs the first two radix
    steps over them (three slice reads) and finishes each row's few remaining keys in one program;
    "cooperative" does the same in one launch (one slice read; cooperative.py) when the row's
    slices fit on the GPU at once, and falls back to "split" otherwise; "bound" reads a row twice
    without a full-row histogram: group maxima give a lower bound of the threshold, the keys above it
    are compacted and the radix passes run over them (bound.py); "minmax" takes the bound from group
    maxima and minima (`stats`, the indexer score kernel's, or computed here) and reads only the groups
    that reach it (minmax.py). `block`: lanes per program step (default 2048; "minmax" `minmax.LANES`).
    """
    rows = scores.shape[0]
    if rows == 0:
        return
    if block is None:
        block = LANES if method == "minmax" else 2048
    if method == "radix":
        _select_topk_kernel[(rows,)](
            scores, lengths, out, scores.stride(0), out.stride(0), K=topk, BLOCK=block, num_warps=8
        )
        return
    if scratch is None:
        scratch = (
            torch.empty(rows, scores.shape[1], dtype=torch.int32, device=scores.device),
            torch.empty(rows, scores.shape[1], dtype=torch.int32, device=scores.device),
        )
    cand_key, cand_col = scratch
    if method == "cooperative" and launch_cooperative(
        scores, topk, lengths, out, cand_key, cand_col, slice_size or COOPERATIVE_SLICE, block
    ):
        return
    if method in ("split", "cooperative"):
        # A slice size asked of "cooperative" was sized for it, not for its fallback.
        split_slice = slice_size if method == "split" and slice_size else SPLIT_SLICE
        _launch_split(scores, topk, lengths, out, cand_key, cand_col, split_slice, block)
        return
    if method == "minmax":
        launch_minmax(scores, topk, lengths, out, cand_key, cand_col, block, stats)
        return
    if method == "sample" and scores.shape[1] < (1 << 20):  # columns must fit the 20-bit packing
        _select_topk_sample_kernel[(rows,)](
            scores, lengths, out, cand_key, cand_col, scores.stride(0), out.stride(0), cand_key.stride(0),
            K=topk, SAMPLE=sample_size, CAP=max(128, triton.next_power_of_2(2 * topk)), BLOCK=block,
            num_warps=8,
        )  # fmt: skip
        return
    _select_topk_compact_kernel[(rows,)](
        scores, lengths, out, cand_key, cand_col, scores.stride(0), out.stride(0), cand_key.stride(0),
        K=topk, BLOCK=block, GROUP=GROUP if method == "bound" else 0, num_warps=8,
    )  # fmt: skip


def select_topk(
    scores: torch.Tensor,
    topk: int,
    lengths: torch.Tensor,
    *,
    method: str = "compact",
    sample_size: int = 4096,
    slice_size: int | None = None,
) -> torch.Tensor:
    """Top-k column ids of each row's valid prefix.

    Args:
        scores: fp32 [R, S]; row r is valid on columns [0, lengths[r]) (lengths <= S).
        topk: how many columns to select per row.
        lengths: int32/int64 [R].
        method: "compact" (2 passes over each row + candidate passes; default), "radix"
            (5 passes over each row), "sample" (1 pass after a sampled threshold estimate) or
            "split" (two radix levels over column slices, one program per slice, then a per-row
            finish over the few keys left: for one or a few rows, e.g. decode) or
            "cooperative" ("split" in one launch with grid barriers; "split" when it cannot fit) or
            "bound" (one program per row like "compact", a bound from group maxima instead of the
            first full-row histogram) or "minmax" (a bound from group maxima and minima, then only the
            groups that reach it are read).
            All return the same set up to the choice among equal scores at the threshold.
        sample_size: keys in the "sample" method's threshold sample (a power of two).
        slice_size: columns per program in the "split" and "cooperative" methods (a power of two;
            default 2048 and 1024; "cooperative" doubles it, up to 8192, until the grid fits one
            program per SM).

    Returns:
        int32 [R, topk]: selected column ids in no particular order, padded with -1 when a row
        has fewer than `topk` valid columns (then all of them are selected). Among equal scores
        at the threshold, lower column ids win; "equal" is by bits, so +0.0 ranks above -0.0.
    """
    check_select_topk_args(scores, topk, lengths)
    require(method in TOPK_METHODS, f"method must be one of {TOPK_METHODS}, got {method!r}")
    require(
        slice_size is None or (slice_size >= 16 and slice_size & (slice_size - 1) == 0),
        f"slice_size must be a power of two >= 16, got {slice_size}",
    )
    if scores.stride(1) != 1:
        scores = scores.contiguous()
    lengths = lengths.to(torch.int32).clamp(max=scores.shape[1]).contiguous()
    out = torch.empty(scores.shape[0], topk, dtype=torch.int32, device=scores.device)
    launch_select_topk(
        scores, topk, lengths, out, method=method, sample_size=sample_size, slice_size=slice_size
    )
    return out
