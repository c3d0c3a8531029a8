"""RMSNorm (and rotary) in one read and one write of the tensor.

The runtime's eager version runs about seven element-wise kernels per norm with fp32 intermediates, and
seven more per rotary; across a layer's five norms and four rotaries that was a quarter of a 16K-token
prefill's GPU time on the H200 and three quarters of a decode step's kernel launches (kernels/NOTES.md,
session 17). A program here takes a few rows whole, as two halves (the rotate-half partners), and
keeps the reference's roundings: normalised in fp32, rounded to x's dtype, scaled by the weight in the
result dtype (weight and x promoted), then rotated in fp32 and rounded again.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._validate import KernelInputError
from kernels.rms_norm.reference import check_rms_norm_args

ELEMENTS_PER_PROGRAM = 4096  # rows per program = this / the padded row width


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    w_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    rows,
    heads,
    stride_token,
    eps,
    HALF: tl.constexpr,  # half the row: the rotate-half partner of column j is j + HALF
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
    ROTARY: tl.constexpr,
):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    col = tl.arange(0, BLOCK_H)
    ok = (row < rows)[:, None] & (col < HALF)[None, :]
    offsets = row.to(tl.int64)[:, None] * (2 * HALF) + col[None, :]  # out: contiguous rows
    # x: each token's [heads, 2 * HALF] block contiguous, tokens `stride_token` apart (a column slice of a
    # fused projection's output reads in place)
    token, head = (row // heads).to(tl.int64), (row % heads).to(tl.int64)
    x_offsets = (token * stride_token + head * (2 * HALF))[:, None] + col[None, :]
    first = tl.load(x_ptr + x_offsets, mask=ok, other=0.0).to(tl.float32)
    second = tl.load(x_ptr + x_offsets + HALF, mask=ok, other=0.0).to(tl.float32)
    mean_square = (tl.sum(first * first, 1) + tl.sum(second * second, 1)) / (2 * HALF)
    inverse = tl.math.rsqrt(mean_square + eps)[:, None]
    x_type = x_ptr.dtype.element_ty
    out_type = out_ptr.dtype.element_ty
    w_first = tl.load(w_ptr + col, mask=col < HALF, other=0.0).to(tl.float32)[None, :]
    w_second = tl.load(w_ptr + HALF + col, mask=col < HALF, other=0.0).to(tl.float32)[None, :]
    first = (w_first * (first * inverse).to(x_type).to(tl.float32)).to(out_type)
    second = (w_second * (second * inverse).to(x_type).to(tl.float32)).to(out_type)
    if ROTARY:
        tables = (row // heads).to(tl.int64)[:, None] * (2 * HALF) + col[None, :]
        cos_first, sin_first = tl.load(cos_ptr + tables, mask=ok), tl.load(sin_ptr + tables, mask=ok)
        cos_second = tl.load(cos_ptr + tables + HALF, mask=ok)
        sin_second = tl.load(sin_ptr + tables + HALF, mask=ok)
        a, b = first.to(tl.float32), second.to(tl.float32)
        first = (a * cos_first - b * sin_first).to(out_type)
        second = (b * cos_second + a * sin_second).to(out_type)
    tl.store(out_ptr + offsets, first, mask=ok)
    tl.store(out_ptr + offsets + HALF, second, mask=ok)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, rope: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """`rms_norm_ref` in one kernel: x [N, ..., D] (D even) → weight * RMSNorm(x) in the dtype weight and x
    promote to, rotated (NeoX rotate-half) by rope = (cos, sin) fp32 [N, D] per token when given."""
    check_rms_norm_args(x, weight, rope)
    if x.shape[-1] % 2:
        raise KernelInputError(f"x's last dim must be even, got {x.shape[-1]}")
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    if x.numel() == 0:
        return out
    if not x[0].is_contiguous():  # each token's block must be contiguous; tokens may lie apart
        x = x.contiguous()
    half = x.shape[-1] // 2
    rows = x.numel() // (2 * half)
    block_h = triton.next_power_of_2(half)
    block_r = max(1, ELEMENTS_PER_PROGRAM // (2 * block_h))
    cos, sin = (
        (rope[0].contiguous(), rope[1].contiguous()) if rope is not None else (weight, weight)
    )  # unused without rope
    _rms_norm_kernel[(triton.cdiv(rows, block_r),)](
        x, weight.contiguous(), cos, sin, out, rows, rows // x.shape[0], x.stride(0), float(eps),
        HALF=half, BLOCK_R=block_r, BLOCK_H=block_h, ROTARY=rope is not None, num_warps=4,
    )  # fmt: skip
    return out
