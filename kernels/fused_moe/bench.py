"""Sweep: fused MoE tile configs (ours) vs the reference loop vs the best plain-torch path.

`python -m kernels.fused_moe.bench [--tokens 16384]`. Keye shapes: hidden 2048, 128 experts,
top-8, expert width 768, bf16. FLOPs: 2 * D * 2F (gate_up) + 2 * F * D (down) per routing slot.
The issue's target is >= 50% of the measured bf16 matmul ceiling (787 TFLOP/s) at 16K tokens.
Baselines: a bf16 per-expert matmul loop (the reference's shape without the fp32 upcast) and
torch._grouped_mm where this torch has it.
"""

# ruff: noqa: B023 -- each timed lambda runs inside its own loop iteration

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from kernels._bench import bench_ms, format_table
from kernels.fused_moe import fused_moe, fused_moe_ref
from kernels.fused_moe.kernel import DOWN_TILE_KEYS, TILE_KEYS, default_tiles
from kernels.fused_moe.slots import combine_slots, sort_slots_by_expert, sort_slots_by_expert_torch

HIDDEN, WIDTH, EXPERTS, TOP = 2048, 768, 128, 8
CONFIGS = [  # (block_m, block_n, block_k, num_warps, num_stages) of both GEMMs
    (64, 128, 64, 4, 3),
    (64, 64, 64, 4, 4),
    (128, 128, 64, 8, 3),
    (128, 64, 64, 4, 3),
    (128, 128, 32, 8, 4),
    (128, 128, 64, 8, 4),
    (256, 128, 64, 8, 3),
]
# The down GEMM alone (N = D = 2048, K = F = 768), gate_up on the 16-bit default tiles: the gap to
# the row with both on the default is the down kernel's share.
DOWN_CONFIGS = [  # (block_n, block_k, num_warps, num_stages)
    (128, 64, 4, 4),
    (256, 64, 8, 3),
    (256, 32, 8, 4),
    (64, 64, 4, 4),
]


def make_case(tokens: int, device: str, dtype: torch.dtype):
    x = torch.randn(tokens, HIDDEN, device=device, dtype=dtype)
    gate_up = (torch.randn(EXPERTS, HIDDEN, 2 * WIDTH, device=device) * HIDDEN**-0.5).to(dtype)
    down = (torch.randn(EXPERTS, WIDTH, HIDDEN, device=device) * WIDTH**-0.5).to(dtype)
    weights, ids = torch.randn(tokens, EXPERTS, device=device).softmax(-1).topk(TOP, dim=-1)
    return x, gate_up, down, ids, weights / weights.sum(-1, keepdim=True)


def torch_loop(x, gate_up, down, ids, weights):
    """bf16 per-expert loop: sort slots by expert, one matmul pair per non-empty expert."""
    flat = ids.reshape(-1)
    order = flat.argsort()
    counts = torch.bincount(flat, minlength=gate_up.shape[0]).tolist()
    rows = x[order // ids.shape[1]]  # [T*k, D]
    out = torch.empty_like(rows)
    first = 0
    for expert, count in enumerate(counts):
        if count:
            h = rows[first : first + count] @ gate_up[expert]
            out[first : first + count] = (F.silu(h[:, :WIDTH]) * h[:, WIDTH:]) @ down[expert]
            first += count
    per_slot = torch.empty_like(out)
    per_slot[order] = out * weights.reshape(-1)[order, None].to(out.dtype)
    return per_slot.view(x.shape[0], ids.shape[1], -1).sum(1)


def torch_grouped(x, gate_up, down, ids, weights):
    """torch._grouped_mm over expert-sorted rows (one kernel per GEMM)."""
    flat = ids.reshape(-1)
    order = flat.argsort()
    offsets = torch.cumsum(torch.bincount(flat, minlength=gate_up.shape[0]), 0).to(torch.int32)
    rows = x[order // ids.shape[1]]
    h = torch._grouped_mm(rows, gate_up, offs=offsets)
    y = torch._grouped_mm(F.silu(h[:, :WIDTH]) * h[:, WIDTH:], down, offs=offsets)
    per_slot = torch.empty_like(y)
    per_slot[order] = y * weights.reshape(-1)[order, None].to(y.dtype)
    return per_slot.view(x.shape[0], ids.shape[1], -1).sum(1)


def sweep(tokens: int, device: str) -> list[dict[str, object]]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x, gate_up, down, ids, weights = make_case(tokens, device, dtype)
    flop = tokens * TOP * 6 * HIDDEN * WIDTH
    ref = fused_moe_ref(x, gate_up, down, ids, weights)
    results = []
    default = default_tiles(dtype)
    runs = [("ours defaults (down: default_down_tiles)", (None,) * 5, None)]
    runs += [(f"ours {bm},{bn},{bk},{nw},{ns}", (bm, bn, bk, nw, ns), None) for bm, bn, bk, nw, ns in CONFIGS]
    runs += [
        (
            f"ours default, down {','.join(map(str, c))}",
            tuple(default[key] for key in TILE_KEYS),
            dict(zip(DOWN_TILE_KEYS, c, strict=True)),
        )
        for c in DOWN_CONFIGS
    ]
    for label, (block_m, block_n, block_k, warps, stages), down_tiles in runs:

        def run(bm=block_m, bn=block_n, bk=block_k, nw=warps, ns=stages, dt=down_tiles):
            return fused_moe(x, gate_up, down, ids, weights, block_m=bm, block_n=bn, block_k=bk,
                             num_warps=nw, num_stages=ns, down_tiles=dt)  # fmt: skip

        try:
            ms = bench_ms(run)
            out = run()
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        except Exception as exc:  # a config the compiler rejects (shared memory) is reported, not fatal
            results.append({"impl": label, "error": str(exc)[:80]})
            continue
        results.append({"impl": label, "ms": ms, "TFLOP/s": flop / ms / 1e9, "rel_err": err})
    results += bookkeeping(x, ids, default["block_m"])
    for name, fn in (
        ("torch bf16 loop", torch_loop),
        ("torch._grouped_mm", torch_grouped),
        ("reference", fused_moe_ref),
    ):
        try:
            ms = bench_ms(lambda fn=fn: fn(x, gate_up, down, ids, weights), budget_ms=100)
            results.append({"impl": name, "ms": ms, "TFLOP/s": flop / ms / 1e9})
        except Exception as exc:  # _grouped_mm is private and not in every build
            results.append({"impl": name, "error": str(exc)[:80]})
    return results


def bookkeeping(x: torch.Tensor, ids: torch.Tensor, block_m: int) -> list[dict[str, object]]:
    """The steps around the GEMMs, Triton against the PyTorch ops they replaced (session 14)."""
    tokens, top = ids.shape
    per_slot = torch.randn(tokens * top, x.shape[1], device=x.device, dtype=x.dtype)
    steps = {
        "slot sort (triton)": lambda: sort_slots_by_expert(ids, EXPERTS, block_m),
        "slot sort (torch ops)": lambda: sort_slots_by_expert_torch(ids, EXPERTS, block_m),
        "combine k rows (triton)": lambda: combine_slots(per_slot, tokens, top, x.dtype),
        "combine k rows (torch)": lambda: (
            per_slot.view(tokens, top, -1).sum(dim=1, dtype=torch.float32).to(x.dtype)
        ),
    }
    return [{"impl": name, "ms": bench_ms(fn, budget_ms=100)} for name, fn in steps.items()]


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16384])
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    for tokens in args.tokens:
        rows = sweep(tokens, device)
        for row in rows:
            row["T"] = tokens
        results += rows
    print(format_table(results, f"fused MoE, E={EXPERTS} top-{TOP} D={HIDDEN} F={WIDTH} ({device})"))
    return results


if __name__ == "__main__":
    main()
