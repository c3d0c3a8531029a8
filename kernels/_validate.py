"""Input checks shared by the kernel entry points.

Every public kernel function validates shapes, dtypes and devices up front and raises
`KernelInputError` with a one-line message, so a caller (the runtime) sees a typed error
instead of an out-of-bounds read inside a Triton program.
"""

from __future__ import annotations

import torch


class KernelInputError(ValueError):
    """Raised when a kernel is called with tensors of the wrong shape, dtype or device."""


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def require(condition: bool, message: str) -> None:
    """Raise `KernelInputError(message)` unless `condition` holds."""
    if not condition:
        raise KernelInputError(message)


# The helpers below build their messages only on failure: they run on every kernel call, and a decode step
# calls kernels hundreds of times from Python (formatting shapes and dtype tuples cost microseconds each).


def require_rank(name: str, tensor: torch.Tensor, rank: int) -> None:
    if tensor.dim() != rank:
        raise KernelInputError(f"{name} must have {rank} dims, got shape {tuple(tensor.shape)}")


def require_dtype(name: str, tensor: torch.Tensor, dtypes: tuple[torch.dtype, ...]) -> None:
    if tensor.dtype not in dtypes:
        raise KernelInputError(f"{name} has dtype {tensor.dtype}; expected one of {dtypes}")


def require_same_device(**tensors: torch.Tensor) -> None:
    first, *others = tensors.values()
    if any(t.device != first.device for t in others):
        devices = sorted({str(t.device) for t in tensors.values()})
        raise KernelInputError(f"tensors {sorted(tensors)} are on different devices: {devices}")
