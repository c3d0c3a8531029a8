"""One launch of each hot kernel between cudaProfilerStart/Stop, so Nsight Compute reads its counters.

Timing says how far a kernel is from its ceiling; the hardware counters say which unit holds it there
(tensor pipe, FMA pipe, L2, DRAM, or stalls). Everything runs once before the profiled span (compiles,
warm-up), then once inside it, at the layer's shapes on position-structured indexer inputs:

    ncu --clock-control none --profile-from-start off --section SpeedOfLight ... \
        python3 -m kernels.profile --tokens 32768
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from kernels.fused_moe import fused_moe
from kernels.fused_moe.bench import make_case
from kernels.indexer import indexer_topk, quantize_indexer_fp8
from kernels.indexer.bench import positional_indexer_inputs
from kernels.sparse_attention import build_block_union
from kernels.sparse_attention.kernel import launch_sparse_attention

Q_HEADS, KV_HEADS, HEAD_DIM, TOPK, BLOCK_Q = 32, 4, 128, 2048, 8


def workloads(tokens: int, moe_tokens: int) -> dict[str, Callable[[], object]]:
    """Name -> a closure that launches the op once; one chunk holds all queries, so each kernel runs once."""
    q, w, k = positional_indexer_inputs(tokens, "cuda", torch.bfloat16, structured=True)
    (q8, q_scale), (k8, k_scale) = quantize_indexer_fp8(q), quantize_indexer_fp8(k)
    buffer = 4 * tokens * tokens + 1
    idx = indexer_topk(q, w, k, TOPK, 0, max_buffer_bytes=buffer)
    union = build_block_union(idx, BLOCK_Q)
    aq = torch.randn(tokens, Q_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    ak, av = (torch.randn(tokens, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out = torch.empty_like(aq)
    moe = make_case(moe_tokens, "cuda", torch.bfloat16)
    return {
        "indexer_bf16": lambda: indexer_topk(q, w, k, TOPK, 0, max_buffer_bytes=buffer),
        "indexer_e4m3": lambda: indexer_topk(
            q8, w, k8, TOPK, 0, max_buffer_bytes=buffer, scales=(q_scale, k_scale)
        ),
        "sparse_attention": lambda: launch_sparse_attention(aq, ak, av, union, BLOCK_Q, HEAD_DIM**-0.5, out),
        "fused_moe": lambda: fused_moe(*moe),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--moe-tokens", type=int, default=16384)
    parser.add_argument("--ops", nargs="*", default=None, help="subset of the workload names")
    args = parser.parse_args(argv)
    chosen = workloads(args.tokens, args.moe_tokens)
    chosen = {name: run for name, run in chosen.items() if args.ops is None or name in args.ops}
    for run in chosen.values():
        run()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for run in chosen.values():
        run()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print("profiled:", ", ".join(chosen))


if __name__ == "__main__":
    main()
