"""`make bench`: run the CPU benchmarks, then assemble BENCHMARKS.md from benchmarks/results/*.md.

Each area's benchmark (`python -m benchmarks.<area>`) writes its own results file with the machine and
the date; GPU results (kernels, runtime_gpu) are produced on the lent GPU and committed as files, so
this script only collects them. Set BENCH_ONLY=area1,area2 to run a subset; `--assemble-only` runs
nothing and only rebuilds BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CPU_BENCHMARKS = ["video", "grounding", "load"]
ORDER = [
    "video",
    "grounding",
    "grounding_gpu",
    "workers",
    "load",
    "reliability",
    "runtime_gpu",
    "kernels",
    "training",
]


def run_cpu_benchmarks(selected: list[str]) -> list[str]:
    """Run each selected CPU benchmark in its own process; return the names that failed."""
    failed = []
    for name in selected:
        if not (ROOT / "benchmarks" / f"{name}.py").exists():
            print(f"[bench] {name}: no benchmarks/{name}.py, skipped", flush=True)
            continue
        print(f"[bench] running {name} …", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], cwd=ROOT).returncode != 0:
            failed.append(name)
    return failed


def assemble() -> Path:
    """Concatenate the per-area result files into BENCHMARKS.md in a fixed order."""
    files = sorted(
        RESULTS.glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem)
    )
    parts = [
        "# Benchmarks\n",
        "Assembled by `make bench` from `benchmarks/results/*.md`. Each section names its machine and date;\n"
        "GPU sections were measured on the lent H200 and report ratios against baselines from the same run.\n",
    ]
    parts += [f.read_text().rstrip() + "\n" for f in files]
    out = ROOT / "BENCHMARKS.md"
    out.write_text("\n".join(parts))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--assemble-only", action="store_true", help="run nothing; only rebuild BENCHMARKS.md"
    )
    args = parser.parse_args(argv)  # an unknown flag exits with a one-line message instead of benchmarking
    if args.assemble_only:
        print(f"[bench] wrote {assemble()}")
        return 0
    only = os.environ.get("BENCH_ONLY")
    selected = only.split(",") if only else CPU_BENCHMARKS
    failed = run_cpu_benchmarks(selected)
    print(f"[bench] wrote {assemble()}")
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
