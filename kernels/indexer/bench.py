"""Sweep: lightning-indexer scores (tile configs) and the fused indexer -> top-k, prefill and decode.

`python -m kernels.indexer.bench [--sizes 32768 131072]`. FLOPs count 2 * H_I * D_I per causal
(query, key) pair (2*16*64 for Keye); decode counts bytes of indexer keys read (S * D_I * 2 in
bf16). Baselines: the PyTorch reference (fp32 einsum + torch.topk, run at the smallest size only)
and the best plain-torch path (bf16 matmul per query chunk, ReLU, weighted head sum, torch.topk).
"""

# ruff: noqa: B023 -- each timed lambda runs inside its own loop iteration

from __future__ import annotations

import argparse

import torch

from kernels._bench import bench_ms, format_table
from kernels.indexer import indexer_topk, indexer_topk_ref
from kernels.indexer.kernel import launch_indexer_scores
from kernels.topk.minmax import group_stats_buffers

HEADS, DIM, TOPK = 16, 64, 2048
SCORE_CONFIGS = [  # (block_t, block_s, num_warps, num_stages)
    (64, 128, 4, 2),
    (64, 128, 8, 3),
    (128, 128, 8, 2),
    (64, 256, 8, 2),
    (128, 64, 4, 3),
]


def make_inputs(tokens: int, device: str, dtype: torch.dtype = torch.bfloat16):
    q = torch.randn(tokens, HEADS, DIM, device=device, dtype=dtype)  # [N, H, D]
    w = torch.randn(tokens, HEADS, device=device) * DIM**-0.5  # [N, H] fp32
    k = torch.randn(tokens, DIM, device=device, dtype=dtype)  # [N, D]
    return q, w, k


def positional_indexer_inputs(tokens: int, device: str, dtype: torch.dtype, structured: bool):
    """Indexer q/w/k; `structured` gives keys and queries a shared positional code so scores favour nearby keys."""
    q = torch.randn(tokens, HEADS, DIM, device=device)
    k = torch.randn(tokens, DIM, device=device)
    if structured:
        position = torch.arange(tokens, device=device, dtype=torch.float32)[:, None]
        freq = torch.logspace(-4, -1, DIM // 2, device=device)[None, :]
        code = torch.cat([torch.sin(position * freq), torch.cos(position * freq)], dim=1) * 3.0  # [N, D]
        k = k * 0.3 + code
        q = q * 0.3 + code[:, None, :]
    w = torch.rand(tokens, HEADS, device=device) * DIM**-0.5
    return q.to(dtype), w, k.to(dtype)


def torch_indexer_topk(q, w, k, topk: int, start: int, chunk: int = 1024) -> torch.Tensor:
    """Best plain-torch path: bf16 tensor-core matmul per query chunk, then torch.topk."""
    tokens, heads, dim = q.shape
    out = torch.full((tokens, topk), -1, dtype=torch.int32, device=q.device)
    for first in range(0, tokens, chunk):
        last = min(first + chunk, tokens)
        visible = start + last
        logits = (q[first:last].reshape(-1, dim) @ k[:visible].T).view(last - first, heads, visible)
        scores = torch.einsum("th,ths->ts", w[first:last], logits.float().relu_())  # [t, S]
        pos = torch.arange(start + first, start + last, device=q.device)
        scores.masked_fill_(torch.arange(visible, device=q.device)[None, :] > pos[:, None], float("-inf"))
        width = min(topk, visible)
        out[first:last, :width] = scores.topk(width, dim=1).indices.to(torch.int32)
    return out


def score_config_sweep(keys: int, chunk: int, device: str) -> list[dict[str, object]]:
    """Score the last `chunk` queries of a `keys`-long sequence with each tile config."""
    q, w, k = make_inputs(keys, device)
    start = keys - chunk
    out = torch.empty(chunk, keys, device=device)
    pairs = sum(start + t + 1 for t in range(chunk))
    results = []
    for block_t, block_s, warps, stages in SCORE_CONFIGS:
        ms = bench_ms(
            lambda: launch_indexer_scores(
                q[start:],
                w[start:],
                k,
                start,
                out,
                fill_future=False,
                block_t=block_t,
                block_s=block_s,
                num_warps=warps,
                num_stages=stages,
            )  # fmt: skip
        )
        results.append(
            {
                "config(t,s,warps,stages)": f"{block_t},{block_s},{warps},{stages}",
                "queries": chunk,
                "keys": keys,
                "ms": ms,
                "TFLOP/s": 2 * HEADS * DIM * pairs / ms / 1e9,
                "write_GB/s": chunk * keys * 4 / ms / 1e6,
            }
        )
    return results


def scores_pass(q, w, k, max_buffer_bytes: int, stats: bool = False) -> None:
    """The score half of indexer_topk alone (same chunking, no top-k), to split the time; `stats` adds the
    group extremes that "minmax" reads."""
    tokens, keys = q.shape[0], k.shape[0]
    chunk = max(64, (max_buffer_bytes // (4 * keys)) // 64 * 64)
    buffer = torch.empty(min(chunk, tokens), keys, device=q.device)
    extremes = group_stats_buffers(*buffer.shape, q.device) if stats else None
    for first in range(0, tokens, chunk):
        last = min(first + chunk, tokens)
        launch_indexer_scores(
            q[first:last], w[first:last], k[:last], first, buffer, fill_future=False, stats=extremes
        )


def prefill_sweep(sizes: list[int], device: str, reference_max: int) -> list[dict[str, object]]:
    """Random inputs (unordered score rows) and positional ones (rows that rise towards the query)."""
    results = []
    for tokens, kind in [(tokens, kind) for tokens in sizes for kind in ("random", "positional")]:
        if kind == "random":
            q, w, k = make_inputs(tokens, device)
        else:
            q, w, k = positional_indexer_inputs(tokens, device, torch.bfloat16, structured=True)
        pairs = tokens * (tokens + 1) // 2
        timed = {
            method: bench_ms(
                lambda: indexer_topk(q, w, k, TOPK, 0, max_buffer_bytes=3 << 32, topk_method=method),
                budget_ms=1000,
            )
            for method in ("compact", "bound", "minmax")
        }
        best = min(timed.values())  # of our top-k methods
        scores_only = bench_ms(lambda: scores_pass(q, w, k, 1 << 32), budget_ms=1000)
        scores_stats = bench_ms(lambda: scores_pass(q, w, k, 1 << 32, stats=True), budget_ms=1000)
        baseline = bench_ms(lambda: torch_indexer_topk(q, w, k, TOPK, 0), budget_ms=1000)
        reference = None
        if tokens <= reference_max:
            reference = bench_ms(lambda: indexer_topk_ref(q, w, k, TOPK, 0), budget_ms=1)
        results.append(
            {
                "N": tokens,
                "inputs": kind,
                **{f"ours_{method}_ms": ms for method, ms in timed.items()},
                "scores_only_ms": scores_only,
                "scores+group_stats_ms": scores_stats,
                "torch_bf16_ms": baseline,
                "reference_ms": reference,
                "best_TFLOP/s(2*16*64/pair)": 2 * HEADS * DIM * pairs / best / 1e9,
                "best_us_per_row": best * 1e3 / tokens,
            }
        )
    return results


def decode_sweep(sizes: list[int], device: str) -> list[dict[str, object]]:
    """One new query against S cached indexer keys (T = 1): a memory-bound scan + one top-k row."""
    results = []
    for keys in sizes:
        q, w, k = make_inputs(keys, device)
        last = keys - 1
        ours = bench_ms(lambda: indexer_topk(q[last:], w[last:], k, TOPK, last), graph=True)  # cooperative
        split = bench_ms(
            lambda: indexer_topk(q[last:], w[last:], k, TOPK, last, topk_method="split"), graph=True
        )
        baseline = bench_ms(lambda: torch_indexer_topk(q[last:], w[last:], k, TOPK, last), graph=True)
        key_bytes = keys * DIM * 2
        results.append(
            {
                "S": keys,
                "ours_auto_us": ours * 1e3,
                "ours_split_topk_us": split * 1e3,
                "torch_bf16_us": baseline * 1e3,
                "best_GB/s(keys)": key_bytes / min(ours, split) / 1e6,
            }
        )
    return results


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, object]]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--config-keys", type=int, default=32768)
    parser.add_argument("--config-chunk", type=int, default=4096)
    parser.add_argument("--reference-max", type=int, default=8192)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tables = {
        "indexer score tile configs": score_config_sweep(args.config_keys, args.config_chunk, device),
        "indexer + top-k, prefill (one sequence)": prefill_sweep(args.sizes, device, args.reference_max),
        "indexer + top-k, decode (T = 1)": decode_sweep(args.sizes, device),
    }
    for title, rows in tables.items():
        print(format_table(rows, f"{title} ({device})"))
    return tables


if __name__ == "__main__":
    main()
