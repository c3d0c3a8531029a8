"""Top-k sparse attention for decode over a paged KV cache (Triton split-K + PyTorch reference)."""

from kernels.sparse_decode.kernel import sparse_decode
from kernels.sparse_decode.reference import sparse_decode_ref

__all__ = ["sparse_decode", "sparse_decode_ref"]
