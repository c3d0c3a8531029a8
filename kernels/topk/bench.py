"""Sweep: our top-k methods vs torch.topk on long fp32 rows; prints microseconds per row.

`python -m kernels.topk.bench [--cols 131072] [--rows 1 64 1024] [--topk 2048]`. The target
(issue 5) is top-2048 of a 128K row in under 30 us per row at batch 1; rows > 1 show the
throughput when the rows of a prefill chunk are selected together. Ours and torch.topk are
timed as CUDA-graph replays (no Python launch overhead). "minmax" includes its group-stats pass here
(in `indexer_topk` the score kernel writes the stats).
"""

# ruff: noqa: B023 -- each timed lambda runs inside its own loop iteration

from __future__ import annotations

import argparse

import torch

from kernels._bench import bench_ms, format_table
from kernels.topk import select_topk, select_topk_ref

COOPERATIVE_SLICES = (1024, 2048, 4096)  # columns per program (the launcher may double them to fit)


def make_rows(rows: int, cols: int, kind: str, device: str) -> torch.Tensor:
    """fp32 [rows, cols]: "normal", "narrow" (one octave, like indexer scores) or "smooth" (rising towards the
    row's end with a little noise, like indexer scores that favour nearby keys)."""
    scores = torch.randn(rows, cols, device=device)
    if kind == "narrow":
        return 2.5 + 0.05 * scores
    if kind == "smooth":
        return 1.0 + torch.arange(cols, device=device) / cols + 1e-3 * scores
    return scores


def sweep(cols: int, rows_list: list[int], topk: int, device: str) -> list[dict[str, object]]:
    """Normal scores at every row count, then one narrow row and the largest row count of smooth rows."""
    results = []
    for rows, kind in [(rows, "normal") for rows in rows_list] + [(1, "narrow"), (max(rows_list), "smooth")]:
        scores = make_rows(rows, cols, kind, device)  # [R, S] fp32
        lengths = torch.full((rows,), cols, dtype=torch.int32, device=device)
        ours = bench_ms(lambda: select_topk(scores, topk, lengths, method="compact"), graph=True)
        ours_radix = bench_ms(lambda: select_topk(scores, topk, lengths, method="radix"), graph=True)
        ours_sample = bench_ms(lambda: select_topk(scores, topk, lengths, method="sample"), graph=True)
        ours_split = bench_ms(lambda: select_topk(scores, topk, lengths, method="split"), graph=True)
        ours_bound = bench_ms(lambda: select_topk(scores, topk, lengths, method="bound"), graph=True)
        ours_minmax = bench_ms(lambda: select_topk(scores, topk, lengths, method="minmax"), graph=True)
        ours_coop = {  # "cooperative" falls back to "split" when rows x slices exceed the SMs
            size: bench_ms(
                lambda: select_topk(scores, topk, lengths, method="cooperative", slice_size=size), graph=True
            )
            for size in COOPERATIVE_SLICES
        }
        torch_topk = bench_ms(lambda: scores.topk(topk, dim=1), graph=True)
        reference = bench_ms(lambda: select_topk_ref(scores, topk, lengths))
        read_bytes = rows * cols * 4
        results.append(
            {
                "rows": rows,
                "scores": kind,
                "cols": cols,
                "k": topk,
                "ours_compact_us_per_row": ours * 1e3 / rows,
                "ours_radix_us_per_row": ours_radix * 1e3 / rows,
                "ours_sample_us_per_row": ours_sample * 1e3 / rows,
                "ours_split_us_per_row": ours_split * 1e3 / rows,
                "ours_bound_us_per_row": ours_bound * 1e3 / rows,
                "ours_minmax_us_per_row": ours_minmax * 1e3 / rows,
                **{f"ours_coop{size}_us_per_row": ms * 1e3 / rows for size, ms in ours_coop.items()},
                "torch.topk_us_per_row": torch_topk * 1e3 / rows,
                "reference_us_per_row": reference * 1e3 / rows,
                "best_GB/s_one_read": read_bytes
                / min(ours, ours_radix, ours_sample, ours_split, ours_bound, ours_minmax, *ours_coop.values())
                / 1e6,
            }
        )
    return results


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cols", type=int, default=131072)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--topk", type=int, default=2048)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = sweep(args.cols, args.rows, args.topk, device)
    print(format_table(results, f"top-k over fp32 rows ({device})"))
    return results


if __name__ == "__main__":
    main()
