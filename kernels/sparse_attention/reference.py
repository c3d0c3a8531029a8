"""Plain-PyTorch top-k sparse attention (prefill): the oracle for the Triton union kernel.

Query t attends, in every head, to exactly the key positions listed in idx[t] (entries of -1
are ignored, duplicates count once); head h reads kv head h // (Hq // Hkv) (GQA). A query with
no valid index gets a zero output, never NaN. Computed in fp32, tiled over queries so the
gathered keys stay small.
"""

from __future__ import annotations

import torch

from kernels._validate import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    require,
    require_dtype,
    require_rank,
    require_same_device,
)


def check_sparse_attention_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> None:
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        require_rank(name, tensor, 3)
        require_dtype(name, tensor, FLOAT_DTYPES)
    require_rank("idx", idx, 2)
    require_dtype("idx", idx, INDEX_DTYPES)
    require_same_device(q=q, k=k, v=v, idx=idx)
    require(k.dtype == q.dtype and v.dtype == q.dtype, "q, k and v must share one dtype")
    require(k.shape == v.shape, f"k {tuple(k.shape)} and v {tuple(v.shape)} must have one shape")
    require(q.shape[2] == k.shape[2], f"q head dim {q.shape[2]} must match k head dim {k.shape[2]}")
    require(k.shape[1] >= 1 and q.shape[1] % k.shape[1] == 0, "Hq must be a multiple of Hkv")
    require(idx.shape[0] == q.shape[0], f"idx must have one row per query ({q.shape[0]}), got {idx.shape[0]}")


def sparse_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    scale: float,
    *,
    query_chunk: int = 64,
) -> torch.Tensor:
    """[T, Hq, D] attention of each query over its selected keys only (fp32 math, q's dtype out)."""
    check_sparse_attention_args(q, k, v, idx)
    tokens, q_heads, _ = q.shape
    group = q_heads // k.shape[1]
    out = torch.empty_like(q)
    for first in range(0, tokens, query_chunk):
        rows = slice(first, min(first + query_chunk, tokens))
        sel = idx[rows].long()  # [t, K]
        valid = sel >= 0
        # Duplicates count once: keep only the first occurrence of each index in a row.
        ordered, order = sel.sort(dim=1)
        repeat = torch.zeros_like(valid)
        repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        valid &= ~repeat.scatter(1, order, repeat)
        keys = k[sel.clamp_min(0)].float().repeat_interleave(group, dim=2)  # [t, K, Hq, D]
        values = v[sel.clamp_min(0)].float().repeat_interleave(group, dim=2)  # [t, K, Hq, D]
        logits = torch.einsum("thd,tkhd->thk", q[rows].float(), keys) * scale  # [t, Hq, K]
        logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows with no key -> 0
        out[rows] = torch.einsum("thk,tkhd->thd", weights, values).to(q.dtype)
    return out
