"""The indexer's linear part as one extra query per token, so the score kernel's epilogue is one FMA per head.

ReLU(x) = (x + |x|) / 2, so sum_h w_h ReLU(q_h . k) = (1/2 sum_h w_h q_h) . k + sum_h (w_h / 2) |q_h . k|.
The first term is a single product with the "linear query" q_lin = 1/2 sum_h w_h s_h q_h (s_h: the e4m3
path's per-(t, h) query scale, else 1); the second costs one FFMA per head and element, the absolute
value being a free operand modifier in SASS, where ReLU needed an FMNMX (half the FMA pipe's rate) before
the FFMA. q_lin is summed in fp32 and stored as two 16-bit terms (hi + lo), so the score kernel multiplies
both by the key tile at fp32-like accuracy:
- bf16 keys: bf16 terms (16 significant bits, ~2^-17 of sum_h |w_h q_h . k|, far below the bf16 rounding the
  inputs already carry);
- e4m3 and fp16 keys: fp16 terms (22 bits; e4m3 converts to fp16 exactly) of q_lin divided by a per-row
  power of two that brings its largest entry to at most 2^14, so fp16's range never clips; the kernel
  multiplies that power back (`row_scale`), exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SCALED_DTYPE = torch.float16  # the linear terms' type for e4m3 and fp16 keys; bf16 keys take bf16 terms
LARGEST = 14  # the scaled rows' largest entry is at most 2^14 (fp16 reaches 65504)


@triton.jit
def _linear_queries_kernel(
    q_ptr,
    w_ptr,
    q_scale_ptr,
    out_ptr,
    row_scale_ptr,
    T,
    stride_qt,
    stride_qh,
    stride_wt,
    stride_qst,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    Q_SCALED: tl.constexpr,  # e4m3 queries with per-(t, h) scales
    ROW_SCALED: tl.constexpr,  # fp16 terms: divide each row by a power of two (written to row_scale_ptr)
    LARGEST: tl.constexpr,
):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    t_ok = offs_t < T
    mask = t_ok[:, None] & (offs_d[None, :] < D)
    rows = offs_t[:, None].to(tl.int64)
    total = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for h in range(H):
        q_h = tl.load(q_ptr + rows * stride_qt + h * stride_qh + offs_d[None, :], mask=mask, other=0.0)
        w_h = tl.load(w_ptr + offs_t * stride_wt + h, mask=t_ok, other=0.0).to(tl.float32)
        if Q_SCALED:
            w_h = w_h * tl.load(q_scale_ptr + offs_t * stride_qst + h, mask=t_ok, other=0.0)
        total += q_h.to(tl.float32) * w_h[:, None]
    total = total * 0.5
    if ROW_SCALED:  # 2^e with e = exponent of the row's largest entry - LARGEST, built from its bits (exact)
        largest = tl.max(tl.abs(total), 1)
        exponent = ((largest.to(tl.int32, bitcast=True) >> 23) & 255) - 127 + 1  # largest < 2^exponent
        exponent = tl.where(largest > 0, exponent - LARGEST, 0)
        exponent = tl.minimum(tl.maximum(exponent, -120), 120)
        row_scale = ((exponent + 127) << 23).to(tl.float32, bitcast=True)
        total = total * ((127 - exponent) << 23).to(tl.float32, bitcast=True)[:, None]  # / row_scale, exactly
        tl.store(row_scale_ptr + offs_t, row_scale, mask=t_ok)
    hi = total.to(out_ptr.dtype.element_ty)
    lo = (total - hi.to(tl.float32)).to(out_ptr.dtype.element_ty)
    out = out_ptr + rows * (2 * D) + offs_d[None, :]
    tl.store(out, hi, mask=mask)
    tl.store(out + D, lo, mask=mask)


def linear_dtype(key_dtype: torch.dtype) -> torch.dtype:
    return torch.bfloat16 if key_dtype == torch.bfloat16 else SCALED_DTYPE


def linear_queries(
    q: torch.Tensor, w: torch.Tensor, q_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(terms [T, 2, D], row_scale fp32 [T] or None): hi and lo of 1/2 sum_h w[t, h] (q_scale[t, h]) q[t, h]
    divided by row_scale, for q [T, H, D] bf16, fp16 or e4m3 (with `q_scale` [T, H]) and w [T, H]. bf16
    queries get bf16 terms and no row scale. No checks (the score entry points make them)."""
    tokens, heads, dim = q.shape
    dtype = linear_dtype(q.dtype)
    out = torch.empty(tokens, 2, dim, dtype=dtype, device=q.device)
    row_scale = None if dtype == torch.bfloat16 else torch.empty(tokens, device=q.device)
    if tokens == 0:
        return out, row_scale
    block_t = 64
    scale = q_scale if q_scale is not None else w  # unused placeholders
    _linear_queries_kernel[(triton.cdiv(tokens, block_t),)](
        q, w, scale, out, row_scale if row_scale is not None else w, tokens,
        q.stride(0), q.stride(1), w.stride(0), scale.stride(0),
        H=heads, D=dim, BLOCK_D=triton.next_power_of_2(dim), BLOCK_T=block_t,
        Q_SCALED=q_scale is not None, ROW_SCALED=row_scale is not None, LARGEST=LARGEST,
    )  # fmt: skip
    return out, row_scale


def linear_queries_torch(
    q: torch.Tensor, w: torch.Tensor, q_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`linear_queries` in PyTorch (its oracle)."""
    weight = w.float() if q_scale is None else w.float() * q_scale.float()
    total = torch.einsum("thd,th->td", q.float(), weight) * 0.5
    dtype = linear_dtype(q.dtype)
    row_scale = None
    if dtype != torch.bfloat16:
        largest = total.abs().amax(dim=1)
        exponent = torch.frexp(largest).exponent - LARGEST  # largest < 2^frexp exponent
        exponent = torch.where(largest > 0, exponent, 0).clamp(-120, 120)
        row_scale = torch.ldexp(torch.ones_like(largest), exponent)
        total = total / row_scale[:, None]
    hi = total.to(dtype)
    return torch.stack((hi, (total - hi.float()).to(dtype)), dim=1), row_scale


def splits_linear(dtype: torch.dtype, fp8: bool) -> bool:
    """Whether the score kernel takes the linear split by default: for bf16 and e4m3 inputs (the runtime's).
    fp32 keeps the ReLU epilogue and its 1e-5 accuracy; fp16 may ask for it (the CPU interpreter's tests do:
    its bf16 products are wrong)."""
    return fp8 or dtype == torch.bfloat16


def can_split_linear(dtype: torch.dtype, fp8: bool) -> bool:
    return fp8 or dtype in (torch.bfloat16, torch.float16)
