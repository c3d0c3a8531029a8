"""Sweep: the fused RMSNorm (+ rotary) against the runtime's eager PyTorch ops, at Keye's shapes.

`python -m kernels.rms_norm.bench [--tokens 4096 1]`. Each site of a layer: the hidden-size norms
(input, post-attention, final), q and k's QK-norm with mRoPE, the indexer's q norm with its rotary.
Bandwidth counts the bytes that must move: x read, the output written, the cos/sin rows read once per
token. Both sides are timed eagerly, as the runtime calls them (at one token that is launch time).
"""

# ruff: noqa: B023 -- each timed lambda runs inside its own loop iteration

from __future__ import annotations

import argparse

import torch

from kernels._bench import bench_ms, format_table
from kernels.rms_norm import rms_norm, rms_norm_ref
from model_runtime.model import mrope_cos_sin

SITES = [  # (name, heads per token (0: a hidden-size row), dim, rotary)
    ("hidden norm", 0, 2048, False),
    ("q norm + mRoPE", 32, 128, True),
    ("k norm + mRoPE", 4, 128, True),
    ("indexer q norm + rotary", 16, 64, True),
]


def sweep(token_counts: list[int], device: str) -> list[dict[str, object]]:
    rows = []
    for tokens in token_counts:
        positions = torch.arange(tokens, device=device).expand(3, tokens)
        for name, heads, dim, rotary in SITES:
            shape = (tokens, heads, dim) if heads else (tokens, dim)
            x = torch.randn(shape, device=device, dtype=torch.bfloat16)
            weight = torch.rand(dim, device=device, dtype=torch.bfloat16) + 0.5
            rope = mrope_cos_sin(positions, dim, [dim // 8, dim // 8, dim // 4], 1e6) if rotary else None
            fused_ms = bench_ms(lambda: rms_norm(x, weight, 1e-6, rope))
            eager_ms = bench_ms(lambda: rms_norm_ref(x, weight, 1e-6, rope))
            moved = 2 * x.numel() * x.element_size() + (2 * tokens * dim * 4 if rotary else 0)
            rows.append(
                {
                    "site": name,
                    "tokens": tokens,
                    "fused_us": fused_ms * 1e3,
                    "eager_us": eager_ms * 1e3,
                    "speedup": eager_ms / fused_ms,
                    "fused_GB/s": moved / fused_ms / 1e6,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 1])
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = sweep(args.tokens, device)
    print(format_table(rows, "rms_norm (+ rotary): fused kernel vs the runtime's eager ops"))
    return rows


if __name__ == "__main__":
    main()
