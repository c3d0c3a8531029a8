"""Decode steps with fixed shapes, captured once as a CUDA graph and replayed for every token.

The eager forward slices each cache by host-side lengths and launches every kernel from Python: at batch 1
a decode step of the 30B model took ~0.2 s of host time for ~16 ms of GPU work (H200 profile, kernels/NOTES.md,
session 18). Here a batch's new keys are written to, and attended through, storage rows and page tables (page
size 1: the storage row of each position) that live on the device and advance on the device, so nothing a step
launches depends on a host value that changes between tokens. Sequences whose caches share one storage (the
branches of one video prefix, `KVCache(spare=...)`) take one indexer and one attention launch per layer.

Legend: B = sequences in the batch, C = positions a page table covers, R = rows of a storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from model_runtime.model import KVCache
from model_runtime.vlm import KeyeVL


@dataclass
class DecodeGroup:
    """Sequences [lo, hi) of the batch whose keys all live in one storage."""

    lo: int
    hi: int
    storage: tuple[Tensor, Tensor, Tensor]  # keys, values [L, R, K, Dh], indexer keys [L, R, Di]
    pages: Tensor  # int32 [n, C]: the storage row of each position
    lengths: Tensor  # int32 [n]: keys the new token sees, its own included
    rows: Tensor  # int64 [n]: the storage row its keys go to


@dataclass
class DecodeState:
    groups: list[DecodeGroup]

    def advance(self) -> None:
        """Each sequence's next token sits one position (and, in its own contiguous rows, one row) further."""
        for group in self.groups:
            group.lengths.add_(1)
            group.rows.add_(1)


def decode_state(caches: Sequence[KVCache], steps: int) -> DecodeState | None:
    """Device-side tables for `steps` decode steps over `caches` (room is reserved first), or None where a
    cache cannot be read this way: e4m3 indexer keys (the decode kernels read 16-bit keys), no indexer, or a
    branch whose rows live in another storage than its parent's. Consecutive caches sharing a storage form
    one group."""
    runs: list[list[tuple[KVCache, np.ndarray]]] = []
    for cache in caches:
        if cache.index_fp8 or cache.config.sa is None:
            return None
        cache.reserve(steps)  # before reading rows: growing moves a cache to new storage
        rows = cache.storage_rows()
        if rows is None:
            return None
        if runs and runs[-1][0][0].storage[0] is cache.storage[0]:
            runs[-1].append((cache, rows))
        else:
            runs.append([(cache, rows)])
    groups, lo = [], 0
    for run in runs:
        device = run[0][0].k.device
        width = max(len(rows) for _, rows in run)
        pages = np.zeros((len(run), width), dtype=np.int32)
        for i, (_, rows) in enumerate(run):
            pages[i, : len(rows)] = rows
        k, v, index_k, _ = run[0][0].storage
        groups.append(
            DecodeGroup(
                lo=lo,
                hi=lo + len(run),
                storage=(k, v, index_k),
                pages=torch.from_numpy(pages).to(device),
                lengths=torch.tensor([c.length + 1 for c, _ in run], dtype=torch.int32, device=device),
                rows=torch.tensor([int(rows[c.length]) for c, rows in run], dtype=torch.int64, device=device),
            )
        )
        lo += len(run)
    return DecodeState(groups)


class DecodeGraph:
    """The decode step of one fixed batch of caches: the first step runs eagerly (it also compiles and warms
    everything up), is then captured, and every later step is one graph replay plus two small input copies.
    A batch that changes (a sequence finishes) needs a new DecodeGraph."""

    def __init__(self, model: KeyeVL, caches: Sequence[KVCache], state: DecodeState):
        self.model, self.caches, self.state = model, list(caches), state
        device = caches[0].k.device
        self.tokens = torch.zeros(len(caches), dtype=torch.long, device=device)  # [B]
        self.positions = torch.zeros(3, len(caches), dtype=torch.long, device=device)  # [3, B]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.hidden: Tensor | None = None  # [B, D], the graph's output

    def step(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens [B], positions [3, B] → hidden states [B, D] (valid until the next step); every cache
        advances by one token."""
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        if self.graph is None:
            # Warm-up on a side stream, as capture needs (torch.cuda.graphs docs); this is a real step.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                hidden = self._forward()
            torch.cuda.current_stream().wait_stream(side)
            hidden.record_stream(torch.cuda.current_stream())
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.hidden = self._forward()
        else:
            self.graph.replay()
            hidden = self.hidden
        for cache in self.caches:
            cache.length += 1
        assert hidden is not None
        return hidden

    def _forward(self) -> Tensor:
        text = self.model.model
        return text.decode_step(text.embed_tokens(self.tokens), self.positions, self.state)
