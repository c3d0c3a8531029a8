"""The lightning indexer's FP8 arithmetic (spec §2.2 steps 4-5), so selections match the served model's.

The official server scores keys with q and k rotated by the orthonormal Hadamard transform and rounded to
e4m3, one power-of-two scale per vector (per token and head for q, per token for k). In exact arithmetic the
rotation changes no score; the rounding changes scores a little, which moves selections near the top-k
boundary. `round_fp8` returns the values that indexer sees (rotated, rounded, dequantised): exact in bf16
and fp32, so every attention path and the KV cache take them unchanged. `split_fp8` splits such values back
into e4m3 and scale for the FP8 Triton score kernel, exactly (a value on the e4m3 grid times a power of two
keeps its mantissa under any power-of-two rescaling that keeps it in range); the KV cache stores keys that
way too (`KVCache(index_fp8=True)`: 68 bytes per token and layer, as the official server's). Reads dequantise,
so the Triton path re-splits the key history at each forward: O(S) more work per layer in decode.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
AMAX_FLOOR = 1e-4  # act_quant clamps a vector's largest magnitude to at least this before taking its scale


@lru_cache(maxsize=8)
def hadamard(dim: int, device: torch.device) -> Tensor:
    """The orthonormal Sylvester-Hadamard matrix [dim, dim], fp32 (dim a power of two)."""
    if dim < 1 or dim & (dim - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two width, got {dim}")
    h = torch.ones(1, 1, device=device)
    while h.shape[0] < dim:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / dim**0.5


def split_fp8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [..., D] → (e4m3 [..., D], fp32 scale [...]) with x ≈ q · scale, the scale the smallest power of
    two that fits the vector's largest magnitude (ue8m0) into ±448."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1).clamp_min(AMAX_FLOOR)
    scale = torch.exp2(torch.ceil(torch.log2(amax / E4M3_MAX)))
    return (xf / scale[..., None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def round_fp8(x: Tensor) -> Tensor:
    """x [..., D] → the Hadamard-rotated x rounded through e4m3 with its scale, in x's dtype."""
    q, scale = split_fp8(x.float() @ hadamard(x.shape[-1], x.device))
    return (q.float() * scale[..., None]).to(x.dtype)
