"""Sweep: sparse decode over a paged KV cache (ours) vs a torch gather + SDPA baseline.

`python -m kernels.sparse_decode.bench [--lengths 131072] [--batches 1 16 64]`. Each sequence
attends to its top-2048 positions (random, as a worst case for locality). Effective bandwidth
counts the bytes that must move: the selected K and V rows (2 * K * Hkv * D * 2 bytes in bf16)
plus the indices. Ours and the torch baseline are timed as CUDA-graph replays (launch overhead
excluded: a decode step is captured in a graph by any serious engine); the reference loop (fp32 oracle) runs at batch 1 only.
"""

# ruff: noqa: B023 -- each timed lambda runs inside its own loop iteration

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from kernels._bench import bench_ms, format_table
from kernels.sparse_decode import sparse_decode, sparse_decode_ref

Q_HEADS, KV_HEADS, HEAD_DIM, TOPK, PAGE = 32, 4, 128, 2048, 64


def torch_gather_sdpa(q, k_cache, v_cache, table, idx, scale):
    """Plain torch: gather the selected rows through the page table, then one SDPA call."""
    pages = torch.gather(table, 1, (idx.clamp_min(0) // PAGE).long())  # [B, K]
    keys = k_cache[pages.long(), idx.clamp_min(0) % PAGE]  # [B, K, Hkv, D]
    values = v_cache[pages.long(), idx.clamp_min(0) % PAGE]
    mask = (idx >= 0)[:, None, None, :]  # [B, 1, 1, K]
    return F.scaled_dot_product_attention(
        q[:, :, None, :], keys.transpose(1, 2), values.transpose(1, 2), attn_mask=mask, scale=scale,
        enable_gqa=True,
    )[:, :, 0]  # fmt: skip


def sweep(length: int, batches: list[int], device: str) -> list[dict[str, object]]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    scale = HEAD_DIM**-0.5
    results = []
    for batch in batches:
        pages_per_seq = -(-length // PAGE)
        n_pages = batch * pages_per_seq
        k_cache = torch.randn(n_pages, PAGE, KV_HEADS, HEAD_DIM, device=device, dtype=dtype)
        v_cache = torch.randn(n_pages, PAGE, KV_HEADS, HEAD_DIM, device=device, dtype=dtype)
        table = torch.randperm(n_pages, device=device).view(batch, pages_per_seq).to(torch.int32)
        q = torch.randn(batch, Q_HEADS, HEAD_DIM, device=device, dtype=dtype)
        idx = torch.rand(batch, length, device=device).topk(min(TOPK, length), dim=1).indices.to(torch.int32)
        ours = bench_ms(lambda: sparse_decode(q, k_cache, v_cache, table, idx, scale), graph=True)
        baseline = bench_ms(lambda: torch_gather_sdpa(q, k_cache, v_cache, table, idx, scale), graph=True)
        reference = None
        if batch == 1:
            reference = bench_ms(lambda: sparse_decode_ref(q, k_cache, v_cache, table, idx, scale))
        moved = batch * idx.shape[1] * (2 * KV_HEADS * HEAD_DIM * k_cache.element_size() + 4)
        results.append(
            {
                "B": batch,
                "L": length,
                "K": idx.shape[1],
                "ours_us": ours * 1e3,
                "torch_gather_sdpa_us": baseline * 1e3,
                "reference_us": reference * 1e3 if reference else None,
                "ours_GB/s": moved / ours / 1e6,
            }
        )
        k_cache = v_cache = None  # free before the next batch
    return results


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[131072])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    for length in args.lengths:
        results += sweep(length, args.batches, device)
    print(format_table(results, f"sparse decode, paged KV ({device})"))
    return results


if __name__ == "__main__":
    main()
