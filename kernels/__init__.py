"""Triton kernels for the Keye runtime's sparse attention (DSA) and MoE, each beside a PyTorch oracle.

The runtime calls these for attn_impl="triton" / moe_impl="triton" (`model_runtime.model.KernelLoader`):
`indexer_topk` (lightning-indexer scores streamed, per query chunk, into a top-k), `sparse_attention`
(prefill over per-block unions of the selected keys), `fused_moe` (expert sort + grouped GEMMs) and
`rms_norm` (each layer's RMSNorms, with their rotary); `sparse_decode` serves one-token decode against a
paged KV cache, `indexer_decode_topk` its selection for a batch of sequences. Every op has a `*_ref` twin
with the same signature in plain PyTorch. Importing this package needs triton; it never touches the GPU
until a function is called.
"""

from kernels._validate import KernelInputError
from kernels.fused_moe import fused_moe, fused_moe_fp8, fused_moe_fp8_ref, fused_moe_ref
from kernels.indexer import (
    hadamard,
    indexer_decode_topk,
    indexer_decode_topk_ref,
    indexer_scores,
    indexer_scores_fp8,
    indexer_scores_fp8_ref,
    indexer_scores_ref,
    indexer_topk,
    indexer_topk_ref,
    quantize_indexer_fp8,
    quantize_indexer_fp8_ref,
)
from kernels.rms_norm import rms_norm, rms_norm_ref
from kernels.sparse_attention import sparse_attention, sparse_attention_ref
from kernels.sparse_decode import sparse_decode, sparse_decode_ref
from kernels.topk import select_topk, select_topk_ref

__all__ = [
    "KernelInputError",
    "fused_moe",
    "fused_moe_fp8",
    "fused_moe_fp8_ref",
    "fused_moe_ref",
    "hadamard",
    "indexer_decode_topk",
    "indexer_decode_topk_ref",
    "indexer_scores",
    "indexer_scores_fp8",
    "indexer_scores_fp8_ref",
    "indexer_scores_ref",
    "indexer_topk",
    "indexer_topk_ref",
    "quantize_indexer_fp8",
    "quantize_indexer_fp8_ref",
    "rms_norm",
    "rms_norm_ref",
    "select_topk",
    "select_topk_ref",
    "sparse_attention",
    "sparse_attention_ref",
    "sparse_decode",
    "sparse_decode_ref",
]
