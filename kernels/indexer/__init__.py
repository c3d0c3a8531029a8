"""Lightning-indexer scores and the fused indexer -> top-k selection (Triton + PyTorch reference), bf16 or FP8."""

from kernels.indexer.kernel import indexer_scores, indexer_scores_fp8, indexer_topk
from kernels.indexer.reference import (
    hadamard,
    indexer_scores_fp8_ref,
    indexer_scores_ref,
    indexer_topk_ref,
    quantize_indexer_fp8,
)

__all__ = [
    "hadamard",
    "indexer_scores",
    "indexer_scores_fp8",
    "indexer_scores_fp8_ref",
    "indexer_scores_ref",
    "indexer_topk",
    "indexer_topk_ref",
    "quantize_indexer_fp8",
]
