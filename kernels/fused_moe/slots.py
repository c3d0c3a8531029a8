"""The fused MoE's bookkeeping around its two GEMMs: slots sorted by expert, and each token's slot rows summed.

Both were chains of PyTorch ops (a bincount, a stable argsort of int64 keys, searchsorted, scatters: ~35
launches, 0.5 ms at 16K tokens on an H200, plus a 0.27 ms sum and cast), a fifth of the whole MoE. Here the
sort is two Triton launches (per-chunk expert counts; then each chunk sorts its slots in registers and places
them after what earlier chunks hold) and the sum one. `sort_slots_by_expert_torch` is the oracle of the sort.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SORT_CHUNK = 1024  # slots per program of the sort kernels (fewer when there are fewer slots)
SORT_ROWS = 32  # rows of chunk counts (and blocks) per step of the placing kernel
COMBINE_BLOCK = 1024  # hidden columns per program of the combine kernel


@triton.jit
def _chunk_counts_kernel(ids_ptr, counts_ptr, n_slots, BINS: tl.constexpr, CHUNK: tl.constexpr):
    """counts[chunk, e] = slots of expert e among this chunk's CHUNK slots (bin BINS - 1: past the end)."""
    chunk = tl.program_id(0)
    offs = chunk * CHUNK + tl.arange(0, CHUNK)
    ids = tl.load(ids_ptr + offs, mask=offs < n_slots, other=BINS - 1).to(tl.int32)
    tl.store(counts_ptr + chunk * BINS + tl.arange(0, BINS), tl.histogram(ids, BINS))


@triton.jit
def _place_slots_kernel(
    ids_ptr,
    counts_ptr,
    base_ptr,
    sorted_slots_ptr,
    block_expert_ptr,
    n_blocks_ptr,
    n_slots,
    n_chunks,
    max_blocks,
    E: tl.constexpr,
    BINS: tl.constexpr,  # a power of two > E
    BLOCK_M: tl.constexpr,
    CHUNK: tl.constexpr,
    ROWS: tl.constexpr,  # chunk-count rows summed per step
):
    """One program per chunk of slots. From every chunk's counts: where each expert's padded segment starts
    and how many of its slots earlier chunks hold; then the chunk's slots sorted by (expert, slot) in
    registers land at segment start + earlier + their rank. Program 0 also writes the block → expert map."""
    chunk = tl.program_id(0)
    bins = tl.arange(0, BINS)
    total = tl.zeros((BINS,), dtype=tl.int32)
    earlier = tl.zeros((BINS,), dtype=tl.int32)
    for first in range(0, n_chunks, ROWS):
        rows = first + tl.arange(0, ROWS)
        tile = tl.load(
            counts_ptr + rows[:, None] * BINS + bins[None, :], mask=(rows < n_chunks)[:, None], other=0
        )
        total += tl.sum(tile, axis=0)
        earlier += tl.sum(tl.where((rows < chunk)[:, None], tile, 0), axis=0)
    padded = tl.where(bins < E, (total + BLOCK_M - 1) // BLOCK_M * BLOCK_M, 0)
    padded_start = tl.cumsum(padded, axis=0) - padded
    here = tl.load(counts_ptr + chunk * BINS + bins)
    first_in_chunk = tl.cumsum(here, axis=0) - here  # where expert e's slots begin in the sorted chunk
    tl.store(base_ptr + chunk * BINS + bins, padded_start + earlier - first_in_chunk)
    tl.debug_barrier()  # the gather below reads what other threads of this program just stored
    local = tl.arange(0, CHUNK)
    offs = chunk * CHUNK + local
    ids = tl.load(ids_ptr + offs, mask=offs < n_slots, other=BINS - 1).to(tl.int32)
    key = tl.sort(ids * CHUNK + local)  # by expert, then slot: a stable order
    expert = key // CHUNK
    place = tl.load(base_ptr + chunk * BINS + expert) + local
    tl.store(sorted_slots_ptr + place, chunk * CHUNK + key % CHUNK, mask=expert < E)
    if chunk == 0:  # the padding of each segment (slot n_slots), the block count, the block -> expert map
        fill = padded - tl.where(bins < E, total, 0)
        for first in range(0, BLOCK_M, ROWS):
            pad = first + tl.arange(0, ROWS)
            where = (padded_start + padded - fill)[:, None] + pad[None, :]
            tl.store(sorted_slots_ptr + where, n_slots, mask=pad[None, :] < fill[:, None])
        tl.store(n_blocks_ptr, tl.sum(padded) // BLOCK_M)
        padded_end = tl.where(bins < E, padded_start + padded, 2**30)
        for first in range(0, max_blocks, ROWS):
            block = first + tl.arange(0, ROWS)
            before = tl.sum((padded_end[None, :] <= (block * BLOCK_M)[:, None]).to(tl.int32), axis=1)
            tl.store(block_expert_ptr + block, tl.minimum(before, E - 1), mask=block < max_blocks)


@triton.jit
def _combine_slots_kernel(y_ptr, out_ptr, D, stride_ys, stride_ot, TOPK: tl.constexpr, BLOCK: tl.constexpr):
    """out[t] = sum over j of y[t * TOPK + j], in fp32, stored in out's dtype."""
    token = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < D
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in tl.static_range(TOPK):
        acc += tl.load(y_ptr + (token * TOPK + j) * stride_ys + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + token * stride_ot + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


def sort_slots_by_expert(
    topk_ids: torch.Tensor, experts: int, block_m: int, *, chunk_size: int = SORT_CHUNK
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slots (token * k + j) grouped by expert in slot order, each expert's segment padded to block_m
    (`chunk_size`, a power of two: slots per program; tests make it small to run many chunks).

    Returns (sorted_slots int32 [max_rows] with n_slots as padding up to n_blocks * block_m (unset after), block_expert
    int32 [max_blocks] (experts - 1 past the used blocks), n_blocks int32 [1]); sizes are upper bounds so no host
    sync is needed.
    """
    flat = topk_ids.reshape(-1).contiguous()
    n_slots, device = flat.shape[0], flat.device
    max_blocks = triton.cdiv(n_slots, block_m) + experts
    if n_slots == 0:
        zero = torch.zeros(1, dtype=torch.int32, device=device)
        return zero.new_zeros(max_blocks * block_m), zero.new_full((max_blocks,), experts - 1), zero
    # No fills: the kernels write every entry the GEMMs read (rows past n_blocks * block_m are never read).
    sorted_slots = torch.empty(max_blocks * block_m, dtype=torch.int32, device=device)
    block_expert = torch.empty(max_blocks, dtype=torch.int32, device=device)
    n_blocks = torch.empty(1, dtype=torch.int32, device=device)
    chunk = min(chunk_size, max(16, triton.next_power_of_2(n_slots)))  # small batches sort a small chunk
    bins, n_chunks = triton.next_power_of_2(experts + 1), triton.cdiv(n_slots, chunk)
    counts = torch.empty(n_chunks, bins, dtype=torch.int32, device=device)
    base = torch.empty_like(counts)
    _chunk_counts_kernel[(n_chunks,)](flat, counts, n_slots, BINS=bins, CHUNK=chunk, num_warps=4)
    _place_slots_kernel[(n_chunks,)](
        flat, counts, base, sorted_slots, block_expert, n_blocks, n_slots, n_chunks, max_blocks,
        E=experts, BINS=bins, BLOCK_M=block_m, CHUNK=chunk, ROWS=SORT_ROWS, num_warps=8,
    )  # fmt: skip
    return sorted_slots, block_expert, n_blocks


def combine_slots(per_slot: torch.Tensor, tokens: int, top: int, out_dtype: torch.dtype) -> torch.Tensor:
    """[tokens * top, D] slot rows → [tokens, D]: each token's top rows summed in fp32, cast to out_dtype."""
    hidden = per_slot.shape[1]
    out = torch.empty(tokens, hidden, dtype=out_dtype, device=per_slot.device)
    grid = (tokens, triton.cdiv(hidden, COMBINE_BLOCK))
    _combine_slots_kernel[grid](
        per_slot, out, hidden, per_slot.stride(0), out.stride(0), TOPK=top, BLOCK=COMBINE_BLOCK, num_warps=4
    )
    return out


def sort_slots_by_expert_torch(
    topk_ids: torch.Tensor, experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`sort_slots_by_expert` in PyTorch (bincount, stable argsort, scatter): the oracle of the Triton sort."""
    flat = topk_ids.reshape(-1).to(torch.int64)  # [n_slots]
    n_slots = flat.shape[0]
    counts = torch.bincount(flat, minlength=experts)  # [E]
    padded = (counts + block_m - 1) // block_m * block_m  # [E]
    padded_end = torch.cumsum(padded, 0)  # [E]
    padded_start = padded_end - padded
    order = torch.argsort(flat, stable=True)  # [n_slots] slots sorted by expert
    expert_sorted = flat[order]
    rank = torch.arange(n_slots, device=flat.device) - (torch.cumsum(counts, 0) - counts)[expert_sorted]
    max_blocks = triton.cdiv(n_slots, block_m) + experts
    sorted_slots = torch.full((max_blocks * block_m,), n_slots, dtype=torch.int32, device=flat.device)
    sorted_slots[padded_start[expert_sorted] + rank] = order.to(torch.int32)
    block_start = torch.arange(max_blocks, device=flat.device) * block_m  # [max_blocks]
    block_expert = torch.searchsorted(padded_end, block_start, right=True).clamp(max=experts - 1)
    n_blocks = (padded_end[-1:] // block_m).to(torch.int32)  # [1]
    return sorted_slots, block_expert.to(torch.int32), n_blocks
