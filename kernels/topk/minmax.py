"""The "minmax" top-k: a threshold bound from per-group maxima and minima, so no full-row pass.

"bound" (bound.py) reads a row twice: once for group maxima, once to compact the keys above the
bound they give. On smooth rows (indexer scores that fall off with distance) its bound is loose:
the K largest maxima are simply the nearest K groups, so up to GROUP * K keys pass it.

Here each group of GROUP adjacent keys also carries its minimum, and both come precomputed:
from the indexer's score kernel as it writes the scores (`indexer_topk`), or from one stats pass
(`select_topk`). Counting a group's maximum once and the minimum of a full group GROUP - 1 more
times, the K-th largest of that weighted list is a lower bound of the row's K-th largest key
(at least K keys of the row lie at or above it). It is as tight as "bound"'s on unordered rows
and within one group's spread of the threshold on smooth ones. Then only the groups whose maximum
reaches the bound are read (a list of them, then a gather of their keys), the keys at or above
the bound are compacted in column order, and the radix passes finish over those few.

A group's max and min travel as one int32 (`_pack_extremes`): both floored to their top 16 bits, the max in
the upper half and the complemented min in the lower, so one unsigned 16x2 max reduces both and the select
loads one word per group. The bound keeps at most 16 bits, and against such a bound a key and its 16-bit floor
compare alike, so the floors lose nothing. The writers also leave each row's top byte (of its largest key) for
the select's first digit.

Rows with fewer than K / GROUP full groups go through "compact"'s path, and so do rows of fewer than
K groups whose listed groups hold over half the row (unordered short rows: their bound rests on
minima, which are low there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.topk.radix import (
    _compact_select,
    _crossing_bin,
    _digit_histogram,
    _finish_candidates,
    _ordered_key,
    _radix_prefix,
    _running_count,
    _select_everything,
    _split_at_prefix,
    _write_selected,
)

GROUP = 16  # keys per group
# The select's shape: 1 024 lanes per step, 8 warps, ptxas capped at 64 registers (four programs per SM, 3 spill
# loads). H200, session 21, indexer + top-k at 256K (e4m3, positional, one process): 174.8-176.9 ms against
# 178.4-179.3 at 2 048 lanes and 80 registers (three programs; session 14's choice over 128 registers, two), 175.6-177.2
# at 4 warps x 1 024 lanes and 80, 182.4-182.6 at 1 024 lanes and 80, 190 at 4 warps x 2 048 and 128. WARPS and
# MAX_REGISTERS are read at each launch (the indexer bench's config rounds set them; lanes are a launch argument).
LANES = 1024
WARPS = 8
MAX_REGISTERS = 64
# Columns per program of `select_topk`'s stats pass (the indexer's extremes come with its scores).
STATS_LANES = 2048
# Radix steps of the bound: its top 8 * BOUND_STEPS bits (the rest zero). Two, since session 19: at 16 bits the
# bound lists < 2 % more groups than at 24 on indexer rows, and the third step was half the histogram work.
# Read at each launch (the bench's A/B sets it).
BOUND_STEPS = 2
# Bits of the bound's last radix digit (a 2 ** LAST_BITS-bin histogram); the bound keeps 8 * (BOUND_STEPS - 1) +
# LAST_BITS bits. Six since session 21: the 64-bin step is 486 SASS instructions per 1 024 lanes against 696, and the
# 14-bit bound lists 0-7 % more groups than the 16-bit one (CPU count, positional rows); H200, indexer + top-k at 256K
# e4m3 175.2-175.9 -> 169.7-171.4 ms, bf16 -1 to -2 %. Read at each launch (the bench's A/B sets it).
LAST_BITS = 6
# The finishing radix passes take the K-th key's top byte from the bound when they can (`_gather_candidates`):
# on indexer rows it is the bound's top byte on > 99 % of rows (CPU count, positional and random rows of 40K), so
# one of four histogram passes over the candidates goes. Read at each launch (the bench's A/B sets it).
TOP_FROM_BOUND = True
# After the finish's second byte, one pass writes the candidates above the K-th key's top 16 bits and compacts the
# 12-65 (CPU count, positional rows of 8K-128K) that share them; the last two radix steps and the final write read
# those only. Read at each launch (the bench's A/B sets it).
BUCKET_FINISH = True
# The select takes the top byte of the row's largest group maximum from whoever wrote the extremes (the score
# kernel or the stats pass, one atomic max per row and program) instead of a pass over the row's extremes. Read at
# each launch (the bench's A/B sets it; False: the select's own pass, the row's top byte unused).
ROW_TOP = True
# The gather loads each listed group whole (one 16-byte load per thread, the keys past the row's length dropped
# after the load) where the buffer holds whole groups (rows a multiple of GROUP long: `indexer_topk`'s always),
# instead of masking every key by the row's length (four 4-byte loads). H200, session 23: `select_topk` 1024 x 128K
# normal rows -2.5 to -5 %, smooth level to -1 %; indexer + top-k at 256K level. Read at each launch (the bench's
# A-B sets it).
GROUP_LOADS = True


@triton.jit
def _max_halves_asm(a, b):
    """The larger of each 16-bit half (unsigned), one instruction (sm_90's max.u16x2)."""
    return tl.inline_asm_elementwise(
        "max.u16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.uint32, is_pure=True, pack=1
    )


@triton.jit
def _max_halves(a, b):
    """`_max_halves_asm` without inline assembly (the interpreter runs none)."""
    return tl.maximum(a & 0xFFFF0000, b & 0xFFFF0000) | tl.maximum(a & 0xFFFF, b & 0xFFFF)


@triton.jit
def _pack_extremes(high, low):
    """One uint32 for a (max, min) pair of ordered keys, both floored to their top 16 bits: the max's in the upper
    half, the min's complemented in the lower, so that `_max_halves` of two packs is the pack of their
    (max, min). Comparisons against a bound of at most 16 bits (`_weighted_bound`) see the same order."""
    return (high & 0xFFFF0000) | (~low >> 16)


@triton.jit
def _unpack_extremes(packed):
    """(max, min) ordered keys of a pack, each floored to its top 16 bits (the lower 16 zero)."""
    return packed & 0xFFFF0000, ~packed << 16


@triton.jit
def _group_extremes(
    values, visible, ROWS: tl.constexpr, GROUPS: tl.constexpr, GROUP: tl.constexpr, INTERPRETED: tl.constexpr
):
    """Per-group packed (max, min) (`_pack_extremes`), as int32 bit patterns, of a [ROWS, GROUPS * GROUP] tile
    over its visible entries, fp32 scores or uint32 ordered keys; a group with none packs to 0, (lowest,
    highest), and is never read."""
    keys = _ordered_key(values) if values.dtype == tl.float32 else values
    packed = tl.where(visible, _pack_extremes(keys, keys), 0)
    grouped = tl.reshape(packed, (ROWS, GROUPS, GROUP))
    if INTERPRETED:
        return tl.reduce(grouped, 2, _max_halves).to(tl.int32, bitcast=True)
    return tl.reduce(grouped, 2, _max_halves_asm).to(tl.int32, bitcast=True)


@triton.jit
def _minmax_stats_kernel(
    scores_ptr,
    lengths_ptr,
    ext_ptr,
    top_ptr,
    n_stat_cols,
    stride_row,
    stride_stat,
    BLOCK: tl.constexpr,
    GROUP: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """Packed group extremes of one BLOCK-column slice of one row (grid: rows x slices), and the top byte of
    the slice's largest key into the row's (atomic max), for `select_topk`."""
    row, part = tl.program_id(0).to(tl.int64), tl.program_id(1)
    length = tl.load(lengths_ptr + row).to(tl.int32)
    col = part * BLOCK + tl.arange(0, BLOCK)
    valid = col < length
    key = _ordered_key(tl.load(scores_ptr + row * stride_row + col, mask=valid, other=0.0))
    GROUPS: tl.constexpr = BLOCK // GROUP
    slot = part * GROUPS + tl.arange(0, GROUPS)[None, :]
    stat = row * stride_stat + slot
    extremes = _group_extremes(key[None, :], valid[None, :], 1, GROUPS, GROUP, INTERPRETED)
    tl.store(ext_ptr + stat, extremes, mask=slot < n_stat_cols)
    if part * BLOCK < length:
        tl.atomic_max(top_ptr + row, (tl.max(tl.where(valid, key, 0), 0) >> 24).to(tl.int32), sem="relaxed")


@triton.jit
def _extremes_at(row_ext, slot, n_groups, n_full):
    """(maxima, minima) as uint32 ordered keys floored to 16 bits at `slot`, with which of them count: every
    group's maximum, only a full group's minimum. Read past L1 (".cg")."""
    high_ok, low_ok = slot < n_groups, slot < n_full
    packed = tl.load(row_ext + slot, mask=high_ok, other=0, cache_modifier=".cg").to(tl.uint32, bitcast=True)
    high, low = _unpack_extremes(packed)
    return high, low, high_ok, low_ok


@triton.jit
def _top_byte(
    row_ext, row_top, n_groups, n_full, K: tl.constexpr, BLOCK: tl.constexpr, GROUP: tl.constexpr,
    ROW_TOP: tl.constexpr,
):  # fmt: skip
    """The bound's first radix digit without its histograms, when it is the top byte of the row's largest maximum
    or the byte below: (that byte, weighted entries above it), else (-1, 0). One pass takes the largest maximum,
    one counts the weighted entries in its byte and the next; indexer scores rarely reach below (their top
    2048 lie within a factor 4 to 16 of the row's largest), and these passes cost a few instructions per
    entry where a histogram costs ~60 under Triton 3.6 (H200, session 15: 0.78 against 0.84 µs per 128K row).
    ROW_TOP: the largest maximum's top byte is `row_top`, the one the extremes' writers left for the row. Only the
    path depends on it: a top above the true one (a stale atomic max) finds no entries in its byte and falls to
    the histogram, one below counts a subset; either way the bound stays a lower bound."""
    lanes = tl.arange(0, BLOCK)
    if ROW_TOP:
        top = row_top
    else:
        largest = tl.zeros((BLOCK,), dtype=tl.int32)
        for first in range(0, n_groups, BLOCK):
            slot = first + lanes
            high = tl.load(row_ext + slot, mask=slot < n_groups, other=0, cache_modifier=".cg")
            largest = tl.maximum(largest, (high.to(tl.uint32, bitcast=True) >> 24).to(tl.int32))
        top = tl.max(largest, 0)
    in_top = tl.zeros((BLOCK,), dtype=tl.int32)
    in_next = tl.zeros((BLOCK,), dtype=tl.int32)
    for first in range(0, n_groups, BLOCK):
        high, low, high_ok, low_ok = _extremes_at(row_ext, first + lanes, n_groups, n_full)
        high_byte, low_byte = (high >> 24).to(tl.int32), (low >> 24).to(tl.int32)
        in_top += (high_ok & (high_byte == top)).to(tl.int32)
        in_top += (GROUP - 1) * (low_ok & (low_byte == top)).to(tl.int32)
        in_next += (high_ok & (high_byte == top - 1)).to(tl.int32)
        in_next += (GROUP - 1) * (low_ok & (low_byte == top - 1)).to(tl.int32)
    count_top, count_next = tl.sum(in_top, 0), tl.sum(in_next, 0)
    in_next_byte = (count_top < K) & (count_top + count_next >= K)
    chosen = tl.where(count_top >= K, top, tl.where(in_next_byte, top - 1, -1))
    return chosen, tl.where(in_next_byte, count_top, 0)  # entries above the chosen byte (none for -1)


@triton.jit
def _bound_digit(
    row_ext, n_groups, n_full, prefix, remaining, SHIFT: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr,
    GROUP: tl.constexpr,
):  # fmt: skip
    """One radix step of `_weighted_bound`: the top BITS bits of the byte at SHIFT, from a 2 ** BITS-bin histogram
    of the weighted entries that match `prefix` above that byte. Returns (prefix, entries still needed)."""
    lanes = tl.arange(0, BLOCK)
    low_bit: tl.constexpr = SHIFT + 8 - BITS
    hist = tl.zeros((1 << BITS,), dtype=tl.int32)
    for first in range(0, n_groups, BLOCK):
        high, low, high_ok, low_ok = _extremes_at(row_ext, first + lanes, n_groups, n_full)
        high_match = high_ok & (((high >> SHIFT) >> 8) == ((prefix >> SHIFT) >> 8))
        low_match = low_ok & (((low >> SHIFT) >> 8) == ((prefix >> SHIFT) >> 8))
        high_digit = ((high >> low_bit) & ((1 << BITS) - 1)).to(tl.int32)
        low_digit = ((low >> low_bit) & ((1 << BITS) - 1)).to(tl.int32)
        hist += _digit_histogram(high_digit, high_match, 1 << BITS)
        hist += (GROUP - 1) * _digit_histogram(low_digit, low_match, 1 << BITS)
    chosen, n_above_bin = _crossing_bin(hist, remaining)
    return prefix | (chosen.to(tl.uint32) << low_bit), remaining - n_above_bin


@triton.jit
def _weighted_bound(
    row_ext,
    row_top,
    n_groups,
    n_full,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
    GROUP: tl.constexpr,
    BOUND_STEPS: tl.constexpr,
    LAST_BITS: tl.constexpr,
    ROW_TOP: tl.constexpr,
):
    """Top 8 * (BOUND_STEPS - 1) + LAST_BITS bits of the K-th largest entry of the list where each group's
    maximum counts once and each full group's minimum GROUP - 1 more times (a full group at or above a value
    puts all GROUP keys there); the lower bits zero. Read past L1 (".cg"). The packed extremes keep 16 bits,
    so the bound keeps at most 16 (their floors order every key against it as the keys themselves do)."""
    tl.static_assert(8 * (BOUND_STEPS - 1) + LAST_BITS <= 16)
    first_byte, above_first = _top_byte(row_ext, row_top, n_groups, n_full, K, BLOCK, GROUP, ROW_TOP)
    prefix = tl.where(first_byte >= 0, first_byte, 0).to(tl.uint32) << 24
    remaining = K - above_first
    if first_byte < 0:  # the first byte from a histogram too
        prefix, remaining = _bound_digit(row_ext, n_groups, n_full, prefix, remaining, 24, 8, BLOCK, GROUP)
    for step in tl.static_range(1, BOUND_STEPS - 1):
        prefix, remaining = _bound_digit(
            row_ext, n_groups, n_full, prefix, remaining, 24 - 8 * step, 8, BLOCK, GROUP
        )
    prefix, remaining = _bound_digit(
        row_ext, n_groups, n_full, prefix, remaining, 32 - 8 * BOUND_STEPS, LAST_BITS, BLOCK, GROUP
    )
    return prefix


@triton.jit
def _gather_candidates(
    row_scores,
    row_out,
    row_key,
    row_col,
    row_list,
    n_listed,
    bound,
    length,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
    GROUP: tl.constexpr,
    TOP_FROM_BOUND: tl.constexpr,
    BUCKET_FINISH: tl.constexpr,
    WHOLE_GROUPS: tl.constexpr,
):
    """The listed groups' keys at or above the bound become candidates (column order); radix passes finish.
    TOP_FROM_BOUND: when fewer than K candidates lie above the bound's top byte, that byte is the K-th key's
    (every candidate is at or above the bound), so the radix passes start at the second byte. BUCKET_FINISH:
    after the second byte, one pass selects the candidates above the K-th key's top 16 bits and keeps the few
    that share them (`_split_at_prefix`) for the last two bytes. WHOLE_GROUPS: the buffer holds every listed
    group's GROUP columns (its rows are a multiple of GROUP long), so each loads whole."""
    GROUPS: tl.constexpr = BLOCK // GROUP
    n_cand = tl.zeros((), dtype=tl.int32)
    above_top = tl.zeros((), dtype=tl.int32)  # candidates whose top byte exceeds the bound's
    for first in range(0, n_listed, GROUPS):
        entry = first + tl.arange(0, GROUPS)
        group = tl.load(row_list + entry, mask=entry < n_listed, other=0, cache_modifier=".cg")
        col = group[:, None] * GROUP + tl.arange(0, GROUP)[None, :]  # [GROUPS, GROUP]
        listed = entry < n_listed
        valid = listed[:, None] & (col < length)
        # WHOLE_GROUPS: one mask per group, so 16-byte loads (the keys past the row's length are dropped below).
        loaded = listed[:, None] if WHOLE_GROUPS else valid
        key = _ordered_key(tl.load(row_scores + col, mask=loaded, other=0.0))
        keep = tl.reshape(valid & (key >= bound), (BLOCK,))
        rank = n_cand + _running_count(keep.to(tl.int32)) - 1
        flat_key = tl.reshape(key, (BLOCK,))
        tl.store(row_key + rank, flat_key.to(tl.int32, bitcast=True), mask=keep)
        tl.store(row_col + rank, tl.reshape(col, (BLOCK,)), mask=keep)
        n_cand += tl.sum(keep.to(tl.int32), 0)
        if TOP_FROM_BOUND:
            above_top += tl.sum((keep & ((flat_key >> 24) > (bound >> 24))).to(tl.int32), 0)
    tl.debug_barrier()
    LAST: tl.constexpr = 2 if BUCKET_FINISH else 4  # radix steps over every candidate
    if TOP_FROM_BOUND & (above_top < K):
        top = (bound >> 24) << 24
        threshold, n_eq = _radix_prefix(row_key, n_cand, top, K - above_top, BLOCK, 1, LAST)
    else:
        threshold, n_eq = _radix_prefix(row_key, n_cand, tl.zeros((), dtype=tl.uint32), K, BLOCK, 0, LAST)
    if BUCKET_FINISH:  # the last two steps and the write over the K-th key's 16-bit bucket only
        n_bucket = _split_at_prefix(row_out, row_key, row_col, n_cand, threshold, BLOCK)
        _finish_candidates(row_out, row_key, row_col, n_bucket, threshold, n_eq, K - n_eq, K, BLOCK, 2)
    else:
        _write_selected(row_out, row_key, row_col, n_cand, threshold, K - n_eq, n_eq, 0, K, BLOCK)


@triton.jit
def _minmax_select(
    row_scores,
    row_out,
    row_key,
    row_col,
    row_ext,
    row_top,
    length,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
    GROUP: tl.constexpr,
    BOUND_STEPS: tl.constexpr,
    LAST_BITS: tl.constexpr,
    TOP_FROM_BOUND: tl.constexpr,
    BUCKET_FINISH: tl.constexpr,
    ROW_TOP: tl.constexpr,
    WHOLE_GROUPS: tl.constexpr,
):
    """Exact top-K of one row with L > K from its packed group extremes, whose row becomes, in place, the
    list of groups to read once the bound is known. A row of fewer than K groups has a bound that rests
    on minima; when those are low (an unordered row) the listed groups hold most of the row and radix
    passes over its keys would cost more than "compact"'s one histogram pass, so that path finishes it.
    (With K groups or more the maxima alone bound it: listing half the groups still leaves few keys.)"""
    n_full = length // GROUP
    if n_full * GROUP < K:
        _compact_select(row_scores, row_out, row_key, row_col, length, K, BLOCK)
    else:
        n_groups = tl.cdiv(length, GROUP)
        bound = _weighted_bound(
            row_ext, row_top, n_groups, n_full, K, BLOCK, GROUP, BOUND_STEPS, LAST_BITS, ROW_TOP
        )
        tl.debug_barrier()  # every thread has read the extremes before the group list overwrites them
        # The groups whose maximum reaches the bound hold every key that does, in column order. A packed word
        # compares with the bound (lower 16 bits zero) as its maximum does.
        lanes = tl.arange(0, BLOCK)
        n_listed = tl.zeros((), dtype=tl.int32)
        for first in range(0, n_groups, BLOCK):
            slot = first + lanes
            packed = tl.load(row_ext + slot, mask=slot < n_groups, other=0, cache_modifier=".cg")
            listed = (slot < n_groups) & (packed.to(tl.uint32, bitcast=True) >= bound)
            rank = n_listed + _running_count(listed.to(tl.int32)) - 1
            tl.debug_barrier()  # every lane has read its slot before any lane writes a lower one
            tl.store(row_ext + rank, slot, mask=listed)
            n_listed += tl.sum(listed.to(tl.int32), 0)
        tl.debug_barrier()  # list entries stored by some threads are read by others
        if (n_groups < K) & (n_listed * GROUP > length // 2):
            _compact_select(row_scores, row_out, row_key, row_col, length, K, BLOCK)
        else:
            _gather_candidates(
                row_scores, row_out, row_key, row_col, row_ext, n_listed, bound, length, K, BLOCK, GROUP,
                TOP_FROM_BOUND, BUCKET_FINISH, WHOLE_GROUPS,
            )  # fmt: skip


@triton.jit
def _select_topk_minmax_kernel(
    scores_ptr,
    lengths_ptr,
    out_ptr,
    cand_key_ptr,
    cand_col_ptr,
    ext_ptr,
    top_ptr,
    stride_row,
    stride_out,
    stride_cand,
    stride_stat,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
    GROUP: tl.constexpr,
    BOUND_STEPS: tl.constexpr,
    LAST_BITS: tl.constexpr,
    TOP_FROM_BOUND: tl.constexpr,
    BUCKET_FINISH: tl.constexpr,
    ROW_TOP: tl.constexpr,
    WHOLE_GROUPS: tl.constexpr,  # rows of whole groups: the gather loads groups unmasked by the length
):
    row = tl.program_id(0).to(tl.int64)
    length = tl.load(lengths_ptr + row).to(tl.int32)
    row_out = out_ptr + row * stride_out
    row_top = tl.load(top_ptr + row)
    if length <= K:
        _select_everything(row_out, length, K, BLOCK)
    else:
        _minmax_select(
            scores_ptr + row * stride_row, row_out, cand_key_ptr + row * stride_cand,
            cand_col_ptr + row * stride_cand, ext_ptr + row * stride_stat, row_top, length, K, BLOCK, GROUP,
            BOUND_STEPS, LAST_BITS, TOP_FROM_BOUND, BUCKET_FINISH, ROW_TOP, WHOLE_GROUPS,
        )  # fmt: skip
    # The writers of the next rows here start from 0 (an atomic max). One thread stores a scalar: after a barrier,
    # so that no warp reads the reset instead of the top (warps that disagree on it disagree on the branches).
    tl.debug_barrier()
    tl.store(top_ptr + row, 0)


# Under TRITON_INTERPRET no inline assembly runs: the packed extremes reduce with integer ops there.
INTERPRETED = not isinstance(_select_topk_minmax_kernel, triton.JITFunction)


def group_stats_buffers(rows: int, cols: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(uninitialised int32 [rows, ceil(cols / GROUP)] for the packed group extremes, int32 [rows] zeros for the
    top byte of each row's largest key). The select leaves the tops at zero again, so the pair can be reused."""
    extremes = torch.empty(rows, triton.cdiv(max(cols, 1), GROUP), dtype=torch.int32, device=device)
    return extremes, torch.zeros(rows, dtype=torch.int32, device=device)


def launch_minmax(
    scores: torch.Tensor,
    topk: int,
    lengths: torch.Tensor,
    out: torch.Tensor,
    cand_key: torch.Tensor,
    cand_col: torch.Tensor,
    block: int,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Select with `stats` = (packed group extremes, row tops) (`group_stats_buffers`, the score kernel's), or
    compute them here first. The extremes are overwritten (each row's group list) and the tops reset to 0."""
    rows, cols = scores.shape
    if stats is None:
        stats = group_stats_buffers(rows, cols, scores.device)
        _minmax_stats_kernel[(rows, triton.cdiv(cols, STATS_LANES))](
            scores, lengths, stats[0], stats[1], stats[0].shape[1], scores.stride(0), stats[0].stride(0),
            BLOCK=STATS_LANES, GROUP=GROUP, INTERPRETED=INTERPRETED, num_warps=8,
        )  # fmt: skip
    extremes, tops = stats
    _select_topk_minmax_kernel[(rows,)](
        scores, lengths, out, cand_key, cand_col, extremes, tops, scores.stride(0), out.stride(0),
        cand_key.stride(0), extremes.stride(0), K=topk, BLOCK=block, GROUP=GROUP, BOUND_STEPS=BOUND_STEPS,
        LAST_BITS=LAST_BITS, TOP_FROM_BOUND=TOP_FROM_BOUND, BUCKET_FINISH=BUCKET_FINISH, ROW_TOP=ROW_TOP,
        WHOLE_GROUPS=GROUP_LOADS and cols % GROUP == 0, num_warps=WARPS, maxnreg=MAX_REGISTERS,
    )  # fmt: skip
