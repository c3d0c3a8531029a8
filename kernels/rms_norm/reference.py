"""The oracle of `kernels.rms_norm`: the runtime's own RMSNorm and rotary (model_runtime.model), so the
kernel is checked against exactly what the reference path computes, plus the argument checks both share."""

from __future__ import annotations

import torch

from kernels._validate import FLOAT_DTYPES, KernelInputError, require_dtype, require_same_device
from model_runtime.model import norm_rotary


def check_rms_norm_args(
    x: torch.Tensor, weight: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
) -> None:
    """Messages are built only on failure: the runtime calls this five times per layer and token."""
    require_dtype("x", x, FLOAT_DTYPES)
    require_dtype("weight", weight, FLOAT_DTYPES)
    if x.dim() < 2:
        raise KernelInputError(f"x must be [tokens, ..., dim], got shape {tuple(x.shape)}")
    dim = x.shape[-1]
    if weight.shape != (dim,):
        raise KernelInputError(f"weight must be [{dim}], got shape {tuple(weight.shape)}")
    if rope is None:
        require_same_device(x=x, weight=weight)
        return
    cos, sin = rope
    if dim % 2:
        raise KernelInputError(f"rotary needs an even dim, got {dim}")
    for name, table in (("cos", cos), ("sin", sin)):
        if table.shape != (x.shape[0], dim):
            raise KernelInputError(f"{name} must be [{x.shape[0]}, {dim}], got {tuple(table.shape)}")
        if table.dtype != torch.float32:
            raise KernelInputError(f"{name} must be float32, got {table.dtype}")
    require_same_device(x=x, weight=weight, cos=cos, sin=sin)


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, rope: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """x [N, ..., D] → weight * RMSNorm(x), then NeoX rotary with rope = (cos, sin) [N, D] fp32 per token."""
    check_rms_norm_args(x, weight, rope)
    return norm_rotary(weight, eps, x, rope)
