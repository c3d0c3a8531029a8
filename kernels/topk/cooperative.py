"""The "cooperative" top-k: the two-level slice radix select of "split" in one launch.

"split" needs six launches for one decode row (slice histograms, a per-row level program, and
again, then compaction and a per-row finish); in a CUDA graph the launches alone are about a third
of its 46 µs. Here one program per slice keeps its slice's keys in registers for the whole
selection and the programs of a row meet at grid barriers instead of kernel boundaries:

1. histogram the top 8 key bits of the slice, add it into the row's histogram (atomics);
2. every program reads the row histogram and derives the same threshold bin; histogram the next
   8 bits of its keys inside that bin into the row's second histogram; publish how many of its keys
   lie above the bin;
3. from the second histogram, the 16-bit threshold prefix; write the slice's keys above the first
   bin after the counts of the slices before it; publish the counts for level 2;
4. write the keys above the 16-bit prefix and compact the ones equal to it (candidates);
5. the last program to arrive finishes the row over its candidates (the last two radix digits).

Output slots come from prefix sums over the slices in column order, never from atomics, so the
result is deterministic and ties at the threshold go to the lower columns, as in the other methods.

A barrier is only safe when every program of the grid is resident at once: the launcher runs the
fused kernel only when rows x slices fits one program per SM, and otherwise (and on the CPU
interpreter, which runs programs one after another) launches the same kernel once per phase.
Kernels running beside it on other streams only delay some programs' start (an SM holds several
of these); one that never finished and held every SM would hang it. Triton's
`launch_cooperative_grid` (the driver then guarantees co-residency) would close that gap; it is not
used because it has not been tried under CUDA graph capture on the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.topk.radix import (
    _crossing_bin,
    _digit_histogram,
    _finish_candidates,
    _ordered_key,
    _select_everything,
    _total_at,
)

# Per-row sync words: two 256-bin histograms (512 words apart) and four barrier counters (zeroed before a launch),
# then three per-slice count arrays: above bin 1, above the 16-bit prefix, equal to it.
HIST2_AT, BARRIERS_AT, COUNTS_AT = 512, 1024, 1028
_HIST2, _BARRIERS, _COUNTS = (tl.constexpr(at) for at in (HIST2_AT, BARRIERS_AT, COUNTS_AT))
MAX_SLICE = 8192  # keys per program held in registers (32 per thread at 8 warps)
PHASES = 5


@triton.jit
def _grid_barrier(counter, expected):
    """Wait until `expected` programs have arrived at `counter` (a zeroed int32)."""
    tl.debug_barrier()  # the whole program's writes happen before its arrival is published
    arrived = tl.atomic_add(counter, 1, sem="acq_rel") + 1
    while arrived < expected:
        arrived = tl.atomic_add(counter, 0, sem="acquire")
    tl.debug_barrier()


@triton.jit
def _slots_before(counts, part, PART_BLOCK: tl.constexpr):
    """Sum of the published counts of slices 0 .. part-1 (read past L1: other programs wrote them)."""
    parts = tl.arange(0, PART_BLOCK)
    return tl.sum(tl.load(counts + parts, mask=parts < part, other=0, cache_modifier=".cg"), 0)


@triton.jit
def _cooperative_topk_kernel(
    scores_ptr,
    lengths_ptr,
    out_ptr,
    sync_ptr,
    cand_key_ptr,
    cand_col_ptr,
    parts,
    stride_row,
    stride_sync,
    stride_out,
    stride_cand,
    K: tl.constexpr,
    SLICE: tl.constexpr,
    PART_BLOCK: tl.constexpr,
    BLOCK: tl.constexpr,
    PHASE: tl.constexpr,
):
    """Grid (rows, slices). PHASE 0 runs all five phases with barriers; PHASE p runs phase p only."""
    row, part = tl.program_id(0).to(tl.int64), tl.program_id(1)
    length = tl.load(lengths_ptr + row).to(tl.int32)
    row_out = out_ptr + row * stride_out
    sync = sync_ptr + row * stride_sync
    counts = sync + _COUNTS
    bins = tl.arange(0, 256)
    if length <= K:  # the same for every program of the row: none of them waits at a barrier
        if (part == 0) & ((PHASE == 0) | (PHASE == 5)):
            _select_everything(row_out, length, K, BLOCK)
    else:
        col = part * SLICE + tl.arange(0, SLICE)
        valid = col < length
        key = _ordered_key(tl.load(scores_ptr + row * stride_row + col, mask=valid, other=0.0))
        digit1 = (key >> 24).to(tl.int32)
        digit2 = ((key >> 16) & 255).to(tl.int32)
        if (PHASE == 0) | (PHASE == 1):
            hist = _digit_histogram(digit1, valid)
            tl.atomic_add(sync + bins, hist, mask=hist > 0, sem="relaxed")
        if PHASE == 0:
            _grid_barrier(sync + _BARRIERS, parts)
        bin1, n_above1 = _crossing_bin(tl.load(sync + bins, cache_modifier=".cg"), K)
        above1 = valid & (digit1 > bin1)
        inside1 = valid & (digit1 == bin1)
        if (PHASE == 0) | (PHASE == 2):
            hist = _digit_histogram(digit2, inside1)
            tl.atomic_add(sync + _HIST2 + bins, hist, mask=hist > 0, sem="relaxed")
            tl.store(counts + part, tl.sum(above1.to(tl.int32), 0))
        if PHASE == 0:
            _grid_barrier(sync + _BARRIERS + 1, parts)
        hist2 = tl.load(sync + _HIST2 + bins, cache_modifier=".cg")
        bin2, n_above2 = _crossing_bin(hist2, K - n_above1)
        above2 = inside1 & (digit2 > bin2)
        equal2 = inside1 & (digit2 == bin2)
        if (PHASE == 0) | (PHASE == 3):
            rank = _slots_before(counts, part, PART_BLOCK) + tl.cumsum(above1.to(tl.int32), 0) - 1
            tl.store(row_out + rank, col, mask=above1)
            tl.store(counts + parts + part, tl.sum(above2.to(tl.int32), 0))
            tl.store(counts + 2 * parts + part, tl.sum(equal2.to(tl.int32), 0))
        if PHASE == 0:
            _grid_barrier(sync + _BARRIERS + 2, parts)
        if (PHASE == 0) | (PHASE == 4):
            first_above = n_above1 + _slots_before(counts + parts, part, PART_BLOCK)
            rank = first_above + tl.cumsum(above2.to(tl.int32), 0) - 1
            tl.store(row_out + rank, col, mask=above2)
            first_cand = _slots_before(counts + 2 * parts, part, PART_BLOCK)
            rank = row * stride_cand + first_cand + tl.cumsum(equal2.to(tl.int32), 0) - 1
            tl.store(cand_key_ptr + rank, key.to(tl.int32, bitcast=True), mask=equal2)
            tl.store(cand_col_ptr + rank, col, mask=equal2)
        if PHASE == 0:
            tl.debug_barrier()
            finisher = tl.atomic_add(sync + _BARRIERS + 3, 1, sem="acq_rel") == parts - 1
        else:
            finisher = (PHASE == 5) & (part == 0)
        if finisher:
            written = n_above1 + n_above2
            prefix = (bin1.to(tl.uint32) << 24) | (bin2.to(tl.uint32) << 16)
            _finish_candidates(
                row_out, cand_key_ptr + row * stride_cand, cand_col_ptr + row * stride_cand,
                _total_at(hist2, bin2), prefix, K - written, written, K, BLOCK, 2,
            )  # fmt: skip


# TRITON_INTERPRET=1 turns kernels into Python run one program after another, on any device's tensors:
# a barrier would never fill, so the phases are launched one by one there.
INTERPRETED = not isinstance(_cooperative_topk_kernel, triton.JITFunction)


def cooperative_slices(rows: int, cols: int, slice_size: int, device: torch.device) -> tuple[int, int] | None:
    """(slice size, slices per row) for one fused launch, or None when the grid cannot be resident at once
    (or kernels are interpreted). The slice grows (up to MAX_SLICE) until rows x slices fits one program
    per SM."""
    if device.type != "cuda" or INTERPRETED:
        return None
    programs = torch.cuda.get_device_properties(device).multi_processor_count
    size = min(slice_size, MAX_SLICE)
    while rows * triton.cdiv(max(cols, 1), size) > programs and size < MAX_SLICE:
        size *= 2
    parts = triton.cdiv(max(cols, 1), size)
    return (size, parts) if rows * parts <= programs else None


def launch_cooperative(
    scores: torch.Tensor,
    topk: int,
    lengths: torch.Tensor,
    out: torch.Tensor,
    cand_key: torch.Tensor,
    cand_col: torch.Tensor,
    slice_size: int,
    block: int,
) -> bool:
    """On the GPU one fused launch (plus the zeroing of the sync words), or False when the grid would
    not be resident at once and the caller must use another method; under the interpreter one launch
    per phase."""
    rows, cols = scores.shape
    fused = cooperative_slices(rows, cols, slice_size, scores.device)
    if fused is None and not INTERPRETED:
        return False
    size, parts = fused if fused is not None else (slice_size, triton.cdiv(max(cols, 1), slice_size))
    sync = torch.zeros(rows, COUNTS_AT + 3 * parts, dtype=torch.int32, device=scores.device)
    common = {"K": topk, "SLICE": size, "PART_BLOCK": max(2, triton.next_power_of_2(parts)), "BLOCK": block}
    args = (scores, lengths, out, sync, cand_key, cand_col, parts, scores.stride(0), sync.stride(0))
    args += (out.stride(0), cand_key.stride(0))
    # The interpreter runs programs one after another, so a barrier would never fill: one launch per phase.
    for phase in [0] if fused is not None else range(1, PHASES + 1):
        _cooperative_topk_kernel[(rows, parts)](*args, PHASE=phase, num_warps=8, **common)
    return True
