"""Plain-PyTorch sparse decode against a paged KV cache: the oracle for the Triton kernel.

Each sequence b has one new query q[b] and a page table mapping its token positions to cache
pages (position p lives in page page_table[b, p // page_size], row p % page_size). It attends,
in every head, to the positions idx[b] (its top-k set; -1 ignored, duplicates once), GQA like
prefill. A sequence with no valid index gets zeros.
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
from kernels.sparse_attention.reference import sparse_attention_ref


def check_sparse_decode_args(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor, idx: torch.Tensor
) -> None:
    require_rank("q", q, 3)
    require_rank("k_cache", k_cache, 4)
    require_rank("page_table", page_table, 2)
    require_rank("idx", idx, 2)
    require_dtype("q", q, FLOAT_DTYPES)
    require_dtype("page_table", page_table, INDEX_DTYPES)
    require_dtype("idx", idx, INDEX_DTYPES)
    require_same_device(q=q, k_cache=k_cache, v_cache=v_cache, page_table=page_table, idx=idx)
    require(k_cache.shape == v_cache.shape, "k_cache and v_cache must have one shape [P, page, Hkv, D]")
    require(k_cache.dtype == q.dtype and v_cache.dtype == q.dtype, "q and the caches must share one dtype")
    require(k_cache.shape[3] == q.shape[2], "cache head dim must match q head dim")
    require(q.shape[1] % k_cache.shape[2] == 0, "Hq must be a multiple of Hkv")
    require(page_table.shape[0] == q.shape[0] and idx.shape[0] == q.shape[0], "one page-table/idx row per q")


def gather_positions(cache: torch.Tensor, page_table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """cache rows [P, page, H, D] at sequence positions [K] through one page-table row -> [K, H, D]."""
    page_size = cache.shape[1]
    pages = page_table[positions // page_size].long()  # [K]
    return cache[pages, positions % page_size]


def sparse_decode_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    idx: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """[B, Hq, D] one-token attention per sequence over its selected cached positions."""
    check_sparse_decode_args(q, k_cache, v_cache, page_table, idx)
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        sel = idx[b].long()  # [K]
        positions = sel.clamp_min(0)
        keys = gather_positions(k_cache, page_table[b], positions)  # [K, Hkv, D]
        values = gather_positions(v_cache, page_table[b], positions)
        # Renumber the gathered rows 0..K-1 and reuse the prefill oracle for one query.
        local = torch.where(sel >= 0, torch.arange(sel.shape[0], device=sel.device), -1)
        # Duplicated positions must count once: point repeats at -1.
        first = torch.ones_like(sel, dtype=torch.bool)
        ordered, order = sel.sort()
        first[order[1:]] = ordered[1:] != ordered[:-1]
        local = torch.where(first, local, -1)
        out[b] = sparse_attention_ref(q[b : b + 1], keys, values, local[None], scale)[0]
    return out
