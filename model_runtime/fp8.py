"""FP8 expert weights: e4m3 with one scale per 128×128 block, as DeepSeek-V3's FP8 checkpoints store them.

The routed experts hold ~97 % of the 30B-A3B weights; in FP8 they take half the bf16 bytes, which is
what lets one 80 GB GPU hold the model and a 184K-token chunk (`memory_plan`). A block's scale is its
largest magnitude over 448 (e4m3's largest finite value), stored as the multiplier that dequantises
(`…_scale_inv`, the Hugging Face fine-grained FP8 naming), so `w ≈ q · scale_inv` block by block.

At run time activations are quantised too, per token and per 128 input channels (dynamic, no
calibration), so both operands of each product are FP8 and Hopper's FP8 tensor cores do the work
(`kernels.fused_moe.fused_moe_fp8`). `moe_fp8_reference` is the same arithmetic in plain PyTorch: the
oracle of the kernel and the CPU path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
BLOCK = 128
# What `config.json` says about a pre-quantised checkpoint (the Hugging Face fine-grained FP8 format).
QUANTIZATION_CONFIG = {
    "quant_method": "fp8",
    "fmt": "e4m3",
    "activation_scheme": "dynamic",
    "weight_block_size": [BLOCK, BLOCK],
    "modules": ["mlp.experts"],
}
SCALE_SUFFIX = "_scale_inv"


def quantize_blocks(w: Tensor, block: int = BLOCK) -> tuple[Tensor, Tensor]:
    """w [..., R, C] → (q e4m3 [..., R, C], scale_inv fp32 [..., ⌈R/b⌉, ⌈C/b⌉]), w ≈ q · scale_inv."""
    *lead, rows, cols = w.shape
    pad_r, pad_c = -rows % block, -cols % block
    x = F.pad(w.float(), (0, pad_c, 0, pad_r))
    nr, nc = (rows + pad_r) // block, (cols + pad_c) // block
    x = x.view(*lead, nr, block, nc, block)
    scale = x.abs().amax(dim=(-3, -1), keepdim=True).clamp_min(1e-12) / FP8_MAX  # [..., nr, 1, nc, 1]
    q = (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).view(*lead, rows + pad_r, cols + pad_c)
    return q[..., :rows, :cols].contiguous(), scale[..., 0, :, 0].contiguous()


def dequantize_blocks(
    q: Tensor, scale_inv: Tensor, dtype: torch.dtype = torch.float32, block: int = BLOCK
) -> Tensor:
    """The inverse of `quantize_blocks` (up to FP8 rounding)."""
    rows, cols = q.shape[-2:]
    scale = scale_inv.repeat_interleave(block, dim=-2)[..., :rows, :].repeat_interleave(block, dim=-1)
    return (q.float() * scale[..., :cols]).to(dtype)


def quantize_groups(x: Tensor, group: int = BLOCK) -> tuple[Tensor, Tensor]:
    """Activations x [T, D] → (q e4m3 [T, D], scale fp32 [T, ⌈D/g⌉]): one scale per token per g channels."""
    tokens, dim = x.shape
    pad = -dim % group
    xg = F.pad(x.float(), (0, pad)).view(tokens, -1, group)
    scale = xg.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / FP8_MAX
    q = (xg / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).view(tokens, -1)[:, :dim]
    return q.contiguous(), scale[..., 0].contiguous()


def fake_quantize_groups(x: Tensor, group: int = BLOCK) -> Tensor:
    """x rounded through `quantize_groups` and back, in fp32: what the FP8 kernel multiplies."""
    q, scale = quantize_groups(x, group)
    dim = x.shape[1]
    return q.float() * scale.repeat_interleave(group, dim=1)[:, :dim]


class Fp8Experts(nn.Module):
    """`Experts` in FP8: the same fused, input-major tensors, plus their block scales.

    Parameters (not buffers) so the loader fills them by name like every other weight; they never train.
    """

    def __init__(self, n_experts: int, hidden: int, width: int):
        super().__init__()

        def blocks(n: int) -> int:
            return -(-n // BLOCK)

        self.gate_up_proj = nn.Parameter(
            torch.empty(n_experts, hidden, 2 * width, dtype=FP8), requires_grad=False
        )
        self.gate_up_proj_scale_inv = nn.Parameter(
            torch.empty(n_experts, blocks(hidden), blocks(2 * width)), requires_grad=False
        )
        self.down_proj = nn.Parameter(torch.empty(n_experts, width, hidden, dtype=FP8), requires_grad=False)
        self.down_proj_scale_inv = nn.Parameter(
            torch.empty(n_experts, blocks(width), blocks(hidden)), requires_grad=False
        )


def is_scale(name: str) -> bool:
    return name.endswith(SCALE_SUFFIX)


def moe_fp8_reference(
    x: Tensor,
    gate_up: Tensor,
    gate_up_scale: Tensor,
    down: Tensor,
    down_scale: Tensor,
    ids: Tensor,
    weights: Tensor,
) -> Tensor:
    """The FP8 kernel's arithmetic in PyTorch: per expert with tokens, FP8-rounded activations (per token and
    128 channels) times the dequantised FP8 weights, fp32 accumulation; SiLU(gate)·up is rounded to x's
    dtype before its own quantisation, as the kernel stores it. [N, D] in x's dtype."""
    width = down.shape[1]
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    counts = torch.bincount(ids.flatten(), minlength=gate_up.shape[0]).tolist()
    for e, count in enumerate(counts):
        if count == 0:
            continue
        tok, slot = torch.where(ids == e)
        h = fake_quantize_groups(x[tok]) @ dequantize_blocks(gate_up[e], gate_up_scale[e])  # [n, 2F]
        act = (F.silu(h[:, :width]) * h[:, width:]).to(x.dtype)  # [n, F]
        y = fake_quantize_groups(act) @ dequantize_blocks(down[e], down_scale[e])  # [n, D]
        out.index_add_(0, tok, y * weights[tok, slot, None].float())
    return out.to(x.dtype)
