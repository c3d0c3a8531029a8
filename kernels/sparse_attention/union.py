"""Per query block: the union of its queries' selected keys and, per key, which queries picked it.

The Triton prefill kernel walks, for a block of adjacent queries, the sorted union of their
index sets once (so shared keys are loaded once for the whole block) and masks per query with
one owner word per union slot (bit j: the block's query j picked the key), so a key tile's mask
is one vector load rather than a load per (row, key). The union width U (the largest block's
union) is the quantity the benchmarks report against k.

Three builders, one result. `build_block_union` runs Triton: by default a bitmap per block (its
selections set bits, a walk over the words lists the keys in order, a third pass gives each selection
its slot), else a kernel that sorts the block's (key, query) pairs in registers (bitonic `tl.sort` over
16K codes: 54 ms at 128K on the H200, where the bitmap needs no sort at all). `build_block_union_torch`
is the same in PyTorch (two sorts of T·K ids and a scatter), kept as the oracle and as the fallback for
blocks too large for one program's registers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

_PAD = torch.iinfo(torch.int32).max
_MAX_SORT_PAIRS = (
    1 << 15
)  # (query, key) pairs the sort kernel holds in registers (8 queries × top-2048 = 16K)
_MAX_QUERY_KEYS = 1 << 15  # one query's selections the bitmap kernels hold at once
MAX_BLOCK_Q = 32  # queries per block: one bit each in an int32 owner word


@dataclass
class BlockUnion:
    keys: torch.Tensor  # int32 [n_blocks, >= U]: sorted distinct key positions, padded with INT32_MAX
    counts: torch.Tensor  # int32 [n_blocks]: valid entries of each row of `keys`
    # int32 [n_blocks, >= U]: bit j of owners[b, u] set if query j of block b picked keys[b, u]
    owners: torch.Tensor

    @property
    def width(self) -> int:
        """U: the widest block's union (a host sync)."""
        return max(1, int(self.counts.max().item())) if self.counts.numel() else 1


UNION_METHODS = ("bitmap", "sort")
# One atomic per run of selections in one bitmap word, else one per key: 6.7 against 10.6 ms per 256K union on the
# H200 (session 19). Read at each launch (`python -m kernels.sparse_attention.bench --union-rounds N` sets it).
SET_BITS_RUNS = True
_BITMAP_MAX_BYTES = 4 << 30  # bitmap + word offsets + word list; above this the sort kernel builds the union


def build_block_union(idx: torch.Tensor, block_q: int, *, method: str = "bitmap") -> BlockUnion:
    """Union and owner words for blocks of `block_q` (<= 32) adjacent rows of idx (int [T, K], -1 = none).

    "bitmap" (default): one bit per key position per block, set by the block's selections, then read back in
    order, so the union comes out sorted without sorting (O(positions / 32) words per block). "sort": the
    block's (key, query) pairs sorted in registers; used when the bitmaps would pass 4 GB. Both are Triton
    (GPU, or the CPU interpreter); PyTorch when there is nothing to select, when a query's selections (for
    "sort": a block's pairs) do not fit one program, or when positions do not fit the sort kernel's packed
    32-bit (key, query) codes. The Triton result's `keys` and `owners` rows are `block_q * K` wide (no host
    sync to size them): each as many bytes as idx. Key positions must fit int32."""
    tokens, topk = idx.shape
    if not 1 <= block_q <= MAX_BLOCK_Q:
        raise ValueError(f"block_q must be in 1..{MAX_BLOCK_Q}, got {block_q}")
    if method not in UNION_METHODS:
        raise ValueError(f"method must be one of {UNION_METHODS}, got {method!r}")
    q_bits = max(0, (block_q - 1).bit_length())
    pairs = triton.next_power_of_2(block_q) * triton.next_power_of_2(max(1, topk))
    if tokens == 0 or topk == 0 or triton.next_power_of_2(topk) > _MAX_QUERY_KEYS:
        return build_block_union_torch(idx, block_q)
    largest = int(idx.max().item())
    if largest > _PAD - 1:
        raise ValueError(f"key positions must be below 2**31 - 1 (int32), got {largest}")
    n_blocks = -(-tokens // block_q)
    words = largest // 32 + 1
    if method == "bitmap" and 3 * 4 * n_blocks * words > _BITMAP_MAX_BYTES:
        method = "sort"
    if method == "sort" and (pairs > _MAX_SORT_PAIRS or largest >= (_PAD >> q_bits)):
        return build_block_union_torch(idx, block_q)
    width = block_q * topk  # the widest union possible; the kernel fills `counts[b]` of each row
    keys = torch.full((n_blocks, width), _PAD, dtype=torch.int32, device=idx.device)
    counts = torch.empty(n_blocks, dtype=torch.int32, device=idx.device)
    owners = torch.zeros(n_blocks, width, dtype=torch.int32, device=idx.device)
    idx = idx if idx.stride(-1) == 1 else idx.contiguous()
    warps = 8 if pairs >= 4096 else 4
    if method == "sort":
        _block_union_kernel[(n_blocks,)](
            idx, keys, counts, owners, tokens, topk, idx.stride(0), keys.stride(0), owners.stride(0),
            BLOCK_Q=block_q, BLOCK_QP=1 << q_bits, BLOCK_K=triton.next_power_of_2(max(1, topk)), Q_BITS=q_bits,
            num_warps=warps,
        )  # fmt: skip
        return BlockUnion(keys=keys, counts=counts, owners=owners)
    bitmap = torch.zeros(n_blocks, words, dtype=torch.int32, device=idx.device)
    word_slot = torch.empty(n_blocks, words, dtype=torch.int32, device=idx.device)
    word_list = torch.empty(n_blocks, words, dtype=torch.int32, device=idx.device)
    bitmap_meta = {"BLOCK_Q": block_q, "BLOCK_K": triton.next_power_of_2(max(1, topk))}
    _set_bits_kernel[(n_blocks,)](idx, bitmap, tokens, topk, idx.stride(0), bitmap.stride(0), **bitmap_meta,
                                  RUNS=SET_BITS_RUNS, num_warps=warps)  # fmt: skip
    _read_bits_kernel[(n_blocks,)](bitmap, word_slot, word_list, keys, counts, words, bitmap.stride(0),
                                   keys.stride(0), WIDE=1024, WORDS=64, num_warps=4)  # fmt: skip
    _mark_owners_kernel[(n_blocks,)](
        idx, bitmap, word_slot, owners, tokens, topk, idx.stride(0), bitmap.stride(0), owners.stride(0),
        **bitmap_meta, num_warps=warps,
    )  # fmt: skip
    return BlockUnion(keys=keys, counts=counts, owners=owners)


@triton.jit
def _query_keys(idx_ptr, T, K, stride_idx, j, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):
    """Query j of the block's selections: (key [K], valid [K]). One query at a time keeps a program's
    tensors [K]-sized whatever BLOCK_Q is (a [16, 2048] block needed 256 KB of shared memory)."""
    token = tl.program_id(0) * BLOCK_Q + j
    col = tl.arange(0, BLOCK_K)
    ok = col < tl.where(token < T, K, 0)  # (a scalar & vector mask trips the CPU interpreter)
    key = tl.load(idx_ptr + token.to(tl.int64) * stride_idx + col, mask=ok, other=-1).to(tl.int32)
    return key, ok & (key >= 0)


@triton.jit
def _segmented_or(start_a, bits_a, start_b, bits_b):
    """Scan operator: OR of the bits since the latest segment start (start = 1 opens a segment)."""
    return start_a | start_b, tl.where(start_b != 0, bits_b, bits_a | bits_b)


@triton.jit
def _set_bits_kernel(
    idx_ptr, bitmap_ptr, T, K, stride_idx, stride_bitmap, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    RUNS: tl.constexpr,
):  # fmt: skip
    """Bit `key` of the block's bitmap for every key one of its queries selected. The top-k lists its keys
    mostly in column order, so adjacent entries often share a word: each run of entries in one word ORs its
    bits (a segmented scan) and only the run's last entry sets them, one atomic per run instead of one per key
    (atomics on one word queue in L2). Any order is correct; column order only makes the runs long. The atomics
    are relaxed: nothing here reads them back (acq_rel ones, Triton's default, made this kernel 2.7x slower)."""
    row = bitmap_ptr + tl.program_id(0).to(tl.int64) * stride_bitmap
    col = tl.arange(0, BLOCK_K)
    for j in range(BLOCK_Q):
        key, valid = _query_keys(idx_ptr, T, K, stride_idx, j, BLOCK_Q, BLOCK_K)
        if not RUNS:
            tl.atomic_or(row + (key >> 5), 1 << (key & 31), mask=valid, sem="relaxed")
        else:
            token = tl.program_id(0) * BLOCK_Q + j
            selections = idx_ptr + token.to(tl.int64) * stride_idx
            n_cols = tl.where(token < T, K, 0)
            before = tl.load(selections + col - 1, mask=(col >= 1) & (col - 1 < n_cols), other=-1).to(
                tl.int32
            )
            after = tl.load(selections + col + 1, mask=col + 1 < n_cols, other=-1).to(tl.int32)
            word = tl.where(valid, key >> 5, -1)
            word_before = tl.where(before >= 0, before >> 5, -1)
            word_after = tl.where(after >= 0, after >> 5, -1)
            bit = tl.where(valid, 1 << (key & 31), 0)
            _, run_bits = tl.associative_scan(((word != word_before).to(tl.int32), bit), 0, _segmented_or)
            tl.atomic_or(row + word, run_bits, mask=valid & (word != word_after), sem="relaxed")


@triton.jit
def _read_bits_kernel(
    bitmap_ptr, word_slot_ptr, word_list_ptr, keys_ptr, counts_ptr, n_words, stride_bitmap, stride_keys,
    WIDE: tl.constexpr, WORDS: tl.constexpr,
):  # fmt: skip
    """Walk the block's bitmap in order: each set bit is the next union key. A first pass gives every word its
    first slot (popcounts and a running sum; `_mark_owners_kernel` reads them) and lists the words with a bit
    set; only those are then expanded into keys (on indexer selections a few hundred of a 256K context's 8K
    words: expanding all of them was 9.2 of the union's 22 ms on the H200)."""
    block = tl.program_id(0).to(tl.int64)
    base = block * stride_bitmap
    taken = tl.zeros((), dtype=tl.int32)
    listed = tl.zeros((), dtype=tl.int32)
    for first in range(0, n_words, WIDE):
        word_id = first + tl.arange(0, WIDE)
        ok = word_id < n_words
        per_word = _popcount(tl.load(bitmap_ptr + base + word_id, mask=ok, other=0))
        tl.store(word_slot_ptr + base + word_id, taken + tl.cumsum(per_word, 0) - per_word, mask=ok)
        nonzero = per_word > 0
        tl.store(
            word_list_ptr + base + listed + tl.cumsum(nonzero.to(tl.int32), 0) - 1, word_id, mask=nonzero
        )
        taken += tl.sum(per_word, 0)
        listed += tl.sum(nonzero.to(tl.int32), 0)
    tl.store(counts_ptr + block, taken)
    tl.debug_barrier()  # list entries and slots stored by some threads are read by others
    bit = tl.arange(0, 32)[None, :]
    for first in range(0, listed, WORDS):
        entry = first + tl.arange(0, WORDS)
        ok = entry < listed
        word_id = tl.load(word_list_ptr + base + entry, mask=ok, other=0, cache_modifier=".cg")
        word = tl.load(bitmap_ptr + base + word_id, mask=ok, other=0)
        word_first = tl.load(word_slot_ptr + base + word_id, mask=ok, other=0, cache_modifier=".cg")
        is_set = ((word[:, None] >> bit) & 1).to(tl.int32)  # [WORDS, 32]
        slot = word_first[:, None] + tl.cumsum(is_set, 1) - is_set
        tl.store(keys_ptr + block * stride_keys + slot, word_id[:, None] * 32 + bit, mask=is_set != 0)


@triton.jit
def _popcount(x):
    """Set bits of each int32 (SWAR on the unsigned bits)."""
    x = x.to(tl.uint32, bitcast=True)
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _mark_owners_kernel(
    idx_ptr, bitmap_ptr, word_slot_ptr, owners_ptr, T, K, stride_idx, stride_bitmap, stride_owners,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Each selection's union slot (its word's first slot + the set bits below it) gets the query's bit."""
    block = tl.program_id(0).to(tl.int64)
    for j in range(BLOCK_Q):
        key, valid = _query_keys(idx_ptr, T, K, stride_idx, j, BLOCK_Q, BLOCK_K)
        word_id = tl.where(valid, key >> 5, 0)
        word = tl.load(bitmap_ptr + block * stride_bitmap + word_id, mask=valid, other=0)
        below = word & ((1 << (key & 31)) - 1)
        first_slot = tl.load(word_slot_ptr + block * stride_bitmap + word_id, mask=valid, other=0)
        slot = first_slot + _popcount(below)
        tl.atomic_or(owners_ptr + block * stride_owners + slot, 1 << j, mask=valid, sem="relaxed")


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
    tl.atomic_or(owners_ptr + block.to(tl.int64) * stride_owners + slot, owner_bit, mask=valid, sem="relaxed")


def _first_occurrences(sorted_rows: torch.Tensor) -> torch.Tensor:
    """bool mask of entries that differ from their left neighbour in each sorted row."""
    first = torch.ones_like(sorted_rows, dtype=torch.bool)
    first[:, 1:] = sorted_rows[:, 1:] != sorted_rows[:, :-1]
    return first


def build_block_union_torch(idx: torch.Tensor, block_q: int) -> BlockUnion:
    """`build_block_union` in PyTorch (sorts + searchsorted + scatter); rows of `keys` are exactly U wide."""
    if not 1 <= block_q <= MAX_BLOCK_Q:
        raise ValueError(f"block_q must be in 1..{MAX_BLOCK_Q}, got {block_q}")
    tokens, topk = idx.shape
    largest = int(idx.max().item()) if idx.numel() else -1
    if largest > _PAD - 1:
        raise ValueError(f"key positions must be below 2**31 - 1 (int32), got {largest}")
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
