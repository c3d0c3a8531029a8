"""Lightning-indexer scores and the fused indexer -> top-k selection (Triton + PyTorch reference)."""

from kernels.indexer.kernel import indexer_scores, indexer_topk
from kernels.indexer.reference import indexer_scores_ref, indexer_topk_ref

__all__ = ["indexer_scores", "indexer_scores_ref", "indexer_topk", "indexer_topk_ref"]
