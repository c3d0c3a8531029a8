"""Timing and table helpers for the `python -m kernels.<op>.bench` sweeps.

GPU timings use CUDA events: a warm-up call (Triton compiles there), then the median of
several timed calls, more of them for short ops. On a machine without CUDA (a smoke run under
the Triton interpreter) a wall-clock median stands in, and the numbers mean nothing.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable

import torch


def bench_ms(
    fn: Callable[[], object], *, budget_ms: float = 300.0, max_reps: int = 50, graph: bool = False
) -> float:
    """Median milliseconds of fn() after one warm-up call.

    graph=True captures fn once in a CUDA graph and times its replays, which removes the Python
    launch overhead that dominates microsecond ops (decode, one top-k row).
    """
    fn()
    if not torch.cuda.is_available():
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    torch.cuda.synchronize()
    if graph:
        cuda_graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # allocations settle outside the capture
            with torch.cuda.graph(cuda_graph, stream=stream):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        cuda_graph.replay()
        torch.cuda.synchronize()
        fn = cuda_graph.replay
    times: list[float] = []
    spent = 0.0
    while len(times) < 3 or (spent < budget_ms and len(times) < max_reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
        spent += times[-1]
    return statistics.median(times)


def gpu_line() -> str:
    """`nvidia-smi` name/driver/memory line, or the torch device name, or 'cpu'."""
    try:
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
        out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except OSError:
        pass
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def format_table(rows: list[dict[str, object]], title: str) -> str:
    """Markdown table of rows (dicts sharing keys); floats get 4 significant digits."""
    if not rows:
        return f"### {title}\n(no rows)\n"
    columns = list(rows[0])
    for row in rows[1:]:
        columns += [c for c in row if c not in columns]

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = [f"### {title}", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
