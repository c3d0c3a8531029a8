"""Plain-PyTorch mixture-of-experts FFN: the oracle for the fused Triton MoE.

The DeepSeek-style loop: count tokens per expert, skip empty experts, run each expert's
SiLU-gated FFN on its tokens and add the result, weighted by the routing weight, into the
output (fp32 accumulation). gate = first F columns of gate_up, up = last F.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._validate import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    require,
    require_dtype,
    require_rank,
    require_same_device,
)
from model_runtime.fp8 import BLOCK, FP8, moe_fp8_reference


def check_fused_moe_args(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    fp8: bool = False,
) -> None:
    """Shapes, dtypes and devices; with `fp8` the expert weights are e4m3 instead of x's dtype."""
    require_rank("x", x, 2)
    require_rank("gate_up", gate_up, 3)
    require_rank("down", down, 3)
    require_rank("topk_ids", topk_ids, 2)
    require_rank("topk_weights", topk_weights, 2)
    require_dtype("x", x, FLOAT_DTYPES)
    require_dtype("topk_ids", topk_ids, INDEX_DTYPES)
    require_dtype("topk_weights", topk_weights, FLOAT_DTYPES)
    require_same_device(x=x, gate_up=gate_up, down=down, topk_ids=topk_ids, topk_weights=topk_weights)
    if fp8:
        require_dtype("gate_up", gate_up, (FP8,))
        require_dtype("down", down, (FP8,))
    else:
        require(
            gate_up.dtype == x.dtype and down.dtype == x.dtype, "x, gate_up and down must share one dtype"
        )
    experts, hidden, width2 = gate_up.shape
    require(width2 % 2 == 0, f"gate_up last dim must be 2F, got {width2}")
    require(hidden == x.shape[1], f"gate_up hidden {hidden} must match x hidden {x.shape[1]}")
    require(
        down.shape == (experts, width2 // 2, hidden),
        f"down must be [E, F, D] = {(experts, width2 // 2, hidden)}",
    )
    require(topk_ids.shape == topk_weights.shape, "topk_ids and topk_weights must have one shape [T, k]")
    require(topk_ids.shape[0] == x.shape[0], "topk_ids must have one row per token")


def fused_moe_ref(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> torch.Tensor:
    """[T, D] = sum_k w_k * (SiLU(x gate_e) * (x up_e)) down_e over each token's experts e = topk_ids[t, k]."""
    check_fused_moe_args(x, gate_up, down, topk_ids, topk_weights)
    experts = gate_up.shape[0]
    width = down.shape[1]
    require(bool(((topk_ids >= 0) & (topk_ids < experts)).all()), f"topk_ids must lie in [0, {experts})")
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # [T, D]
    counts = torch.bincount(topk_ids.flatten(), minlength=experts).tolist()
    for expert in range(experts):
        if counts[expert] == 0:
            continue
        token, slot = torch.where(topk_ids == expert)  # [n], [n]
        hidden = x[token].float() @ gate_up[expert].float()  # [n, 2F]
        act = F.silu(hidden[:, :width]) * hidden[:, width:]  # [n, F]
        y = (act @ down[expert].float()) * topk_weights[token, slot, None].float()  # [n, D]
        out.index_add_(0, token, y)
    return out.to(x.dtype)


def check_fused_moe_fp8_args(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    gate_up_scale: torch.Tensor,
    down: torch.Tensor,
    down_scale: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> None:
    check_fused_moe_args(x, gate_up, down, topk_ids, topk_weights, fp8=True)
    require_same_device(x=x, gate_up_scale=gate_up_scale, down_scale=down_scale)
    experts, hidden, width2 = gate_up.shape

    def blocks(n: int) -> int:
        return -(-n // BLOCK)

    require(
        gate_up_scale.shape == (experts, blocks(hidden), blocks(width2)),
        f"gate_up_scale must be [E, ceil(D/128), ceil(2F/128)], got {tuple(gate_up_scale.shape)}",
    )
    require(
        down_scale.shape == (experts, blocks(width2 // 2), blocks(hidden)),
        f"down_scale must be [E, ceil(F/128), ceil(D/128)], got {tuple(down_scale.shape)}",
    )


def fused_moe_fp8_ref(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    gate_up_scale: torch.Tensor,
    down: torch.Tensor,
    down_scale: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> torch.Tensor:
    """The FP8 experts' arithmetic in PyTorch (`model_runtime.fp8.moe_fp8_reference`), with the kernel's checks."""
    check_fused_moe_fp8_args(x, gate_up, gate_up_scale, down, down_scale, topk_ids, topk_weights)
    experts = gate_up.shape[0]
    require(bool(((topk_ids >= 0) & (topk_ids < experts)).all()), f"topk_ids must lie in [0, {experts})")
    return moe_fp8_reference(x, gate_up, gate_up_scale, down, down_scale, topk_ids, topk_weights)
