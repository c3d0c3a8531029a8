"""The "bound" top-k: prune a row with a lower bound on its threshold before any full-row histogram.

"compact" pays a `tl.histogram` for every key of the row (the unit cost of these kernels),
and when the scores are narrow (indexer scores lie within an octave or two) its threshold bin holds
most of the row, so the candidate passes cost as much again. Here the first pass only takes maxima:
cut the row into groups of GROUP adjacent keys; the K largest group maxima are K distinct keys, so
the K-th largest maximum is a lower bound of the row's threshold. Its top 16 bits (two histogram
passes over L / GROUP maxima) are a looser bound, still exact to use. The second pass compacts the
keys at or above the bound and the radix passes run over those only: a few K of them on unordered
scores, up to about GROUP * K on smooth rows (there the K largest maxima are the K nearest groups),
more when many maxima share the bound's 16 bits.

Rows with fewer than K groups (L <= GROUP * (K - 1)) have no bound and go through "compact"'s path.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.topk.radix import (
    _compact_select,
    _finish_candidates,
    _ordered_key,
    _radix_prefix,
)

GROUP = 16  # keys per group maximum


@triton.jit
def _bound_select(
    row_scores, row_out, row_key, row_col, length, K: tl.constexpr, BLOCK: tl.constexpr, GROUP: tl.constexpr
):
    """Exact top-K of one row with L > K (`compact`'s kernel with GROUP > 0); the candidate scratch rows
    `row_key` and `row_col` also park the group maxima."""
    n_groups = tl.cdiv(length, GROUP)
    if n_groups < K:
        _compact_select(row_scores, row_out, row_key, row_col, length, K, BLOCK)
    else:
        # 1. Group maxima as ordered keys, parked in the candidate-column scratch (free until pass 2).
        group = tl.arange(0, BLOCK // GROUP)
        for first in range(0, length, BLOCK):
            col = first + group[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
            # Past the end: -inf, never above a group's valid keys; groups wholly past it are not stored.
            key = _ordered_key(tl.load(row_scores + col, mask=col < length, other=float("-inf")))
            slot = first // GROUP + group
            tl.store(row_col + slot, tl.max(key, 1).to(tl.int32, bitcast=True), mask=slot < n_groups)
        tl.debug_barrier()  # maxima stored by some threads are read by others
        # The top 16 bits of the K-th largest maximum (the rest zero): a lower bound of it.
        needed = tl.full((), K, tl.int32)
        bound, _ = _radix_prefix(row_col, n_groups, tl.zeros((), dtype=tl.uint32), needed, BLOCK, 0, 2)
        tl.debug_barrier()  # every thread has read the maxima before pass 2 overwrites them
        # 2. Keys at or above the bound become candidates, in column order (ties: lower columns win).
        lanes = tl.arange(0, BLOCK)
        n_cand = tl.zeros((), dtype=tl.int32)
        for first in range(0, length, BLOCK):
            col = first + lanes
            valid = col < length
            key = _ordered_key(tl.load(row_scores + col, mask=valid, other=0.0))
            keep = valid & (key >= bound)
            rank = n_cand + tl.cumsum(keep.to(tl.int32), 0) - 1
            tl.store(row_key + rank, key.to(tl.int32, bitcast=True), mask=keep)
            tl.store(row_col + rank, col, mask=keep)
            n_cand += tl.sum(keep.to(tl.int32), 0)
        tl.debug_barrier()
        no_prefix = tl.zeros((), dtype=tl.uint32)
        _finish_candidates(row_out, row_key, row_col, n_cand, no_prefix, K, 0, K, BLOCK, 0)
