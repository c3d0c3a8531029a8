"""Triton fused MoE: sort token slots by expert, then two grouped GEMMs.

Every (token, k) routing slot is placed in its expert's segment of a sorted list; segments are
padded to BLOCK_M so each row block belongs to one expert. Kernel 1 multiplies a block's
gathered token rows by that expert's gate and up columns at once and writes SiLU(gate) * up
(the [slots, F] activation, in x's dtype). Kernel 2 multiplies it by the expert's down matrix,
scales by the routing weight and writes each slot's row; the k rows of a token are then summed
(`kernels.fused_moe.slots` sorts the slots and sums the rows, one Triton launch each).
Blocks past the padded end of the list (the grid is sized without a host sync) exit at once.

With FP8 experts (`model_runtime.fp8`: e4m3 weights, fp32 scales per 128x128 block) the same kernels
run with `FP8=True`: BLOCK_K is the quantisation block (128), so each K step quantises one activation
group per token in registers and multiplies two FP8 operands on the tensor cores, scaling the fp32
partial product by the activation and weight block scales.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._validate import require
from kernels.fused_moe.reference import check_fused_moe_args, check_fused_moe_fp8_args
from kernels.fused_moe.slots import combine_slots, sort_slots_by_expert


@triton.jit
def _round_to_e4m3(v):
    """fp32 rounded to 3 mantissa bits, ties to even, still in fp32, so the cast after it is exact: Triton's
    CPU interpreter casts fp32 → e4m3 without carrying into the exponent (126.8 → 64, not 128). Exact
    for e4m3's normal range; its subnormals (|v| < 2^-6 of a 448 scale) then round once more in the cast."""
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _quantize_rows(a):
    """fp32 [M, 128] → (e4m3 [M, 128], fp32 scale [M]) with a ≈ q * scale (model_runtime.fp8)."""
    scale = tl.maximum(tl.max(tl.abs(a), axis=1), 1e-12) / 448.0
    q = _round_to_e4m3(a / scale[:, None])
    q = tl.minimum(tl.maximum(q, -448.0), 448.0)
    return q.to(tl.float8e4nv), scale


@triton.jit
def _gate_up_kernel(
    x_ptr,
    w_ptr,
    ws_ptr,
    h_ptr,
    sorted_slots_ptr,
    block_expert_ptr,
    n_blocks_ptr,
    n_slots,
    D,
    F,
    stride_xt,
    stride_we,
    stride_wd,
    stride_se,
    stride_sk,
    stride_hs,
    TOPK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    FP8: tl.constexpr,  # e4m3 weights with block scales at ws_ptr; BLOCK_K must be 128
):
    block = tl.program_id(0)
    pid_n = tl.program_id(1)
    if block >= tl.load(n_blocks_ptr):
        return
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_slots_ptr + offs_m)
    slot_ok = slot < n_slots
    token = (slot // TOPK).to(tl.int64)
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < F
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + token[:, None] * stride_xt + offs_k[None, :]
    gate_ptrs = w_ptr + expert * stride_we + offs_k[:, None] * stride_wd + offs_n[None, :]
    gate_scale_ptrs = ws_ptr + expert * stride_se + offs_n // BLOCK_K  # FP8: one scale per 128 columns
    up_scale_ptrs = ws_ptr + expert * stride_se + (offs_n + F) // BLOCK_K
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        k_ok = (k0 + offs_k) < D
        a = tl.load(a_ptrs, mask=slot_ok[:, None] & k_ok[None, :], other=0.0)
        b_gate = tl.load(gate_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        b_up = tl.load(gate_ptrs + F, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if FP8:
            a_q, a_scale = _quantize_rows(a.to(tl.float32))
            row = (k0 // BLOCK_K) * stride_sk
            s_gate = tl.load(gate_scale_ptrs + row, mask=n_ok, other=0.0)
            s_up = tl.load(up_scale_ptrs + row, mask=n_ok, other=0.0)
            acc_gate += tl.dot(a_q, b_gate) * a_scale[:, None] * s_gate[None, :]
            acc_up += tl.dot(a_q, b_up) * a_scale[:, None] * s_up[None, :]
        else:
            acc_gate = tl.dot(a, b_gate, acc_gate, input_precision=PRECISION)
            acc_up = tl.dot(a, b_up, acc_up, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        gate_ptrs += BLOCK_K * stride_wd
    act = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up  # SiLU(gate) * up
    tl.store(
        h_ptr + offs_m[:, None].to(tl.int64) * stride_hs + offs_n[None, :],
        act.to(h_ptr.dtype.element_ty),
        mask=slot_ok[:, None] & n_ok[None, :],
    )


@triton.jit
def _down_kernel(
    h_ptr,
    w_ptr,
    ws_ptr,
    y_ptr,
    weights_ptr,
    sorted_slots_ptr,
    block_expert_ptr,
    n_blocks_ptr,
    n_slots,
    D,
    F,
    stride_hs,
    stride_we,
    stride_wf,
    stride_se,
    stride_sk,
    stride_ys,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    FP8: tl.constexpr,
):
    block = tl.program_id(0)
    pid_n = tl.program_id(1)
    if block >= tl.load(n_blocks_ptr):
        return
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_slots_ptr + offs_m)
    slot_ok = slot < n_slots
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < D
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = h_ptr + offs_m[:, None].to(tl.int64) * stride_hs + offs_k[None, :]
    b_ptrs = w_ptr + expert * stride_we + offs_k[:, None] * stride_wf + offs_n[None, :]
    scale_ptrs = ws_ptr + expert * stride_se + offs_n // BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, F, BLOCK_K):
        k_ok = (k0 + offs_k) < F
        a = tl.load(a_ptrs, mask=slot_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if FP8:
            a_q, a_scale = _quantize_rows(a.to(tl.float32))
            s = tl.load(scale_ptrs + (k0 // BLOCK_K) * stride_sk, mask=n_ok, other=0.0)
            acc += tl.dot(a_q, b) * a_scale[:, None] * s[None, :]
        else:
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_wf
    routing = tl.load(weights_ptr + slot, mask=slot_ok, other=0.0).to(tl.float32)
    acc = acc * routing[:, None]
    tl.store(
        y_ptr + slot[:, None].to(tl.int64) * stride_ys + offs_n[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=slot_ok[:, None] & n_ok[None, :],
    )


TILE_KEYS = ("block_m", "block_n", "block_k", "num_warps", "num_stages")
DOWN_TILE_KEYS = TILE_KEYS[1:]  # the down GEMM shares block_m: both kernels walk the same padded rows


# At or below this many tokens (decode batches) 16-bit inputs take DECODE_TILES for both GEMMs: with a few
# tokens each expert's weights are streamed by few programs, so narrower tiles give more of them (H200, session 18:
# 58.7 -> 44.2 us for one token, 160 -> 133 for 8, 238 -> 217 for 16; kernels/NOTES.md).
DECODE_TOKENS = 16
DECODE_TILES = {"block_m": 16, "block_n": 64, "block_k": 128, "num_warps": 4, "num_stages": 3}


def default_tiles(dtype: torch.dtype, tokens: int | None = None) -> dict[str, int]:
    """Tile configuration per dtype and, for decode-sized batches, token count (the gate_up kernel stages A plus
    two B tiles per K step)."""
    if dtype != torch.float32 and tokens is not None and tokens <= DECODE_TOKENS:
        return dict(DECODE_TILES)
    if dtype == torch.float32:
        # 128x128x64 with 3 stages needs 256 KiB of shared memory in fp32 (the H200 has 227 KiB).
        return {"block_m": 64, "block_n": 64, "block_k": 32, "num_warps": 4, "num_stages": 3}
    return {"block_m": 128, "block_n": 128, "block_k": 64, "num_warps": 8, "num_stages": 3}


def default_down_tiles(dtype: torch.dtype) -> dict[str, int]:
    """The down GEMM's own tiles where they beat the gate_up tiles: 16-bit N = D = 2048 columns in 256-wide
    tiles read each activation row half as often (its kernel was L2-bound at 93 % with 128; H200, session 14:
    387 against 360 TFLOP/s for the whole MoE, median of four alternating rounds)."""
    if dtype == torch.float32:
        return {}
    return {"block_n": 256, "block_k": 64, "num_warps": 8, "num_stages": 3}


def fused_moe(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    down_tiles: dict[str, int] | None = None,
) -> torch.Tensor:
    """Routed SiLU-gated expert FFN for a batch of tokens.

    Args:
        x: [T, D] fp32/fp16/bf16 token activations.
        gate_up: [E, D, 2F] (gate = columns :F, up = columns F:), same dtype as x.
        down: [E, F, D], same dtype as x.
        topk_ids: int32/int64 [T, k] expert of each routing slot, in [0, E).
        topk_weights: [T, k] routing weights (any float dtype; used in fp32).
        block_m/n/k, num_warps, num_stages: tile configuration of both GEMMs; each left None
            takes `default_tiles(x.dtype, T)` (16-bit: the best of the kernels/fused_moe/bench.py sweep
            on an H200, 2026-11-29, and DECODE_TILES up to DECODE_TOKENS tokens; fp32: smaller tiles
            that fit shared memory).
        down_tiles: block_n/block_k/num_warps/num_stages of the down GEMM where they should differ
            from the gate_up GEMM's (its N is D and its K is F, the other way round); block_m is
            shared, both kernels walk the same expert-padded rows. Left None with no gate_up tile
            given either, it takes `default_down_tiles(x.dtype)` (up to DECODE_TOKENS tokens the
            gate_up tiles); with gate_up tiles given, the down GEMM uses those.

    Returns:
        [T, D] in x's dtype: sum_j topk_weights[t, j] * (SiLU(x gate) * (x up)) down for
        expert topk_ids[t, j]. The SiLU * up activation is rounded to x's dtype between the
        two GEMMs (as in the usual fused-MoE kernels); accumulation is fp32.
    """
    check_fused_moe_args(x, gate_up, down, topk_ids, topk_weights)
    decode = x.shape[0] <= DECODE_TOKENS
    if down_tiles is None and all(v is None for v in (block_m, block_n, block_k, num_warps, num_stages)):
        down_tiles = {} if decode else default_down_tiles(x.dtype)
    tiles = default_tiles(x.dtype, x.shape[0])
    tiles = {
        "block_m": block_m or tiles["block_m"], "block_n": block_n or tiles["block_n"],
        "block_k": block_k or tiles["block_k"], "num_warps": num_warps or tiles["num_warps"],
        "num_stages": num_stages or tiles["num_stages"],
    }  # fmt: skip
    unknown = set(down_tiles or {}) - set(DOWN_TILE_KEYS)
    require(not unknown, f"down_tiles takes {', '.join(DOWN_TILE_KEYS)}; got {sorted(unknown)}")
    return _run(x, gate_up, down, None, topk_ids, topk_weights, down_tiles=down_tiles, **tiles)


def fused_moe_fp8(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    gate_up_scale: torch.Tensor,
    down: torch.Tensor,
    down_scale: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    block_m: int = 64,
    block_n: int = 128,
    num_warps: int = 4,
    num_stages: int = 3,
) -> torch.Tensor:
    """`fused_moe` with FP8 experts (`model_runtime.fp8`: e4m3 weights, fp32 scales per 128x128 block)
    and activations quantised per token and 128 channels in the kernel. Same result layout as
    `fused_moe`: [T, D] in x's dtype. The oracle is `fused_moe_fp8_ref`."""
    check_fused_moe_fp8_args(x, gate_up, gate_up_scale, down, down_scale, topk_ids, topk_weights)
    scales = (gate_up_scale.float().contiguous(), down_scale.float().contiguous())
    return _run(x, gate_up, down, scales, topk_ids, topk_weights, block_m=block_m, block_n=block_n,
                block_k=128, num_warps=num_warps, num_stages=num_stages)  # fmt: skip


def _run(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    scales: tuple[torch.Tensor, torch.Tensor] | None,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    block_k: int,
    num_warps: int,
    num_stages: int,
    down_tiles: dict[str, int] | None = None,
) -> torch.Tensor:
    """Sort the slots, launch both GEMMs (FP8 when `scales` are given), sum each token's k rows."""
    tokens, hidden = x.shape
    experts, _, width2 = gate_up.shape
    width = width2 // 2
    top = topk_ids.shape[1]
    if tokens == 0 or top == 0:
        return torch.zeros_like(x)
    x = x.contiguous()
    gate_up = gate_up if gate_up.stride(-1) == 1 else gate_up.contiguous()
    down = down if down.stride(-1) == 1 else down.contiguous()
    gu_scale, down_scale = scales if scales is not None else (gate_up, down)  # unused unless FP8
    weights = topk_weights.reshape(-1).contiguous()
    n_slots = tokens * top
    sorted_slots, block_expert, n_blocks = sort_slots_by_expert(topk_ids, experts, block_m)
    max_blocks = block_expert.shape[0]
    precision = "tf32x3" if x.dtype == torch.float32 else "tf32"
    fp8 = scales is not None
    act = torch.empty(max_blocks * block_m, width, dtype=x.dtype, device=x.device)  # [rows, F]
    _gate_up_kernel[(max_blocks, triton.cdiv(width, block_n))](
        x, gate_up, gu_scale, act, sorted_slots, block_expert, n_blocks, n_slots, hidden, width,
        x.stride(0), gate_up.stride(0), gate_up.stride(1), gu_scale.stride(0), gu_scale.stride(1), act.stride(0),
        TOPK=top, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=precision, FP8=fp8,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    per_slot = torch.empty(n_slots, hidden, dtype=x.dtype, device=x.device)  # [T*k, D]
    down_tiles = dict(zip(DOWN_TILE_KEYS, (block_n, block_k, num_warps, num_stages), strict=True)) | (
        down_tiles or {}
    )
    block_n, block_k, num_warps, num_stages = (down_tiles[name] for name in DOWN_TILE_KEYS)
    _down_kernel[(max_blocks, triton.cdiv(hidden, block_n))](
        act, down, down_scale, per_slot, weights, sorted_slots, block_expert, n_blocks, n_slots, hidden, width,
        act.stride(0), down.stride(0), down.stride(1), down_scale.stride(0), down_scale.stride(1),
        per_slot.stride(0), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=precision, FP8=fp8,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return combine_slots(per_slot, tokens, top, x.dtype)
