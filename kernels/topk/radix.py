"""Radix-select pieces shared by the top-k kernels (kernel.py, cooperative.py, bound.py).

Scores become order-preserving uint32 keys; a 256-bin histogram of one 8-bit digit over the keys that
match the current prefix (`_digit_histogram`) gives the bin holding the k-th largest key; the few keys
left in that bin are finished by radix passes over a candidate list.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _ordered_key(x):
    """Map fp32 to uint32 so that unsigned order equals float order (-inf lowest)."""
    bits = x.to(tl.uint32, bitcast=True)
    negative = (bits >> 31) == 1
    return tl.where(negative, ~bits, bits | 0x80000000)


@triton.jit
def _running_count(counts, PER: tl.constexpr = 8):
    """Inclusive prefix sum of a 1-D int32 block, in two levels: the sums of PER adjacent lanes, a cumsum over
    those, a cumsum within each PER. Triton 3.6 scans a flat 2048-lane block (8 warps) in ~430 SASS
    instructions, ~300 this way (a compaction loop compiled for sm_90a)."""
    N: tl.constexpr = counts.shape[0]
    grid = tl.reshape(counts, (N // PER, PER))
    sums = tl.sum(grid, 1)
    return tl.reshape((tl.cumsum(sums, 0) - sums)[:, None] + tl.cumsum(grid, 1), (N,))


@triton.jit
def _digit_histogram(digit, match, BINS: tl.constexpr = 256):
    """BINS-bin histogram of the `digit`s where `match` holds. The other lanes land in bin 0 and are
    taken out again: Triton 3.6 builds a histogram from a ballot per bin-index bit and a popcount per bin
    and lane, so 256 bins cost 664 SASS instructions per 2048 keys (8 warps) where the 512 that a separate
    discard bin needed cost 904 (the dump of that loop, ptxas 12.8). Triton 3.9 uses shared-memory atomics."""
    hist = tl.histogram(tl.where(match, digit, 0), BINS)
    misses = tl.sum(tl.where(match, 0, 1), 0)
    return hist - tl.where(tl.arange(0, BINS) == 0, misses, 0)


@triton.jit
def _crossing_bin(hist, needed):
    """(bin holding the `needed`-th largest key, keys in bins above it) of a 256-bin histogram, or of a
    512-bin one whose upper half (a discard bin) is ignored."""
    bins = tl.arange(0, hist.shape[0])
    hist = tl.where(bins < 256, hist, 0)
    above = tl.sum(hist, 0) - tl.cumsum(hist, 0)  # keys in bins strictly above each bin
    crossing = (above < needed) & (above + hist >= needed)
    return tl.sum(tl.where(crossing, bins, 0), 0), tl.sum(tl.where(crossing, above, 0), 0)


@triton.jit
def _radix_prefix(
    row_keys, n, prefix, needed, BLOCK: tl.constexpr, FIRST_STEP: tl.constexpr, LAST_STEP: tl.constexpr
):
    """Radix steps FIRST_STEP .. LAST_STEP - 1 over the n keys at row_keys (read past L1, ".cg"): each adds
    one 8-bit digit to `prefix` (the bits above FIRST_STEP), the bin holding the `needed`-th largest of the
    keys that match it so far. Returns (prefix, how many keys equal to it on these bits are still needed)."""
    lanes = tl.arange(0, BLOCK)
    prefix = prefix.to(tl.uint32)
    remaining = needed
    for step in tl.static_range(FIRST_STEP, LAST_STEP):
        shift = 24 - 8 * step  # constexpr: the loop is unrolled
        hist = tl.zeros((256,), dtype=tl.int32)
        for first in range(0, n, BLOCK):
            slot = first + lanes
            key = tl.load(row_keys + slot, mask=slot < n, other=0, cache_modifier=".cg").to(
                tl.uint32, bitcast=True
            )
            match = (slot < n) & (((key >> shift) >> 8) == ((prefix >> shift) >> 8))  # step 0: every key
            hist += _digit_histogram(((key >> shift) & 255).to(tl.int32), match)
        chosen, n_above_bin = _crossing_bin(hist, remaining)
        remaining -= n_above_bin
        prefix = prefix | (chosen.to(tl.uint32) << shift)
    return prefix, remaining


@triton.jit
def _finish_candidates(
    row_out,
    row_cand_key,
    row_cand_col,
    n_cand,
    prefix,
    needed,
    written,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
    FIRST_STEP: tl.constexpr,
):
    """Write the `needed` best of the `n_cand` candidate keys after slot `written`.

    The candidates share the key bits above radix step FIRST_STEP (given in `prefix`) and are in
    column order, so among keys equal to the threshold the lower columns win. They are read past L1
    (".cg"): in cooperative.py other programs wrote them.
    """
    prefix, remaining = _radix_prefix(row_cand_key, n_cand, prefix, needed, BLOCK, FIRST_STEP, 4)
    _write_selected(row_out, row_cand_key, row_cand_col, n_cand, prefix, needed - remaining, remaining, written, K,
                    BLOCK)  # fmt: skip


@triton.jit
def _candidates_at(row_cand_key, row_cand_col, slot, n_cand):
    """(uint32 keys, columns, which slots hold a candidate) of the candidate list at `slot`, read past L1
    (".cg": other threads, or in cooperative.py other programs, wrote them)."""
    ok = slot < n_cand
    key = tl.load(row_cand_key + slot, mask=ok, other=0, cache_modifier=".cg").to(tl.uint32, bitcast=True)
    col = tl.load(row_cand_col + slot, mask=ok, other=0, cache_modifier=".cg")
    return key, col, ok


@triton.jit
def _split_at_prefix(row_out, row_cand_key, row_cand_col, n_cand, prefix, BLOCK: tl.constexpr):
    """One pass over the candidates once the top 16 bits of the K-th key are known (`prefix`): the keys above
    them on those bits are selected (their columns written from slot 0 on, column order), the keys that share
    them are compacted in place to the front of the candidate list, still in column order. Returns their count.
    On indexer rows a few dozen of ~4 000 candidates share the K-th key's top 16 bits, so the last two radix
    steps and the final write read one block instead of every candidate."""
    lanes = tl.arange(0, BLOCK)
    top = prefix >> 16
    n_above = tl.zeros((), dtype=tl.int32)
    n_bucket = tl.zeros((), dtype=tl.int32)
    for first in range(0, n_cand, BLOCK):
        slot = first + lanes
        key, col, ok = _candidates_at(row_cand_key, row_cand_col, slot, n_cand)
        above = ok & ((key >> 16) > top)
        bucket = ok & ((key >> 16) == top)
        both = _running_count(above.to(tl.int32) | (bucket.to(tl.int32) << 16))
        tl.debug_barrier()  # every lane has read its slot before any lane writes a lower one
        tl.store(row_out + n_above + (both & 0xFFFF) - 1, col, mask=above)
        rank = n_bucket + (both >> 16) - 1
        tl.store(row_cand_key + rank, key.to(tl.int32, bitcast=True), mask=bucket)
        tl.store(row_cand_col + rank, col, mask=bucket)
        n_above += tl.sum(above.to(tl.int32), 0)
        n_bucket += tl.sum(bucket.to(tl.int32), 0)
    tl.debug_barrier()  # the compacted entries are read by other threads
    return n_bucket


@triton.jit
def _write_selected(
    row_out,
    row_cand_key,
    row_cand_col,
    n_cand,
    threshold,
    n_gt,
    n_eq,
    written,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Final pass over the candidates: the `n_gt` keys above the `threshold` key, then the first `n_eq` equal
    to it (lower columns first), after slot `written`."""
    lanes = tl.arange(0, BLOCK)
    taken_gt = tl.zeros((), dtype=tl.int32)
    taken_eq = tl.zeros((), dtype=tl.int32)
    for first in range(0, n_cand, BLOCK):
        slot = first + lanes
        key, col, ok = _candidates_at(row_cand_key, row_cand_col, slot, n_cand)
        gt_mask = ok & (key > threshold)
        eq_mask = ok & (key == threshold)
        tl.static_assert(BLOCK < 65536)  # each count fits 16 bits, so one scan gives both
        both = _running_count(gt_mask.to(tl.int32) | (eq_mask.to(tl.int32) << 16))
        rank_gt = taken_gt + (both & 0xFFFF) - 1
        rank_eq = taken_eq + (both >> 16) - 1
        keep_eq = eq_mask & (rank_eq < n_eq)
        slot_out = written + tl.where(gt_mask, rank_gt, n_gt + rank_eq)
        tl.store(row_out + slot_out, col, mask=(gt_mask | keep_eq) & (slot_out < K))
        taken_gt += tl.sum(gt_mask.to(tl.int32), 0)
        taken_eq += tl.sum(eq_mask.to(tl.int32), 0)


@triton.jit
def _select_everything(row_out, length, K: tl.constexpr, BLOCK: tl.constexpr):
    """A row with L <= K selects 0 .. L-1 and pads with -1."""
    lanes = tl.arange(0, BLOCK)
    for first in range(0, K, BLOCK):
        slot = first + lanes
        tl.store(row_out + slot, tl.where(slot < length, slot, -1), mask=slot < K)


@triton.jit
def _total_at(total, chosen):
    """total[chosen] of a histogram."""
    return tl.sum(tl.where(tl.arange(0, total.shape[0]) == chosen, total, 0), 0)


@triton.jit
def _compact_select(
    row_scores, row_out, row_cand_key, row_cand_col, length, K: tl.constexpr, BLOCK: tl.constexpr
):
    """Exact top-K of one row with L > K: two row reads, then radix passes over the candidates."""
    lanes = tl.arange(0, BLOCK)
    # Pass 1: histogram of the top 8 key bits over the whole row.
    hist = tl.zeros((256,), dtype=tl.int32)
    for first in range(0, length, BLOCK):
        col = first + lanes
        valid = col < length
        key = _ordered_key(tl.load(row_scores + col, mask=valid, other=0.0))
        hist += _digit_histogram((key >> 24).to(tl.int32), valid)
    top_bin, n_above = _crossing_bin(hist, K)
    needed = K - n_above
    # Pass 2: keys above the threshold bin are final; keys inside it become candidates.
    written = tl.zeros((), dtype=tl.int32)
    n_cand = tl.zeros((), dtype=tl.int32)
    for first in range(0, length, BLOCK):
        col = first + lanes
        valid = col < length
        key = _ordered_key(tl.load(row_scores + col, mask=valid, other=0.0))
        digit = (key >> 24).to(tl.int32)
        above_mask = valid & (digit > top_bin)
        cand_mask = valid & (digit == top_bin)
        rank_above = written + tl.cumsum(above_mask.to(tl.int32), 0) - 1
        rank_cand = n_cand + tl.cumsum(cand_mask.to(tl.int32), 0) - 1
        tl.store(row_out + rank_above, col, mask=above_mask)
        tl.store(row_cand_key + rank_cand, key.to(tl.int32, bitcast=True), mask=cand_mask)
        tl.store(row_cand_col + rank_cand, col, mask=cand_mask)
        written += tl.sum(above_mask.to(tl.int32), 0)
        n_cand += tl.sum(cand_mask.to(tl.int32), 0)
    prefix = top_bin.to(tl.uint32) << 24
    _finish_candidates(row_out, row_cand_key, row_cand_col, n_cand, prefix, needed, written, K, BLOCK, 1)
