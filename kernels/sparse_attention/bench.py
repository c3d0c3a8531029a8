"""Sweep: one DSA layer (indexer + top-k + sparse-attention prefill) against dense causal SDPA.

`python -m kernels.sparse_attention.bench [--sizes 32768 131072 262144]`. Keye shapes: 32 q heads,
4 kv heads, head dim 128, indexer 16 x 64, top-2048. FLOPs: 4*32*128 per attended (query, key)
pair (useful work: T*K pairs for sparse, T(T+1)/2 for dense causal), 2*16*64 per causal indexer
pair. Three selections are measured for the union size U (keys walked per 8-query block) and
the attention time: the indexer's own output on random inputs (near-uniform: the worst case),
on position-structured inputs (scores that favour nearby keys, like trained indexers), and an
explicit sink + local-window selection. The PyTorch reference runs at the smallest size only.
"""

# ruff: noqa: B023 -- each timed lambda runs inside its own loop iteration

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels._bench import bench_ms, format_table
from kernels.indexer import indexer_topk, quantize_indexer_fp8
from kernels.indexer.bench import positional_indexer_inputs
from kernels.sparse_attention import build_block_union, sparse_attention_ref, union
from kernels.sparse_attention.kernel import default_block_q, launch_sparse_attention
from kernels.sparse_attention.union import build_block_union_torch
from kernels.topk.kernel import TOPK_METHODS

Q_HEADS, KV_HEADS, HEAD_DIM = 32, 4, 128
INDEX_HEADS, INDEX_DIM, TOPK = 16, 64, 2048


def local_selection(tokens: int, device: str, sinks: int = 64) -> torch.Tensor:
    position = torch.arange(tokens, device=device)[:, None]
    offsets = torch.arange(TOPK, device=device)[None, :]
    idx = torch.where(offsets < sinks, offsets, position - (offsets - sinks))
    return torch.where((idx >= 0) & (idx <= position), idx, -1).to(torch.int32)


def dense_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Dense causal GQA attention through torch SDPA, flash backend on CUDA.

    Returns a closure for timing. Flash takes GQA natively where this torch supports it;
    otherwise kv heads are expanded once, outside the timed call.
    """
    qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, H, N, D]
    if not qh.is_cuda:
        return lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def flash(kk: torch.Tensor, vv: torch.Tensor, gqa: bool) -> torch.Tensor:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(qh, kk, vv, is_causal=True, enable_gqa=gqa)

    try:
        flash(kh, vh, True)
        return lambda: flash(kh, vh, True)
    except RuntimeError:
        group = qh.shape[1] // kh.shape[1]
        kx, vx = kh.repeat_interleave(group, dim=1), vh.repeat_interleave(group, dim=1)
        return lambda: flash(kx, vx, False)


ATTN_CONFIGS = [  # (block_q, block_n, num_warps, num_stages); block_q * 8 GQA heads = matrix rows
    (8, 64, 4, 2),
    (8, 64, 4, 3),
    (8, 64, 8, 2),
    (8, 32, 4, 2),
    (8, 32, 4, 3),
    (8, 128, 8, 3),
    (16, 64, 8, 2),
    (16, 64, 8, 3),
    (8, 32, 4, 4),
    (8, 16, 4, 3),
    (4, 32, 4, 3),
    (16, 32, 8, 3),
]


def attention_config_sweep(tokens: int, device: str) -> list[dict[str, object]]:
    """Time the prefill kernel per tile config on sink+local and uniform-random selections."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q = torch.randn(tokens, Q_HEADS, HEAD_DIM, device=device, dtype=dtype)
    k = torch.randn(tokens, KV_HEADS, HEAD_DIM, device=device, dtype=dtype)
    v = torch.randn(tokens, KV_HEADS, HEAD_DIM, device=device, dtype=dtype)
    out = torch.empty_like(q)
    local = local_selection(tokens, device)
    position = torch.arange(tokens, device=device)[:, None]
    uniform = (torch.rand(tokens, TOPK, device=device) * (position + 1)).long().to(torch.int32)  # causal
    rows = []
    for name, idx in (("sink+local", local), ("uniform-random", uniform)):
        pairs = int((idx >= 0).sum())
        for block_q, block_n, warps, stages in ATTN_CONFIGS:
            union = build_block_union(idx, block_q)
            try:
                ms = bench_ms(
                    lambda: launch_sparse_attention(
                        q,
                        k,
                        v,
                        union,
                        block_q,
                        HEAD_DIM**-0.5,
                        out,
                        block_n=block_n,
                        num_warps=warps,
                        num_stages=stages,
                    ),  # fmt: skip
                    budget_ms=200,
                )
            except Exception as exc:  # e.g. out of shared memory for a config
                rows.append({"selection": name, "config(q,n,warps,stages)": f"{block_q},{block_n},{warps},{stages}",
                             "error": str(exc)[:60]})  # fmt: skip
                continue
            rows.append(
                {
                    "selection": name,
                    "config(q,n,warps,stages)": f"{block_q},{block_n},{warps},{stages}",
                    "N": tokens,
                    "U_mean": union.counts.float().mean().item(),
                    "ms": ms,
                    "useful_TFLOP/s": 4 * Q_HEADS * HEAD_DIM * pairs / ms / 1e9,
                    "computed_TFLOP/s": 4
                    * Q_HEADS
                    * HEAD_DIM
                    * float(union.counts.sum())
                    * block_q
                    / ms
                    / 1e9,
                }
            )
    return rows


def best_config(rows: list[dict[str, object]], selection: str) -> tuple[int, int, int, int]:
    timed = [r for r in rows if r["selection"] == selection and "ms" in r]
    best = min(timed, key=lambda r: r["ms"])
    return tuple(int(x) for x in str(best["config(q,n,warps,stages)"]).split(","))  # type: ignore[return-value]


def select_keys(
    q: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    topk_method: str,
    fp8: bool,
    head_mma: bool | None = None,
) -> torch.Tensor:
    """The layer's indexer + top-k; with `fp8` the queries and keys are quantised first (inside the timing:
    in the runtime the keys would be quantised once, as they are cached)."""
    options = {"max_buffer_bytes": 3 << 32, "topk_method": topk_method, "head_mma": head_mma}
    if not fp8:
        return indexer_topk(q, w, k, TOPK, 0, **options)
    (q8, q_scale), (k8, k_scale) = quantize_indexer_fp8(q), quantize_indexer_fp8(k)
    return indexer_topk(q8, w, k8, TOPK, 0, scales=(q_scale, k_scale), **options)


def layer_sweep(
    tokens: int,
    device: str,
    reference: bool,
    *,
    attn_config: tuple[int, int, int, int] = (8, 32, 4, 2),
    topk_method: str = "minmax",
    indexer_fp8: bool = False,
    head_mma: bool | None = None,
) -> list[dict[str, object]]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    scale = HEAD_DIM**-0.5
    q = torch.randn(tokens, Q_HEADS, HEAD_DIM, device=device, dtype=dtype)
    k = torch.randn(tokens, KV_HEADS, HEAD_DIM, device=device, dtype=dtype)
    v = torch.randn(tokens, KV_HEADS, HEAD_DIM, device=device, dtype=dtype)
    out = torch.empty_like(q)
    block_q, block_n, warps, stages = attn_config
    dense_ms = bench_ms(dense_sdpa(q, k, v), budget_ms=500)
    dense_flop = 4 * Q_HEADS * HEAD_DIM * tokens * (tokens + 1) / 2
    rows = []
    for kind in ("indexer-random", "indexer-positional", "sink+local"):
        if kind == "sink+local":
            idx, index_ms = local_selection(tokens, device), None
        else:
            qi, wi, ki = positional_indexer_inputs(
                tokens, device, dtype, structured=kind == "indexer-positional"
            )
            index_ms = bench_ms(
                lambda: select_keys(qi, wi, ki, topk_method, indexer_fp8, head_mma), budget_ms=500
            )
            idx = select_keys(qi, wi, ki, topk_method, indexer_fp8, head_mma)
            qi = wi = ki = None
        union_ms = bench_ms(lambda: build_block_union(idx, block_q), budget_ms=200)
        union_sort_ms = bench_ms(lambda: build_block_union(idx, block_q, method="sort"), budget_ms=200)
        union_torch_ms = bench_ms(lambda: build_block_union_torch(idx, block_q), budget_ms=200)
        union = build_block_union(idx, block_q)
        attn_ms = bench_ms(
            lambda: launch_sparse_attention(
                q, k, v, union, block_q, scale, out, block_n=block_n, num_warps=warps, num_stages=stages
            ),
            budget_ms=500,
        )
        pairs = int((idx >= 0).sum())
        useful_flop = 4 * Q_HEADS * HEAD_DIM * pairs
        indexer_flop = 2 * INDEX_HEADS * INDEX_DIM * tokens * (tokens + 1) / 2
        layer_ms = (index_ms or 0.0) + union_ms + attn_ms
        row = {
            "N": tokens,
            "selection": kind,
            "U_max": union.width,
            "U_mean": union.counts.float().mean().item(),
            "indexer+topk_ms": index_ms,
            "indexer_TFLOP/s": indexer_flop / index_ms / 1e9 if index_ms else None,
            "union_ms": union_ms,
            "union_sort_ms": union_sort_ms,
            "union_torch_ms": union_torch_ms,
            "sparse_attn_ms": attn_ms,
            "sparse_attn_useful_TFLOP/s": useful_flop / attn_ms / 1e9,
            "dense_sdpa_ms": dense_ms,
            "dense_TFLOP/s": dense_flop / dense_ms / 1e9,
            "layer_ms": layer_ms if index_ms else None,
            "speedup_vs_dense": dense_ms / layer_ms if index_ms else None,
        }
        if reference and kind == "indexer-random":
            start = time.perf_counter()
            ref = sparse_attention_ref(q, k, v, idx, scale)
            if device == "cuda":
                torch.cuda.synchronize()
            row["reference_attn_ms"] = (time.perf_counter() - start) * 1e3
            launch_sparse_attention(
                q, k, v, union, block_q, scale, out, block_n=block_n, num_warps=warps, num_stages=stages
            )
            row["rel_err_vs_ref"] = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        rows.append(row)
        idx = union = None  # free before the next selection
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def union_runs_rounds(tokens: int, device: str, rounds: int = 3) -> list[dict[str, object]]:
    """The bitmap union of the e4m3 indexer's positional selections (8-query blocks), its set-bits kernel with
    one atomic per run of selections in a word and with one per key, alternating in one process."""
    q, w, k = positional_indexer_inputs(tokens, device, torch.bfloat16, structured=True)
    (q8, q_scale), (k8, k_scale) = quantize_indexer_fp8(q), quantize_indexer_fp8(k)
    idx = indexer_topk(
        q8, w, k8, TOPK, 0, max_buffer_bytes=3 << 32, topk_method="minmax", scales=(q_scale, k_scale)
    )
    q = w = k = q8 = k8 = None
    default = union.SET_BITS_RUNS
    results = []
    try:
        for round_ in range(rounds):
            for runs in (True, False):
                union.SET_BITS_RUNS = runs
                ms = bench_ms(lambda: build_block_union(idx, 8), budget_ms=300)
                results.append(
                    {"N": tokens, "round": round_, "set_bits": "runs" if runs else "per key", "ms": ms}
                )
    finally:
        union.SET_BITS_RUNS = default
    return results


def main(argv: list[str] | None = None, deadline_s: float = math.inf) -> dict[str, list[dict[str, object]]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32768, 131072, 262144])
    parser.add_argument("--reference-max", type=int, default=8192)
    parser.add_argument("--topk-method", default="minmax", choices=list(TOPK_METHODS))
    parser.add_argument("--config-sweep-size", type=int, default=32768, help="0: no sweep, default tiles")
    parser.add_argument(
        "--indexer-fp8", action="store_true", help="e4m3 indexer (Hadamard, per-vector scales)"
    )
    parser.add_argument(
        "--head-mma",
        choices=["default", "on", "off"],
        default="default",
        help="indexer heads summed on the tensor cores (default: for e4m3 indexers)",
    )
    parser.add_argument("--union-rounds", type=int, default=0, metavar="N", help="only the set-bits A-B at N")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.union_rounds:
        rows = union_runs_rounds(args.union_rounds, device)
        print(format_table(rows, f"block union, set bits by runs or per key ({device})"))
        return {"block union set bits": rows}
    tables: dict[str, list[dict[str, object]]] = {}
    attn_config = (default_block_q(Q_HEADS // KV_HEADS), 32, 4, 2)
    if args.config_sweep_size:
        sweep = attention_config_sweep(args.config_sweep_size, device)
        tables["sparse-attention tile configs"] = sweep
        print(format_table(sweep, f"sparse-attention tile configs ({device})"), flush=True)
        attn_config = best_config(sweep, "sink+local")
        print(f"layer sweep uses tiles {attn_config} and top-k method {args.topk_method!r}", flush=True)
    rows: list[dict[str, object]] = []
    for tokens in args.sizes:
        if time.monotonic() > deadline_s:
            print(f"skipping N={tokens}: out of time")
            continue
        rows += layer_sweep(
            tokens,
            device,
            tokens <= args.reference_max,
            attn_config=attn_config,
            topk_method=args.topk_method,
            indexer_fp8=args.indexer_fp8,
            head_mma={"default": None, "on": True, "off": False}[args.head_mma],
        )
        for row in rows[-3:]:
            row["tiles"] = ",".join(map(str, attn_config))
            row["topk"] = args.topk_method
            mma = args.head_mma == "on" or (args.head_mma == "default" and args.indexer_fp8)
            row["indexer"] = ("fp8" if args.indexer_fp8 else "bf16") + (", mma head sum" if mma else "")
        print(format_table(rows[-3:], f"DSA layer N={tokens} ({device})"), flush=True)
    tables["DSA layer vs dense SDPA"] = rows
    print(format_table(rows, f"DSA layer vs dense SDPA ({device})"))
    return tables


if __name__ == "__main__":
    main()
