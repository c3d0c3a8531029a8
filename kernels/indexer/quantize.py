"""Triton Hadamard rotation + e4m3 rounding of indexer vectors, one pass (`quantize_indexer_fp8_ref`'s math).

The PyTorch oracle makes five passes over fp32 copies of q (cast, product, abs-max, divide, cast): ~4.5 ms of the
DSA layer's 229 at 256K on the H200 (session 20). Here each program loads a tile of rows once, rotates it with one
product, takes each row's largest magnitude, and stores the e4m3 values and the power-of-two scale. bf16 / fp16
rows are multiplied by the ±1 Hadamard signs on the tensor cores (every product exact, fp32 sums) and the sum by
1/sqrt(D) after; fp32 rows by the normalised matrix in fp32 ("ieee", which ran at 0.58 TB/s on the H200 for bf16
input: the fp32 product was the cost). Either way the oracle's fp32 matmul up to summation order. The scale comes
from the float's bits (exactly the smallest power of two >= amax / 448), not from a log2 that could land an ulp off.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl

from kernels._validate import require
from kernels.indexer.kernel import INTERPRETED
from kernels.indexer.reference import E4M3_MAX, hadamard

# The oracle's floor on a vector's largest magnitude: an all-zero vector gets a tiny scale, not a division by zero.
_AMAX_FLOOR = tl.constexpr(1e-30)
_E4M3_MAX = tl.constexpr(E4M3_MAX)
_FP32_MAX = tl.constexpr(3.4028234663852886e38)
_NAN_BITS = tl.constexpr(0x7FC00000)


@triton.jit
def _round_to_e4m3(v):
    """fp32 values within +-448 rounded to the nearest e4m3 value, ties to even, still in fp32 (so the final
    conversion is exact: Triton 3.9's interpreter drops the carry when its own rounding crosses a power of two)."""
    bits = v.to(tl.int32, bitcast=True)
    # normal e4m3 (|v| >= 2^-6): keep 3 of fp32's 23 mantissa bits, round half to even on the dropped 20
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & ~0xFFFFF).to(tl.float32, bitcast=True)
    # subnormal e4m3: multiples of 2^-9; adding 1.5 * 2^14 puts |v| where fp32's own spacing is 2^-9. The sign bit
    # goes back on by bits, so values that round to zero stay -0.0 as in torch (Triton lowers -x as 0 - x: +0.0)
    magnitude = (tl.abs(v) + 24576.0) - 24576.0
    subnormal = (magnitude.to(tl.int32, bitcast=True) | ((bits >> 31) << 31)).to(tl.float32, bitcast=True)
    return tl.where(tl.abs(v) < 0.015625, subnormal, normal)


@triton.jit
def _quantize_kernel(
    x_ptr, h_ptr, q_ptr, scale_ptr, rows, D: tl.constexpr, BLOCK_R: tl.constexpr, NORM: tl.constexpr,
    INTERPRETED: tl.constexpr,
):  # fmt: skip
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, D)
    ok = offs_r < rows
    at = offs_r.to(tl.int64)[:, None] * D + offs_d[None, :]
    x = tl.load(x_ptr + at, mask=ok[:, None], other=0.0)
    h = tl.load(h_ptr + offs_d[:, None] * D + offs_d[None, :])  # signs (16-bit x) or normalised (fp32 x)
    if (x.dtype == tl.float32) or INTERPRETED:  # (the interpreter multiplies 16-bit dots wrongly: fp32 there)
        rotated = tl.dot(x.to(tl.float32), h.to(tl.float32), input_precision="ieee") * NORM  # [BLOCK_R, D]
    else:
        rotated = tl.dot(x, h) * NORM
    amax = tl.maximum(tl.max(tl.abs(rotated), 1), _AMAX_FLOOR)
    ratio = tl.div_rn(amax, _E4M3_MAX)  # positive and normal: the floor keeps it above 2^-126
    # 2^ceil(log2(ratio)): round the bits up to the next power of two (an exact power stays as it is)
    scale_bits = (ratio.to(tl.int32, bitcast=True) + 0x7FFFFF) & 0x7F800000
    inverse = (0x7F000000 - scale_bits).to(tl.float32, bitcast=True)  # 2^-e for scale 2^e: exact
    q = _round_to_e4m3(rotated * inverse[:, None]).to(tl.float8e4nv)  # exact scaling, one rounding
    # A row with an inf or a NaN gets a NaN scale, which the FP8 score kernels' argument check rejects.
    finite = tl.min((tl.abs(rotated) <= _FP32_MAX).to(tl.int32), 1) == 1
    scale_bits = tl.where(finite, scale_bits, _NAN_BITS)
    tl.store(q_ptr + at, q, mask=ok[:, None])
    tl.store(scale_ptr + offs_r, scale_bits.to(tl.float32, bitcast=True), mask=ok)


@lru_cache(maxsize=16)
def _rotation(dim: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, float]:
    """(matrix, normalisation) per input dtype, built once: 16-bit rows take the ±1 signs (exact in 16 bits) and
    1/sqrt(D) after the sum, fp32 rows the normalised matrix."""
    matrix = hadamard(dim, device)
    if dtype == torch.float32:
        return matrix, 1.0
    return torch.sign(matrix).to(dtype), dim**-0.5


def quantize_indexer_fp8(x: torch.Tensor, *, block_rows: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] (bf16/fp16 with D a power of two from 16 to 256, fp32 up to 128: a program holds the [D, D]
    matrix) -> (e4m3 [..., D] of the Hadamard-rotated x, fp32 power-of-two scales [...]) with rotated x ~ q * scale:
    `quantize_indexer_fp8_ref` in one kernel. The rotation's fp32 sums may differ from the oracle's in their last
    bit, which moves an e4m3 rounding or a scale only where a value sits on a rounding boundary. A vector holding
    an inf or a NaN gets a NaN scale."""
    require(x.dim() >= 1, "x must have a last dimension to quantise")
    require(
        x.dtype in (torch.float32, torch.float16, torch.bfloat16), f"x must be fp32/fp16/bf16, got {x.dtype}"
    )
    dim, widest = x.shape[-1], 128 if x.dtype == torch.float32 else 256
    require(
        16 <= dim <= widest and dim & (dim - 1) == 0,
        f"the last dim must be a power of two in 16..{widest} for {x.dtype}, got {dim}",
    )
    require(
        block_rows >= 16 and block_rows & (block_rows - 1) == 0, "block_rows must be a power of two >= 16"
    )
    flat = x.reshape(-1, dim).contiguous()
    rows = flat.shape[0]
    q = torch.empty(flat.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(rows, dtype=torch.float32, device=x.device)
    if rows:
        matrix, norm = _rotation(dim, x.dtype, x.device)
        _quantize_kernel[(triton.cdiv(rows, block_rows),)](
            flat, matrix, q, scale, rows, D=dim, BLOCK_R=block_rows, NORM=norm, INTERPRETED=INTERPRETED, num_warps=4
        )  # fmt: skip
    return q.reshape(x.shape), scale.reshape(x.shape[:-1])
