"""Top-k selection over causal score rows (Triton radix select + PyTorch reference)."""

from kernels.topk.kernel import select_topk
from kernels.topk.reference import select_topk_ref

__all__ = ["select_topk", "select_topk_ref"]
