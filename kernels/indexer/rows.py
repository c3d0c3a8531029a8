"""The top-k over indexer score rows, shared by the prefill (`indexer_topk`) and decode
(`indexer_decode_topk`) entry points: which method "auto" picks, and the torch.topk path."""

from __future__ import annotations

import torch

COOPERATIVE_ROWS = 32  # at or below this many rows, "auto" uses "cooperative"
SMALL_BATCH_ROWS = 64  # then, at or below this many, torch.topk


def auto_topk_method(rows: int) -> str:
    """Measured on the H200 (kernels/NOTES.md, session 18: decode rows of 16K and 128K keys): "cooperative"
    (many programs per row, one launch) beats torch.topk up to 32 rows (5x at 8 rows of 16K, 1.8x of 128K; level
    at 32 rows of 128K), and "split" everywhere; torch.topk is kept up to 64 rows, where it beat our kernels on
    prefill chunks before (session 12); "minmax" (one program per row, pruned by group extremes) wins on long
    prefill chunks."""
    if rows <= COOPERATIVE_ROWS:
        return "cooperative"
    return "torch" if rows <= SMALL_BATCH_ROWS else "minmax"


def torch_topk_rows(scores: torch.Tensor, topk: int, lengths: torch.Tensor, out: torch.Tensor) -> None:
    """torch.topk over rows whose columns past their length hold -inf; short rows padded with -1."""
    picked = scores.topk(topk, dim=1).indices  # [R, K]; short rows also pick -inf columns >= L
    out.copy_(torch.where(picked < lengths[:, None], picked, -1).to(torch.int32))


def contiguous_last(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor with a unit innermost stride, as the kernels index it."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()
