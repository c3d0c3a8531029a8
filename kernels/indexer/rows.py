"""The top-k over indexer score rows, shared by the prefill (`indexer_topk`) and decode
(`indexer_decode_topk`) entry points: which method "auto" picks, and the torch.topk path."""

from __future__ import annotations

import torch

SMALL_BATCH_ROWS = 64  # at or below this many rows, "auto" uses torch.topk


def auto_topk_method(rows: int) -> str:
    """Measured on the H200 (kernels/NOTES.md): for one row "cooperative" (many programs per row, one
    launch) beats "split" and torch.topk; torch.topk beats our kernels on a few rows; "minmax" (one program
    per row, pruned by group extremes) wins on long prefill chunks."""
    return "cooperative" if rows == 1 else "torch" if rows <= SMALL_BATCH_ROWS else "minmax"


def torch_topk_rows(scores: torch.Tensor, topk: int, lengths: torch.Tensor, out: torch.Tensor) -> None:
    """torch.topk over rows whose columns past their length hold -inf; short rows padded with -1."""
    picked = scores.topk(topk, dim=1).indices  # [R, K]; short rows also pick -inf columns >= L
    out.copy_(torch.where(picked < lengths[:, None], picked, -1).to(torch.int32))


def contiguous_last(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor with a unit innermost stride, as the kernels index it."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()
