"""One device-machine call: GPU kernel tests, the ceilings, and every kernel sweep, with logs.

`python3 -m kernels.run_gpu --out DIR [--skip-tests] [--layer-sizes ...]`: measures the copy
bandwidth and the bf16 matmul rate of the card, runs the MoE, top-k, decode, norm, indexer and DSA-layer
sweeps, then `pytest -m gpu tests/kernels` on CUDA (the large cases; the small ones run under the
CPU interpreter everywhere), and writes run.log, pytest.log, results.json and summary.md to
DIR. The last thing printed is the summary, so a truncated console still shows the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from kernels._bench import bench_ms, format_table, gpu_line


class Tee(io.TextIOBase):
    """Write to several streams (console + log file)."""

    def __init__(self, *streams: io.TextIOBase) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)


def ceilings() -> list[dict[str, object]]:
    """Device-to-device copy bandwidth (read + write bytes) and bf16 8192^3 matmul rate."""
    src = torch.randn(1 << 28, device="cuda")  # 1 GiB fp32
    dst = torch.empty_like(src)
    copy_ms = bench_ms(lambda: dst.copy_(src))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm_ms = bench_ms(lambda: a @ b)
    return [
        {"what": "copy (read+write)", "GB/s": 2 * src.numel() * 4 / copy_ms / 1e6},
        {"what": "bf16 matmul 8192^3", "TFLOP/s": 2 * 8192**3 / mm_ms / 1e9},
    ]


def run_tests(out_dir: Path, timeout_s: int) -> str:
    cmd = [sys.executable, "-m", "pytest", "tests/kernels", "-q", "-p", "no:cacheprovider", "--durations=8"]
    cmd += ["-m", "gpu", "--timeout", "120"]  # the small cases run on the CPU interpreter in CI
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        text = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        text = f"pytest timed out after {timeout_s}s\n{exc.stdout or ''}"
    (out_dir / "pytest.log").write_text(text)
    tail = [line for line in text.splitlines() if line.strip()][-12:]
    return "\n".join(tail)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--test-timeout", type=int, default=240)
    parser.add_argument("--layer-sizes", type=int, nargs="+", default=[8192, 32768, 131072, 262144])
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting new sweeps after this")
    parser.add_argument("--only", nargs="*", default=None, help="subset of: topk indexer decode moe layer")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    log = open(args.out / "run.log", "w")  # noqa: SIM115 (kept open for the whole run)
    console = Tee(sys.stdout, log)
    results: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": gpu_line(),
        "torch": torch.__version__,
    }
    import triton

    results["triton"] = triton.__version__
    summary: list[str] = [
        f"date {results['date']}  gpu {results['gpu']}  torch {torch.__version__}  triton {triton.__version__}"
    ]
    with contextlib.redirect_stdout(console):
        print(summary[0], flush=True)
        ceiling_rows = ceilings()
        results["ceilings"] = ceiling_rows
        summary.append(format_table(ceiling_rows, "ceilings"))
        from kernels.fused_moe import bench as moe_bench
        from kernels.indexer import bench as indexer_bench
        from kernels.rms_norm import bench as norm_bench
        from kernels.sparse_attention import bench as layer_bench
        from kernels.sparse_decode import bench as decode_bench
        from kernels.topk import bench as topk_bench

        deadline = began + args.budget_s

        def fastest_topk_method() -> str:
            """The top-k method of the fastest indexer + top-k prefill on the longest positional inputs."""
            tables = results.get("indexer")
            rows = tables.get("indexer + top-k, prefill (one sequence)") if isinstance(tables, dict) else None
            if not rows:
                return "minmax"
            longest = max((r for r in rows if r["inputs"] == "positional"), key=lambda r: r["N"])
            times = {m: longest[f"ours_{m}_ms"] for m in ("compact", "bound", "minmax")}
            return min(times, key=times.get)

        sweeps = [
            ("topk", lambda: topk_bench.main([])),
            ("moe", lambda: moe_bench.main([])),
            ("decode", lambda: decode_bench.main([])),
            ("rms_norm", lambda: norm_bench.main([])),
            ("indexer", lambda: indexer_bench.main([])),
            (
                "layer",
                lambda: layer_bench.main(
                    ["--sizes", *map(str, args.layer_sizes), "--topk-method", fastest_topk_method()],
                    deadline_s=deadline,
                ),
            ),
        ]
        for name, sweep in sweeps:
            if args.only is not None and name not in args.only:
                continue
            if time.monotonic() > deadline:
                summary.append(f"{name}: skipped, out of time")
                continue
            started = time.monotonic()
            try:
                value = sweep()
            except Exception:
                value = {"error": traceback.format_exc()}
                print(value["error"], flush=True)
            torch.cuda.empty_cache()
            results[name] = value
            tables = value if isinstance(value, dict) else {name: value}
            for title, rows in tables.items():
                if isinstance(rows, list):
                    summary.append(format_table(rows, f"{name}: {title}"))
                else:
                    summary.append(f"{name}: {str(rows)[-600:]}")
            print(f"[{name} took {time.monotonic() - started:.1f}s]", flush=True)
        if not args.skip_tests:  # last, so a slow compile cannot eat the benchmark time
            remaining = int(args.budget_s + args.test_timeout - (time.monotonic() - began))
            tail = run_tests(args.out, max(30, min(args.test_timeout, remaining)))
            results["pytest_tail"] = tail
            summary.append("pytest -m gpu tests/kernels (cuda):\n" + tail)
            print(summary[-1], flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / "summary.md").write_text("\n".join(summary))
    log.close()
    print("\n".join(summary))
    print(f"total {time.monotonic() - began:.1f}s")


if __name__ == "__main__":
    main()
