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
import statistics

import torch
import torch.nn.functional as F

from kernels._bench import bench_ms, format_table
from kernels.indexer import indexer_decode_topk
from kernels.indexer.decode import launch_indexer_decode_scores
from kernels.sparse_decode import sparse_decode, sparse_decode_ref

Q_HEADS, KV_HEADS, HEAD_DIM, TOPK, PAGE = 32, 4, 128, 2048, 64
INDEX_HEADS, INDEX_DIM = 16, 64
CONFIGS = [  # (block_n, n_splits or None for the default, num_warps, num_stages); the first is the default
    (64, None, 4, 3),
    (32, None, 4, 4),
    (32, None, 4, 3),
    (64, None, 4, 4),
    (64, None, 8, 3),
    (64, None, 4, 2),
    (128, None, 8, 3),
    (64, 4, 4, 3),
]


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


def make_case(length: int, batch: int, device: str):
    """Paged caches shuffled across pages, one query per sequence, random top-k positions."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pages_per_seq = -(-length // PAGE)
    n_pages = batch * pages_per_seq
    k_cache = torch.randn(n_pages, PAGE, KV_HEADS, HEAD_DIM, device=device, dtype=dtype)
    v_cache = torch.randn(n_pages, PAGE, KV_HEADS, HEAD_DIM, device=device, dtype=dtype)
    table = torch.randperm(n_pages, device=device).view(batch, pages_per_seq).to(torch.int32)
    q = torch.randn(batch, Q_HEADS, HEAD_DIM, device=device, dtype=dtype)
    idx = torch.rand(batch, length, device=device).topk(min(TOPK, length), dim=1).indices.to(torch.int32)
    return q, k_cache, v_cache, table, idx


def moved_bytes(idx: torch.Tensor, k_cache: torch.Tensor) -> int:
    """Selected K and V rows plus the indices."""
    return idx.shape[0] * idx.shape[1] * (2 * KV_HEADS * HEAD_DIM * k_cache.element_size() + 4)


def config_sweep(length: int, batch: int, device: str, rounds: int = 3) -> list[dict[str, object]]:
    """Launch configurations of the split kernel at one batch, each timed in `rounds` interleaved
    rounds (single timings of a ~90 µs op moved by up to 10 % between calls); median and spread."""
    q, k_cache, v_cache, table, idx = make_case(length, batch, device)
    scale = HEAD_DIM**-0.5
    expected = sparse_decode(q, k_cache, v_cache, table, idx, scale).float()
    configs = [
        {"block_n": block_n, "n_splits": n_splits, "num_warps": warps, "num_stages": stages}
        for block_n, n_splits, warps, stages in CONFIGS
    ]
    times: list[list[float]] = [[] for _ in configs]
    for _ in range(rounds):
        for config, timed in zip(configs, times, strict=True):
            timed.append(
                bench_ms(lambda: sparse_decode(q, k_cache, v_cache, table, idx, scale, **config), graph=True)
            )
    results = []
    for config, timed in zip(configs, times, strict=True):
        out = sparse_decode(q, k_cache, v_cache, table, idx, scale, **config)
        ms = statistics.median(timed)
        results.append(
            {
                "B": batch,
                **config,
                "us_median": ms * 1e3,
                "us_min": min(timed) * 1e3,
                "us_max": max(timed) * 1e3,
                "GB/s": moved_bytes(idx, k_cache) / ms / 1e6,
                "max_abs_diff_vs_default": (out.float() - expected).abs().max().item(),
            }
        )
    return results


def sweep(length: int, batches: list[int], device: str) -> list[dict[str, object]]:
    scale = HEAD_DIM**-0.5
    results = []
    for batch in batches:
        q, k_cache, v_cache, table, idx = make_case(length, batch, device)
        ours = bench_ms(lambda: sparse_decode(q, k_cache, v_cache, table, idx, scale), graph=True)
        baseline = bench_ms(lambda: torch_gather_sdpa(q, k_cache, v_cache, table, idx, scale), graph=True)
        reference = None
        if batch == 1:
            reference = bench_ms(lambda: sparse_decode_ref(q, k_cache, v_cache, table, idx, scale))
        moved = moved_bytes(idx, k_cache)
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


def decode_step_sweep(length: int, batches: list[int], device: str) -> list[dict[str, object]]:
    """A whole DSA decode step per batch: the batched indexer scan over the paged index keys, its top-k,
    and the sparse gather of the selected K/V rows (index keys share the KV page table). Effective
    bandwidth counts the index keys scanned plus the K/V rows gathered, over the scan + gather time (the
    memory-bound parts) and over the whole step (top-k included)."""
    scale = HEAD_DIM**-0.5
    results = []
    for batch in batches:
        q, k_cache, v_cache, table, _ = make_case(length, batch, device)
        index_keys = torch.randn(k_cache.shape[0], PAGE, INDEX_DIM, device=device, dtype=k_cache.dtype)
        index_q = torch.randn(batch, INDEX_HEADS, INDEX_DIM, device=device, dtype=k_cache.dtype)
        index_w = torch.randn(batch, INDEX_HEADS, device=device) * INDEX_DIM**-0.5
        lengths = torch.full((batch,), length, dtype=torch.int32, device=device)
        scores = torch.empty(batch, table.shape[1] * PAGE, device=device)
        scan = bench_ms(
            lambda: launch_indexer_decode_scores(index_q, index_w, index_keys, table, lengths, scores),
            graph=True,
        )
        select = bench_ms(
            lambda: indexer_decode_topk(index_q, index_w, index_keys, table, lengths, TOPK), graph=True
        )
        idx = indexer_decode_topk(index_q, index_w, index_keys, table, lengths, TOPK)
        gather = bench_ms(lambda: sparse_decode(q, k_cache, v_cache, table, idx, scale), graph=True)
        moved = batch * length * INDEX_DIM * index_keys.element_size() + moved_bytes(idx, k_cache)
        results.append(
            {
                "B": batch,
                "L": length,
                "scan_us": scan * 1e3,
                "topk_us": (select - scan) * 1e3,
                "gather_us": gather * 1e3,
                "step_us": (select + gather) * 1e3,
                "scan+gather_GB/s": moved / (scan + gather) / 1e6,
                "step_GB/s": moved / (select + gather) / 1e6,
            }
        )
        k_cache = v_cache = index_keys = scores = None  # free before the next batch
    return results


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, object]]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[131072])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--config-batch", type=int, default=64, help="batch of the launch-config sweep (0: skip)"
    )
    parser.add_argument("--step-batches", type=int, nargs="*", default=[1, 16, 64], help="whole decode steps")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    for length in args.lengths:
        results += sweep(length, args.batches, device)
    tables = {"sparse decode, paged KV": results}
    if args.step_batches:
        tables["decode step: indexer scan + top-k + sparse gather"] = decode_step_sweep(
            args.lengths[0], args.step_batches, device
        )
    if args.config_batch:
        tables["split-kernel launch configs"] = config_sweep(args.lengths[0], args.config_batch, device)
    for title, rows in tables.items():
        print(format_table(rows, f"{title} ({device})"))
    return tables


if __name__ == "__main__":
    main()
