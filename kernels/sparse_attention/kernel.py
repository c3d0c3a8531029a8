"""Triton top-k sparse attention for prefill: one program per (query block, kv head).

A block holds BLOCK_Q adjacent queries; with GQA their G = Hq / Hkv heads that share the kv
head are stacked into BLOCK_Q * G matrix rows, so one gathered key tile feeds a tensor-core
product for all of them. The program walks the sorted union of the block's selected keys
(`union.py`) in tiles, masks each (query, key) pair with the query's bit in the key's owner word
(one vector load per tile; row r tests bit r // G), and keeps an exact
online softmax (running max and sum, rescaled per tile). Rows that never see a key end with
sum 0 and are written as zeros instead of 0/0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._validate import require
from kernels.sparse_attention.reference import check_sparse_attention_args
from kernels.sparse_attention.union import MAX_BLOCK_Q, BlockUnion, build_block_union

_LOG2E = 1.4426950408889634


@triton.jit
def _sparse_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    union_ptr,
    counts_ptr,
    owners_ptr,
    T,
    qk_scale,
    stride_qt,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_union,
    stride_owners,
    G: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    OFFSETS_32: tl.constexpr,  # every gathered K/V element offset fits int32 (cheaper address arithmetic)
):
    block = tl.program_id(0)
    kv_head = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    token = block * BLOCK_Q + rows // G  # [BLOCK_M]
    head = kv_head * G + rows % G
    row_ok = (rows < BLOCK_Q * G) & (token < T)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(
        q_ptr + token[:, None].to(tl.int64) * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )  # [BLOCK_M, BLOCK_D]
    n_keys = tl.load(counts_ptr + block)
    row_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    # [BLOCK_M]: the row's bit in an owner word (its query within the block), 0 for rows that hold no query
    # (owner words only carry bits of real queries, so this one mask also keeps padding rows empty).
    row_bit = tl.where(row_ok, 1 << tl.minimum(rows // G, 31), 0)
    union_row = block.to(tl.int64) * stride_union
    owners_row = block.to(tl.int64) * stride_owners
    for first in range(0, n_keys, BLOCK_N):
        # Unmasked: the union rows are a whole number of tiles wide (`launch_sparse_attention` pads them), and
        # slots past n_keys hold owner word 0, so their keys are never picked; their positions (padding) are
        # replaced by key 0 so the gathers stay in bounds.
        slot = first + tl.arange(0, BLOCK_N)
        key_pos = tl.where(slot < n_keys, tl.load(union_ptr + union_row + slot), 0)
        if not OFFSETS_32:
            key_pos = key_pos.to(tl.int64)
        owners = tl.load(owners_ptr + owners_row + slot)
        k_ptrs = k_ptr + key_pos[None, :] * stride_ks + kv_head * stride_kh + offs_d[:, None]
        v_ptrs = v_ptr + key_pos[:, None] * stride_vs + kv_head * stride_vh + offs_d[None, :]
        if D == BLOCK_D:  # no predicates on the gathers: each costs a few integer instructions per load
            k_tile = tl.load(k_ptrs)  # [BLOCK_D, BLOCK_N]
            v_tile = tl.load(v_ptrs)  # [BLOCK_N, BLOCK_D]
        else:
            k_tile = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
            v_tile = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        picked = (owners[None, :] & row_bit[:, None]) != 0  # [BLOCK_M, BLOCK_N]
        logits = tl.where(picked, tl.dot(q, k_tile, input_precision=PRECISION), float("-inf"))
        new_max = tl.maximum(row_max, tl.max(logits, 1) * qk_scale)  # log2 domain
        # A row with nothing picked yet keeps max -inf; shift by 0 there so exp2 gives 0, not NaN.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        probs = tl.exp2(logits * qk_scale - shift[:, None])  # one FFMA per entry
        rescale = tl.exp2(row_max - shift)
        row_sum = row_sum * rescale + tl.sum(probs, 1)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v_tile.dtype), v_tile, input_precision=PRECISION)
        row_max = new_max
    out = acc / tl.where(row_sum == 0.0, 1.0, row_sum)[:, None]
    tl.store(
        o_ptr + token[:, None].to(tl.int64) * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )


def default_block_q(group: int) -> int:
    """Queries per block so that BLOCK_Q * G fills about 64 matrix rows (16 rows minimum), at most one
    per bit of an owner word (MHA, G = 1: 32 queries)."""
    return max(1, min(MAX_BLOCK_Q, 64 // group))


def launch_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    union: BlockUnion,
    block_q: int,
    scale: float,
    out: torch.Tensor,
    *,
    block_n: int = 32,
    num_warps: int = 4,
    num_stages: int = 2,
    max_registers: int | None = None,
) -> None:
    """Run the prefill kernel over a prepared block union; no checks.

    Default tiles: the fastest of the sweep on the H200 (`bench.py`): 8 queries x 32 keys, 4 warps since session
    11; 2 stages since session 16's leaner loop (332.6 against 318.0 TFLOP/s useful for 3 stages on sink + local
    selections at 32K, 352 against 336 computed on uniform ones, in one sweep; session 11's loop preferred 3).
    `max_registers` (ptxas' cap per thread, 0: none) defaults to 128 for 16-bit inputs on 4 warps, so four
    programs share an SM (133 uncapped; session 16 on the H200: 310 against 290 TFLOP/s useful on sink + local
    at 32K)."""
    tokens, q_heads, dim = q.shape
    kv_heads = k.shape[1]
    group = q_heads // kv_heads
    if tokens == 0:
        return
    union = _tile_aligned(union, block_n)
    block_m = max(16, triton.next_power_of_2(block_q * group))
    block_d = max(16, triton.next_power_of_2(dim))
    precision = "tf32x3" if q.dtype == torch.float32 else "tf32"
    sixteen_bit = q.dtype in (torch.bfloat16, torch.float16)
    cap = (128 if sixteen_bit and num_warps == 4 else 0) if max_registers is None else max_registers
    grid = (union.keys.shape[0], kv_heads)
    _sparse_attention_kernel[grid](
        q, k, v, out, union.keys, union.counts, union.owners, tokens, scale * _LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), union.keys.stride(0), union.owners.stride(0),
        G=group, D=dim, BLOCK_D=block_d, BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=block_n,
        PRECISION=precision, OFFSETS_32=max(_largest_offset(k), _largest_offset(v)) < 2**31,
        num_warps=num_warps, num_stages=num_stages, **({"maxnreg": cap} if cap else {}),
    )  # fmt: skip


def _largest_offset(t: torch.Tensor) -> int:
    """The largest element offset a gather from t can form (its last element's, for any strides >= 0)."""
    return sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))


def _tile_aligned(union: BlockUnion, block_n: int) -> BlockUnion:
    """The union with rows a whole number of key tiles wide, so the kernel reads its last tile unmasked.
    The Triton builders' rows (block_q * k wide) usually are already; PyTorch's (exactly U wide) get padded
    with positions the kernel never gathers and owner words 0."""
    width = union.keys.shape[1]
    if width % block_n == 0 and union.owners.shape[1] == width:
        return union
    pad = -width % block_n
    keys = torch.nn.functional.pad(union.keys, (0, pad), value=torch.iinfo(torch.int32).max)
    owners = torch.nn.functional.pad(union.owners[:, :width], (0, pad), value=0)
    return BlockUnion(keys=keys, counts=union.counts, owners=owners)


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    scale: float,
    *,
    block_q: int | None = None,
) -> torch.Tensor:
    """Attention of each query over only its selected keys (DSA prefill), GQA.

    Args:
        q: [T, Hq, D] fp32/fp16/bf16 queries.
        k, v: [S, Hkv, D] keys and values (same dtype as q); Hq must be a multiple of Hkv and
            head h uses kv head h // (Hq // Hkv).
        idx: int32/int64 [T, K] key positions per query; -1 entries are ignored, duplicates
            count once, positions must lie in [0, S).
        scale: softmax scale (1 / sqrt(D) for Keye).
        block_q: adjacent queries that share one union walk (default: 64 // G rows, min 1).

    Returns:
        [T, Hq, D] in q's dtype; a query whose row holds no valid index gets zeros.
    """
    check_sparse_attention_args(q, k, v, idx)
    group = q.shape[1] // k.shape[1]
    block_q = block_q or default_block_q(group)
    require(1 <= block_q <= MAX_BLOCK_Q, f"block_q must be in 1..{MAX_BLOCK_Q}, got {block_q}")
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    out = torch.empty_like(q)
    if q.shape[0] == 0:
        return out
    union = build_block_union(idx, block_q)
    launch_sparse_attention(q, k, v, union, block_q, scale, out)
    return out
