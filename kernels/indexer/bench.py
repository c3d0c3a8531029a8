"""Sweep: lightning-indexer scores (tile configs) and the fused indexer -> top-k, prefill and decode.

`python -m kernels.indexer.bench [--sizes 32768 131072] [--batches 1 16 64]`. FLOPs count 2 * H_I * D_I
per causal (query, key) pair (2*16*64 for Keye); decode (one query per sequence, batches of paged
sequences) counts bytes of indexer keys read (S * D_I * 2 in bf16). Baselines: the PyTorch reference
(fp32 einsum + torch.topk, run at the smallest size only) and the best plain-torch path (bf16 matmul per
query chunk, ReLU, weighted head sum, torch.topk).
"""

# ruff: noqa: B023 -- each timed lambda runs inside its own loop iteration

from __future__ import annotations

import argparse
import functools

import torch

from kernels._bench import bench_ms, format_table
from kernels.indexer import (
    indexer_decode_topk,
    indexer_topk,
    indexer_topk_ref,
    quantize_indexer_fp8,
    quantize_indexer_fp8_ref,
)
from kernels.indexer import kernel as indexer_kernel
from kernels.indexer.decode import launch_indexer_decode_scores
from kernels.indexer.kernel import launch_indexer_scores
from kernels.topk import minmax
from kernels.topk.bench import make_rows
from kernels.topk.kernel import select_topk
from kernels.topk.minmax import group_stats_buffers

HEADS, DIM, TOPK = 16, 64, 2048
TOPK_ROWS = (1024, 131072)  # the top-k alone in `switch_rounds`: rows x columns
SCORE_TILE_SHAPE = (32768, 4096)  # the score tiles alone in `switch_rounds`: keys, queries (the last ones)
SCORE_CONFIGS = [  # (block_t queries, block_s keys, warps, stages, e4m3 inputs, register cap (0: none), head_mma)
    (8, 64, 4, 3, False, 0, False),
    (8, 64, 4, 4, False, 0, False),
    (16, 64, 4, 3, False, 0, False),
    (8, 64, 4, 3, True, 0, False),
    (8, 64, 4, 4, True, 0, False),
    (16, 64, 4, 3, True, 0, False),
    (8, 64, 4, 3, False, 0, True),
    (8, 64, 4, 3, False, 128, True),
    (16, 64, 4, 3, False, 0, True),
    (8, 64, 4, 3, True, 0, True),
    (8, 64, 4, 4, True, 0, True),
    (8, 64, 4, 4, True, 128, True),
    (8, 64, 4, 3, True, 96, True),
    (8, 64, 4, 4, True, 96, True),
    (16, 64, 4, 4, True, 0, True),
    (8, 128, 4, 3, True, 0, True),
    (8, 128, 8, 3, True, 0, True),
    (8, 128, 8, 4, True, 0, True),
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
    """Score the last `chunk` queries of a `keys`-long sequence with each tile config (bf16, or e4m3
    quantised once outside the timing), alone and with the group extremes that "minmax" reads."""
    q, w, k = make_inputs(keys, device)
    (q8, q_scale), (k8, k_scale) = quantize_indexer_fp8(q), quantize_indexer_fp8(k)
    start = keys - chunk
    out = torch.empty(chunk, keys, device=device)
    extremes = group_stats_buffers(chunk, keys, q.device)
    flop = 2 * HEADS * DIM * sum(start + t + 1 for t in range(chunk))
    results = []
    for block_t, block_s, warps, stages, fp8, max_registers, head_mma in SCORE_CONFIGS:
        qq, kk = (q8, k8) if fp8 else (q, k)
        scales = (q_scale[start:], k_scale) if fp8 else None
        ms = {
            stats: bench_ms(
                lambda: launch_indexer_scores(
                    qq[start:],
                    w[start:],
                    kk,
                    start,
                    out,
                    fill_future=False,
                    scales=scales,
                    stats=extremes if stats else None,
                    block_t=block_t,
                    block_s=block_s,
                    num_warps=warps,
                    num_stages=stages,
                    max_registers=max_registers,
                    head_mma=head_mma,
                )  # fmt: skip
            )
            for stats in (False, True)
        }
        results.append(
            {
                "config(t,s,warps,stages)": f"{block_t},{block_s},{warps},{stages}",
                "max_registers": max_registers,
                "inputs": "e4m3" if fp8 else "bf16",
                "head_sum": "mma" if head_mma else "fma",
                "queries": chunk,
                "keys": keys,
                "ms": ms[False],
                "TFLOP/s": flop / ms[False] / 1e9,
                "TFLOP/s+extremes": flop / ms[True] / 1e9,
                "write_GB/s": chunk * keys * 4 / ms[False] / 1e6,
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


def positional_inputs_and_e4m3(tokens: int, device: str):
    """Structured bf16 q, w, k (`positional_indexer_inputs`) and q, k quantised to e4m3 once: (q, w, k, (q8,
    q_scale), (k8, k_scale)), for the A-B rounds that time both input types on one sequence."""
    q, w, k = positional_indexer_inputs(tokens, device, torch.bfloat16, structured=True)
    return q, w, k, quantize_indexer_fp8(q), quantize_indexer_fp8(k)


def head_sum_rounds(tokens: int, device: str, rounds: int = 3) -> list[dict[str, object]]:
    """Indexer + "minmax" top-k over one positional sequence, the FMA and the MMA head sum alternating in one
    process (machines differ by ~8 %, so the two are compared round by round, never across runs)."""
    q, w, k, (q8, q_scale), (k8, k_scale) = positional_inputs_and_e4m3(tokens, device)
    flop = 2 * HEADS * DIM * tokens * (tokens + 1) / 2
    options = {"max_buffer_bytes": 3 << 32, "topk_method": "minmax"}
    results = []
    for round_ in range(rounds):
        for inputs, head_mma in [(i, m) for i in ("bf16", "e4m3") for m in (False, True)]:
            if inputs == "bf16":
                ms = bench_ms(
                    lambda: indexer_topk(q, w, k, TOPK, 0, head_mma=head_mma, **options), budget_ms=1000
                )
            else:
                ms = bench_ms(
                    lambda: indexer_topk(q8, w, k8, TOPK, 0, scales=(q_scale, k_scale), head_mma=head_mma, **options),
                    budget_ms=1000,
                )  # fmt: skip
            results.append(
                {
                    "N": tokens,
                    "round": round_,
                    "inputs": inputs,
                    "head_sum": "mma" if head_mma else "fma",
                    "indexer+topk_ms": ms,
                    "TFLOP/s(2*16*64/pair)": flop / ms / 1e9,
                }
            )
    return results


# The "minmax" A-B switches (module globals read at each launch): name -> (the two values compared, the second
# the default; the cases timed beside the indexer + top-k: the select alone, the score tiles alone).
SWITCHES = {
    "BOUND_STEPS": ((3, 2), ("select",)),
    "TOP_FROM_BOUND": ((False, True), ("select",)),
    "LAST_BITS": ((8, 6), ("select",)),
    "BUCKET_FINISH": ((False, True), ("select",)),
    "ROW_TOP": ((False, True), ("select", "scores")),
    "GROUP_LOADS": ((False, True), ("select",)),
}


def switch_rounds(tokens: int, device: str, switch: str, rounds: int = 3) -> list[dict[str, object]]:
    """One "minmax" switch at each of its two values, alternating in one process: the indexer + "minmax" top-k over one
    positional sequence (e4m3 with the MMA head sum, and bf16), and as the switch says the top-k alone over
    TOPK_ROWS (normal and smooth scores, its group-stats pass included) and the score tiles with group extremes
    at SCORE_TILE_SHAPE (e4m3, the default tile, the MMA head sum)."""
    q, w, k, (q8, q_scale), (k8, k_scale) = positional_inputs_and_e4m3(tokens, device)
    options = {"max_buffer_bytes": 3 << 32, "topk_method": "minmax"}
    cases = {
        f"indexer+topk N={tokens} e4m3": lambda: indexer_topk(
            q8, w, k8, TOPK, 0, scales=(q_scale, k_scale), **options
        ),
        f"indexer+topk N={tokens} bf16": lambda: indexer_topk(q, w, k, TOPK, 0, **options),
    }
    values, extra = SWITCHES[switch]
    if "select" in extra:
        rows, cols = TOPK_ROWS
        for kind in ("normal", "smooth"):
            scores = make_rows(rows, cols, kind, device)
            lengths = torch.full((rows,), cols, dtype=torch.int32, device=device)
            cases[f"select_topk {rows} x {cols} {kind}"] = lambda s=scores, n=lengths: select_topk(
                s, TOPK, n, method="minmax"
            )
    if "scores" in extra:
        keys = min(SCORE_TILE_SHAPE[0], tokens)
        chunk = min(SCORE_TILE_SHAPE[1], keys)
        tile_q8, tile_scale = q8[keys - chunk : keys], q_scale[keys - chunk : keys]
        out = torch.empty(chunk, keys, device=device)
        stats = group_stats_buffers(chunk, keys, device)
        cases[f"score tiles {chunk} x {keys} e4m3"] = lambda: launch_indexer_scores(
            tile_q8, w[keys - chunk : keys], k8[:keys], keys - chunk, out, fill_future=False,
            scales=(tile_scale, k_scale[:keys]), stats=stats, head_mma=True,
        )  # fmt: skip
    default = getattr(minmax, switch)
    results = []
    try:
        for round_ in range(rounds):
            for name, run in cases.items():
                for value in values:
                    setattr(minmax, switch, value)
                    ms = bench_ms(run, budget_ms=1000)
                    results.append({"case": name, "round": round_, switch: value, "ms": ms})
    finally:
        setattr(minmax, switch, default)
    return results


# "minmax" select configs for `select_config_rounds`: (lanes per step, warps, register cap); the first is the default.
SELECT_CONFIGS = [(1024, 8, 64), (2048, 8, 80), (1024, 4, 80), (1024, 4, 64)]


def select_config_rounds(tokens: int, device: str, rounds: int = 2) -> list[dict[str, object]]:
    """Indexer + "minmax" top-k over one positional e4m3 sequence with each select config in turn, in one process."""
    _, w, _, (q8, q_scale), (k8, k_scale) = positional_inputs_and_e4m3(tokens, device)
    options = {"max_buffer_bytes": 3 << 32, "topk_method": "minmax", "scales": (q_scale, k_scale)}
    launch, defaults = indexer_kernel.launch_select_topk, (minmax.WARPS, minmax.MAX_REGISTERS)
    results = []
    try:
        for round_ in range(rounds):
            for block, warps, registers in SELECT_CONFIGS:
                indexer_kernel.launch_select_topk = functools.partial(launch, block=block)
                minmax.WARPS, minmax.MAX_REGISTERS = warps, registers
                ms = bench_ms(lambda: indexer_topk(q8, w, k8, TOPK, 0, **options), budget_ms=1000)
                row = {
                    "N": tokens,
                    "round": round_,
                    "lanes": block,
                    "warps": warps,
                    "registers": registers,
                    "ms": ms,
                }
                results.append(row)
    finally:
        indexer_kernel.launch_select_topk = launch
        minmax.WARPS, minmax.MAX_REGISTERS = defaults
    return results


def quantize_sweep(sizes: list[int], device: str) -> list[dict[str, object]]:
    """The Hadamard + e4m3 quantiser over the indexer queries of N tokens ([N, 16, 64] bf16), the Triton kernel
    against its five-pass PyTorch oracle (what the layer paid before session 20)."""
    results = []
    for tokens in sizes:
        q = make_inputs(tokens, device)[0]
        kernel_ms = bench_ms(lambda: quantize_indexer_fp8(q))
        torch_ms = bench_ms(lambda: quantize_indexer_fp8_ref(q))
        read_write = q.numel() * (2 + 1) + q.shape[0] * q.shape[1] * 4  # bf16 in, e4m3 + fp32 scales out
        results.append(
            {
                "N": tokens,
                "ours_ms": kernel_ms,
                "torch_ms": torch_ms,
                "speedup": torch_ms / kernel_ms,
                "ours_GB/s": read_write / kernel_ms / 1e6,
            }
        )
    return results


def paged_keys(batch: int, keys: int, device: str, page: int = 64):
    """A decode batch: each sequence's index keys on shuffled pages, one new query per sequence."""
    pages = -(-keys // page)
    k_cache = torch.randn(batch * pages, page, DIM, device=device, dtype=torch.bfloat16)  # [P, page, D]
    table = torch.randperm(batch * pages, device=device).view(batch, pages).to(torch.int32)
    q = torch.randn(batch, HEADS, DIM, device=device, dtype=torch.bfloat16)
    w = torch.randn(batch, HEADS, device=device) * DIM**-0.5
    return q, w, k_cache, table, torch.full((batch,), keys, dtype=torch.int32, device=device)


def decode_sweep(sizes: list[int], batches: list[int], device: str) -> list[dict[str, object]]:
    """One new query per sequence against S cached keys: the batched paged scan (+ top-k) against one
    `indexer_topk` call per sequence (auto = cooperative for its one row) and the torch path at batch 1."""
    results = []
    for keys in sizes:
        for batch in batches:
            q, w, k_cache, table, lengths = paged_keys(batch, keys, device)
            flat = k_cache.view(-1, DIM)[:keys]  # sequence 0's keys, contiguous, for the per-sequence paths
            scores = torch.empty(batch, table.shape[1] * k_cache.shape[1], device=device)
            scan = bench_ms(
                lambda: launch_indexer_decode_scores(q, w, k_cache, table, lengths, scores), graph=True
            )
            batched = bench_ms(lambda: indexer_decode_topk(q, w, k_cache, table, lengths, TOPK), graph=True)
            one = bench_ms(lambda: indexer_topk(q[:1], w[:1], flat, TOPK, keys - 1), graph=True)
            baseline = None
            if batch == 1:
                baseline = bench_ms(
                    lambda: torch_indexer_topk(q[:1], w[:1], flat, TOPK, keys - 1), graph=True
                )
            key_bytes = batch * keys * DIM * 2
            results.append(
                {
                    "S": keys,
                    "B": batch,
                    "batched_scan_us": scan * 1e3,
                    "batched_scan+topk_us": batched * 1e3,
                    "per_sequence_indexer_topk_us": one * 1e3 * batch,
                    "torch_bf16_us(B=1)": baseline * 1e3 if baseline else None,
                    "scan_GB/s(keys)": key_bytes / scan / 1e6,
                    "scan+topk_GB/s(keys)": key_bytes / batched / 1e6,
                }
            )
            k_cache = scores = None
    return results


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, object]]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--config-keys", type=int, default=32768)
    parser.add_argument("--config-chunk", type=int, default=4096)
    parser.add_argument("--reference-max", type=int, default=8192)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], help="decode batch sizes")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # One measurement alone when its flag is given: (flag, what it times, N -> rows, result key, table title).
    single_runs = [
        ("quantize", "the e4m3 quantiser", lambda n: quantize_sweep([n], device),
         "indexer e4m3 quantiser (queries)", "indexer e4m3 quantiser"),
        ("head-sum-rounds", "the FMA/MMA A-B", lambda n: head_sum_rounds(n, device), "indexer head sum, FMA vs MMA",
         "indexer + minmax top-k, FMA vs MMA head sum"),
        ("bound-steps-rounds", "the minmax bound-bits A-B", lambda n: switch_rounds(n, device, "BOUND_STEPS"),
         "minmax bound bits", "minmax bound at 3 and 2 radix steps: 24 and 16 bits"),
        ("last-bits-rounds", "the minmax bound's last-digit A-B", lambda n: switch_rounds(n, device, "LAST_BITS"),
         "minmax bound's last digit", "minmax bound's last digit at 8 and 6 bits: 16 and 14 bits in all"),
        ("select-config-rounds", "the minmax select configs", lambda n: select_config_rounds(n, device),
         "minmax select configs", "indexer + minmax top-k by select config"),
        ("top-from-bound-rounds", "the minmax finish A-B", lambda n: switch_rounds(n, device, "TOP_FROM_BOUND"),
         "minmax finish", "minmax finish from the first byte or from the bound's"),
        ("bucket-finish-rounds", "the minmax bucket-finish A-B", lambda n: switch_rounds(n, device, "BUCKET_FINISH"),
         "minmax bucket finish",
         "minmax finish: last two bytes over every candidate or over the K-th key's 16-bit bucket"),
        ("row-top-rounds", "the minmax row-top A-B", lambda n: switch_rounds(n, device, "ROW_TOP"), "minmax row top",
         "the row's top byte from a pass over its extremes or from their writers"),
        ("group-loads-rounds", "the minmax gather-load A-B", lambda n: switch_rounds(n, device, "GROUP_LOADS"),
         "minmax gather loads", "the gather's loads masked per key or per group"),
    ]  # fmt: skip
    for flag, what, *_ in single_runs:
        parser.add_argument(f"--{flag}", type=int, default=0, metavar="N", help=f"only {what} at N")
    args = parser.parse_args(argv)
    for flag, _, run, key, title in single_runs:
        size = getattr(args, flag.replace("-", "_"))
        if size:
            rows = run(size)
            print(format_table(rows, f"{title} ({device})"))
            return {key: rows}
    tables = {
        "indexer score tile configs": score_config_sweep(args.config_keys, args.config_chunk, device),
        "indexer + top-k, prefill (one sequence)": prefill_sweep(args.sizes, device, args.reference_max),
        "indexer + top-k, decode (one query per sequence)": decode_sweep(args.sizes, args.batches, device),
        "indexer e4m3 quantiser (queries)": quantize_sweep(args.sizes, device),
    }
    for title, rows in tables.items():
        print(format_table(rows, f"{title} ({device})"))
    return tables


if __name__ == "__main__":
    main()
