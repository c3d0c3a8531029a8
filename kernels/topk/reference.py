"""Plain-PyTorch top-k over causal score rows: the oracle for the Triton selection kernel.

Row r of `scores` is valid on columns [0, lengths[r]); the rest is ignored. A row with at
most `topk` valid columns selects all of them (0, 1, ..., L-1); every row is padded with -1
up to `topk` entries. The order inside a row is unspecified; tests compare sets.
"""

from __future__ import annotations

import torch

from kernels._validate import INDEX_DTYPES, require, require_dtype, require_rank


def check_select_topk_args(scores: torch.Tensor, topk: int, lengths: torch.Tensor) -> None:
    require_rank("scores", scores, 2)
    require_rank("lengths", lengths, 1)
    require_dtype("lengths", lengths, INDEX_DTYPES)
    require(scores.dtype == torch.float32, f"scores must be float32, got {scores.dtype}")
    require(lengths.shape[0] == scores.shape[0], "lengths must have one entry per score row")
    require(topk >= 1, f"topk must be >= 1, got {topk}")


def select_topk_ref(scores: torch.Tensor, topk: int, lengths: torch.Tensor) -> torch.Tensor:
    """int32 [R, topk]: column ids of the `topk` largest scores in each row's valid prefix."""
    check_select_topk_args(scores, topk, lengths)
    rows, cols = scores.shape
    columns = torch.arange(cols, device=scores.device)  # [S]
    valid = columns[None, :] < lengths[:, None].to(columns.dtype)  # [R, S]
    # In float64 a valid -inf score becomes -1e300 (below every finite fp32 score), so only the columns
    # past the prefix are -inf and a valid -inf never loses to one of them.
    scores64 = scores.double().masked_fill(scores.isneginf(), -1e300)
    masked = scores64.masked_fill(~valid, float("-inf"))  # [R, S]
    width = min(topk, cols)
    chosen = masked.topk(width, dim=1).indices.to(torch.int32)  # [R, width]
    out = torch.full((rows, topk), -1, dtype=torch.int32, device=scores.device)
    out[:, :width] = chosen
    # Short rows: everything valid is selected, the rest is padding (topk would have
    # returned arbitrary masked columns there).
    slot = torch.arange(topk, device=scores.device)  # [K]
    short = lengths.to(torch.int64) <= topk  # [R]
    everything = torch.where(slot[None, :] < lengths[:, None], slot[None, :], -1).to(torch.int32)
    return torch.where(short[:, None], everything, out)
