"""Top-k sparse attention for prefill over per-block key unions (Triton + PyTorch reference)."""

from kernels.sparse_attention.kernel import sparse_attention
from kernels.sparse_attention.reference import sparse_attention_ref
from kernels.sparse_attention.union import BlockUnion, build_block_union

__all__ = ["BlockUnion", "build_block_union", "sparse_attention", "sparse_attention_ref"]
