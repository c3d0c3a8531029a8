"""Per query block: the union of its queries' selected keys and a bitmask of who picked what.

The Triton prefill kernel walks, for a block of adjacent queries, the sorted union of their
index sets once (so shared keys are loaded once for the whole block) and masks per query with
one bit per (query, union slot). Built with sorts and a scatter in PyTorch; the union width U
(the largest block's union) is the quantity the benchmarks report against k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_PAD = torch.iinfo(torch.int32).max


@dataclass
class BlockUnion:
    keys: torch.Tensor  # int32 [n_blocks, U]: sorted distinct key positions, padded with INT32_MAX
    counts: torch.Tensor  # int32 [n_blocks]: valid entries of each row of `keys`
    mask: torch.Tensor  # int32 [T, ceil(U / 32)]: bit u of word u // 32 set if the query picked keys[b, u]

    @property
    def width(self) -> int:
        return self.keys.shape[1]


def _first_occurrences(sorted_rows: torch.Tensor) -> torch.Tensor:
    """bool mask of entries that differ from their left neighbour in each sorted row."""
    first = torch.ones_like(sorted_rows, dtype=torch.bool)
    first[:, 1:] = sorted_rows[:, 1:] != sorted_rows[:, :-1]
    return first


def build_block_union(idx: torch.Tensor, block_q: int) -> BlockUnion:
    """Union and per-query bitmask for blocks of `block_q` adjacent rows of idx (int [T, K], -1 = none)."""
    tokens, topk = idx.shape
    n_blocks = -(-tokens // block_q)
    pad_rows = n_blocks * block_q - tokens
    per_query = idx.to(torch.int32).sort(dim=1).values  # [T, K]
    per_query = torch.where(_first_occurrences(per_query) & (per_query >= 0), per_query, _PAD)
    per_block = torch.nn.functional.pad(per_query, (0, 0, 0, pad_rows), value=_PAD)
    per_block = per_block.reshape(n_blocks, block_q * topk).sort(dim=1).values  # [B, q*K]
    per_block = torch.where(_first_occurrences(per_block), per_block, _PAD).sort(dim=1).values
    counts = (per_block != _PAD).sum(dim=1).to(torch.int32)  # [B]
    width = max(1, int(counts.max().item())) if n_blocks else 1
    keys = per_block[:, :width].contiguous()  # [B, U]

    # Slot of every selected key inside its block's union, then one bit per slot.
    padded_queries = torch.nn.functional.pad(per_query, (0, 0, 0, pad_rows), value=_PAD)
    slot = torch.searchsorted(keys, padded_queries.reshape(n_blocks, block_q * topk))  # [B, q*K]
    slot = slot.reshape(-1)[: tokens * topk]  # [T*K]
    picked = per_query.reshape(-1)  # [T*K]
    valid = picked != _PAD
    words = -(-width // 32)
    bits = torch.where(valid, torch.ones_like(slot) << (slot % 32), torch.zeros_like(slot))  # int64
    mask64 = torch.zeros(tokens, words, dtype=torch.int64, device=idx.device)
    rows = torch.arange(tokens, device=idx.device).repeat_interleave(topk)
    mask64.index_put_((rows, torch.where(valid, slot // 32, 0)), bits, accumulate=True)
    # Each bit is added at most once per word, so the int64 sum is the OR; wrap to int32.
    mask = torch.where(mask64 >= 2**31, mask64 - 2**32, mask64).to(torch.int32)
    return BlockUnion(keys=keys, counts=counts, mask=mask)
