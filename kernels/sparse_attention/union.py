"""Per query block: the union of its queries' selected keys and, per key, which queries picked it.

The Triton prefill kernel walks, for a block of adjacent queries, the sorted union of their
index sets once (so shared keys are loaded once for the whole block) and masks per query with
one owner word per union slot (bit j: the block's query j picked the key), so a key tile's mask
is one vector load rather than a load per (row, key). The union width U (the largest block's union) is the quantity
the benchmarks report against k.

Two builders, one result: `build_block_union` is a Triton kernel, one program per block, that sorts
the block's (key, query) pairs in registers, finds each key's first occurrence with a scan, and
writes keys, counts and owner bits in one pass (the PyTorch builder, two sorts of T·K ids and a
scatter, cost more than the attention itself at 128K on the H200: 122 ms); `build_block_union_torch`
is the same in PyTorch, kept as the oracle and as the fallback for blocks too large for one
program's registers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

_PAD = torch.iinfo(torch.int32).max
_MAX_PAIRS = 1 << 15  # (query, key) pairs one program sorts in registers: 8 queries × top-2048 = 16K
MAX_BLOCK_Q = 32  # queries per block: one bit each in an int32 owner word


@dataclass
class BlockUnion:
    keys: torch.Tensor  # int32 [n_blocks, >= U]: sorted distinct key positions, padded with INT32_MAX
    counts: torch.Tensor  # int32 [n_blocks]: valid entries of each row of `keys`
    owners: (
        torch.Tensor
    )  # int32 [n_blocks, >= U]: bit j of owners[b, u] set if query j of block b picked keys[b, u]

    @property
    def width(self) -> int:
        """U: the widest block's union (a host sync)."""
        return max(1, int(self.counts.max().item())) if self.counts.numel() else 1


def build_block_union(idx: torch.Tensor, block_q: int) -> BlockUnion:
    """Union and owner words for blocks of `block_q` (<= 32) adjacent rows of idx (int [T, K], -1 = none).

    Triton (GPU, or the CPU interpreter); PyTorch when there is nothing to sort, when a block's pairs do not
    fit one program, or when positions do not fit the kernel's packed 32-bit (key, query) codes. The Triton
    result's `keys` and `owners` rows are `block_q * K` wide (no host sync to size them): each as many bytes
    as idx."""
    tokens, topk = idx.shape
    if not 1 <= block_q <= MAX_BLOCK_Q:
        raise ValueError(f"block_q must be in 1..{MAX_BLOCK_Q}, got {block_q}")
    q_bits = max(0, (block_q - 1).bit_length())
    pairs = triton.next_power_of_2(block_q) * triton.next_power_of_2(max(1, topk))
    if tokens == 0 or topk == 0 or pairs > _MAX_PAIRS or int(idx.max().item()) >= (_PAD >> q_bits):
        return build_block_union_torch(idx, block_q)
    n_blocks = -(-tokens // block_q)
    width = block_q * topk  # the widest union possible; the kernel fills `counts[b]` of each row
    keys = torch.full((n_blocks, width), _PAD, dtype=torch.int32, device=idx.device)
    counts = torch.empty(n_blocks, dtype=torch.int32, device=idx.device)
    owners = torch.zeros(n_blocks, width, dtype=torch.int32, device=idx.device)
    idx = idx if idx.stride(-1) == 1 else idx.contiguous()
    _block_union_kernel[(n_blocks,)](
        idx, keys, counts, owners, tokens, topk, idx.stride(0), keys.stride(0), owners.stride(0),
        BLOCK_Q=block_q, BLOCK_QP=1 << q_bits, BLOCK_K=triton.next_power_of_2(max(1, topk)), Q_BITS=q_bits,
        num_warps=8 if pairs >= 4096 else 4,
    )  # fmt: skip
    return BlockUnion(keys=keys, counts=counts, owners=owners)


@triton.jit
def _last_two(last_a, prev_a, last_b, prev_b):
    """Scan operator: (last, second-to-last) element of a run. prev = -1 marks a one-element run."""
    return last_b, tl.where(prev_b == -1, last_a, prev_b)


@triton.jit
def _block_union_kernel(
    idx_ptr,
    keys_ptr,
    counts_ptr,
    owners_ptr,
    T,
    K,
    stride_idx,
    stride_keys,
    stride_owners,
    BLOCK_Q: tl.constexpr,
    BLOCK_QP: tl.constexpr,
    BLOCK_K: tl.constexpr,
    Q_BITS: tl.constexpr,
):
    block = tl.program_id(0)
    local = tl.arange(0, BLOCK_QP)[:, None]  # query within the block
    col = tl.arange(0, BLOCK_K)[None, :]
    token = block * BLOCK_Q + local
    ok = (local < BLOCK_Q) & (token < T) & (col < K)
    key = tl.load(idx_ptr + token.to(tl.int64) * stride_idx + col, mask=ok, other=-1).to(tl.int32)
    # One sortable code per (key, query): sorted codes list keys ascending, a key's owners together.
    code = tl.where(ok & (key >= 0), (key << Q_BITS) | local, 0x7FFFFFFF)
    code = tl.sort(tl.reshape(code, (BLOCK_QP * BLOCK_K,)))
    _, prev = tl.associative_scan((code, tl.full(code.shape, -1, tl.int32)), 0, _last_two)
    valid = code != 0x7FFFFFFF
    key = code >> Q_BITS
    first = valid & ((prev == -1) | ((prev >> Q_BITS) != key))  # a key's first owner
    slot = tl.cumsum(first.to(tl.int32), 0) - 1  # its place in the union, shared by its other owners
    tl.store(keys_ptr + block.to(tl.int64) * stride_keys + slot, key, mask=first)
    tl.store(counts_ptr + block, tl.sum(first.to(tl.int32), 0))
    owner_bit = 1 << (code & (BLOCK_QP - 1))
    tl.atomic_or(owners_ptr + block.to(tl.int64) * stride_owners + slot, owner_bit, mask=valid)


def _first_occurrences(sorted_rows: torch.Tensor) -> torch.Tensor:
    """bool mask of entries that differ from their left neighbour in each sorted row."""
    first = torch.ones_like(sorted_rows, dtype=torch.bool)
    first[:, 1:] = sorted_rows[:, 1:] != sorted_rows[:, :-1]
    return first


def build_block_union_torch(idx: torch.Tensor, block_q: int) -> BlockUnion:
    """`build_block_union` in PyTorch (sorts + searchsorted + scatter); rows of `keys` are exactly U wide."""
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

    # Slot of every selected key inside its block's union, then the picking query's bit there.
    padded_queries = torch.nn.functional.pad(per_query, (0, 0, 0, pad_rows), value=_PAD)
    slot = torch.searchsorted(keys, padded_queries.reshape(n_blocks, block_q * topk))  # [B, q*K]
    valid = padded_queries.reshape(n_blocks, block_q * topk) != _PAD
    local = torch.arange(block_q, device=idx.device).repeat_interleave(topk)  # [q*K]: query in block
    bits = torch.where(valid, (1 << local)[None, :], 0).to(torch.int64)  # [B, q*K]
    owners64 = torch.zeros(n_blocks, width, dtype=torch.int64, device=idx.device)
    owners64.scatter_add_(1, torch.where(valid, slot, 0), bits)
    # Each bit is added at most once per slot (duplicates were removed per query), so the sum is the OR.
    owners = torch.where(owners64 >= 2**31, owners64 - 2**32, owners64).to(torch.int32)
    return BlockUnion(keys=keys, counts=counts, owners=owners)
