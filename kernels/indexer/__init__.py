"""Lightning-indexer scores and the fused indexer -> top-k selection (Triton + PyTorch reference), bf16 or FP8
(with the Hadamard + e4m3 quantiser); prefill one sequence at a time, decode for a batch of paged sequences."""

from kernels.indexer.decode import indexer_decode_scores, indexer_decode_topk
from kernels.indexer.kernel import indexer_scores, indexer_scores_fp8, indexer_topk
from kernels.indexer.quantize import quantize_indexer_fp8
from kernels.indexer.reference import (
    hadamard,
    indexer_decode_scores_ref,
    indexer_decode_topk_ref,
    indexer_scores_fp8_ref,
    indexer_scores_ref,
    indexer_topk_ref,
    quantize_indexer_fp8_ref,
)

__all__ = [
    "hadamard",
    "indexer_decode_scores",
    "indexer_decode_scores_ref",
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
]
