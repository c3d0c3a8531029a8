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

import warnings
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
    # keys, values [L, R, K, Dh], indexer keys [L, R, Di] (e4m3 with their scales [L, R] under index_fp8, else
    # 16-bit and None): `KVCache.storage`
    storage: tuple[Tensor, Tensor, Tensor, Tensor | None]
    pages: Tensor  # int32 [n, C]: the storage row of each position
    lengths: Tensor  # int32 [n]: keys the new token sees, its own included
    rows: Tensor  # int64 [n]: the storage row its keys go to
    active: Tensor  # int32 [n]: 1 while the sequence decodes; a finished one stays in place (0)


@dataclass
class DecodeState:
    groups: list[DecodeGroup]

    def advance(self) -> None:
        """Each decoding sequence's next token sits one position (and, in its own contiguous rows, one row)
        further; a finished one keeps rewriting its next row, which nothing reads."""
        for group in self.groups:
            group.lengths.add_(group.active)
            group.rows.add_(group.active)

    def set_active(self, flags: Sequence[bool]) -> None:
        """Which batch rows still decode (outside a capture: a device write the next replay reads)."""
        for group in self.groups:
            group.active.copy_(torch.tensor(flags[group.lo : group.hi], dtype=torch.int32))


def decode_state(caches: Sequence[KVCache], steps: Sequence[int]) -> DecodeState | None:
    """Device-side tables for decoding up to steps[i] tokens into caches[i] (room is reserved first), or None
    where a cache cannot be read this way: no indexer, or a branch whose rows live in another storage than its
    parent's. Consecutive caches sharing a storage form one group."""
    runs: list[list[tuple[KVCache, np.ndarray]]] = []
    for cache, n_steps in zip(caches, steps, strict=True):
        if cache.config.sa is None:
            return None
        # Room for its steps and one row more, which a finished sequence keeps rewriting; reserved before the rows
        # are read: growing moves a cache to new storage.
        cache.reserve(max(n_steps, 0) + 1)
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
        groups.append(
            DecodeGroup(
                lo=lo,
                hi=lo + len(run),
                storage=run[0][0].storage,
                pages=torch.from_numpy(pages).to(device),
                lengths=torch.tensor([c.length + 1 for c, _ in run], dtype=torch.int32, device=device),
                rows=torch.tensor([int(rows[c.length]) for c, rows in run], dtype=torch.int64, device=device),
                active=torch.ones(len(run), dtype=torch.int32, device=device),
            )
        )
        lo += len(run)
    return DecodeState(groups)


class DecodeGraph:
    """The decode step of one fixed batch of caches: the first step runs eagerly (it also compiles and warms
    everything up), is then captured, and every later step is one graph replay plus two small input copies.
    Sequences that finish stay in the batch, frozen (`DecodeState.set_active`), so answers of different
    lengths never force a second capture. A step that cannot be captured (an operation inside it that waits for
    the host) warns once, and every later step runs eagerly (`failed`)."""

    def __init__(self, model: KeyeVL, caches: Sequence[KVCache], state: DecodeState):
        self.model, self.caches, self.state = model, list(caches), state
        self.row = {id(cache): i for i, cache in enumerate(self.caches)}
        self.flags = [True] * len(self.caches)
        device = caches[0].k.device
        self.tokens = torch.zeros(len(caches), dtype=torch.long, device=device)  # [B]
        self.positions = torch.zeros(3, len(caches), dtype=torch.long, device=device)  # [3, B]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.hidden: Tensor | None = None  # [B, D], the graph's output
        self.failed = False

    def step(self, caches: Sequence[KVCache], tokens: Sequence[int], positions: Sequence[int]) -> Tensor:
        """The next token (and its mRoPE position) of each of `caches`, a subset of the batch that still
        decodes → their hidden states [len(caches), D]; each of them advances by one token."""
        rows = [self.row[id(cache)] for cache in caches]
        flags = [False] * len(self.caches)
        feed = np.zeros((2, len(self.caches)), dtype=np.int64)  # frozen rows: token 0 at position 0
        for row, token, position in zip(rows, tokens, positions, strict=True):
            flags[row] = True
            feed[:, row] = token, position
        if flags != self.flags:
            self.state.set_active(flags)
            self.flags = flags
        feed_device = torch.from_numpy(feed).to(self.tokens.device)
        self.tokens.copy_(feed_device[0])
        self.positions.copy_(feed_device[1].expand(3, -1))
        if self.graph is not None:
            self.graph.replay()
            assert self.hidden is not None
            hidden = self.hidden
        elif self.failed:
            hidden = self._forward()
        else:
            # Warm-up on a side stream, as capture needs (torch.cuda.graphs docs); this is a real step.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                hidden = self._forward()
            torch.cuda.current_stream().wait_stream(side)
            hidden.record_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self.hidden = self._forward()
                self.graph = graph
            except RuntimeError as exc:  # the warm-up above was a real step: its result stands
                warnings.warn(f"decode step not captured, decoding eagerly: {exc}", stacklevel=2)
                self.failed = True
        for cache in caches:
            cache.length += 1
        return hidden[torch.tensor(rows, device=hidden.device)]

    def _forward(self) -> Tensor:
        text = self.model.model
        return text.decode_step(text.embed_tokens(self.tokens), self.positions, self.state)
