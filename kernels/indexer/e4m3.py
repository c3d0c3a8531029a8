"""e4m3 rounding inside Triton kernels, shared by the quantiser and the score kernel's fp16-logit path."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def round_to_e4m3(v):
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
