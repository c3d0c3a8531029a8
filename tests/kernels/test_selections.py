"""`kernels.sparse_attention.selections.union_stats`: U / k on selections with a known answer."""

from __future__ import annotations

import torch

from kernels.sparse_attention.bench import local_selection
from kernels.sparse_attention.selections import BLOCK_Q, union_stats


def test_local_window_union_is_k_plus_the_block_offsets() -> None:
    # Every query of a block picks 64 sinks + its last 2048 - 64 keys: the union adds one key per extra query.
    stats = union_stats("local", local_selection(4096, "cpu"), 2048)
    assert stats["U_mean"] == 2048 + BLOCK_Q - 1
    assert stats["U_max"] == 2048 + BLOCK_Q - 1
    assert 0.9 < stats["picks within k of the query"] <= 1.0


def test_disjoint_picks_make_the_union_block_q_times_k() -> None:
    tokens, topk = 64, 4
    idx = torch.arange(tokens * topk).view(tokens, topk)  # no two queries share a key (causality aside)
    stats = union_stats("disjoint", idx, topk)
    assert stats["U_max"] == BLOCK_Q * topk
    assert stats["U/k"] == BLOCK_Q
