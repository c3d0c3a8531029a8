"""Full-size Keye-VL-2.0 LM on one GPU: peak memory, prefill and decode speed per attention backend.

Builds the full-size architecture (`KeyeConfig.full()`) with random bf16 weights directly on the GPU
(no checkpoint files; speed does not depend on the values) and, for each `attn_impl`, prefills
video-shaped prompts of 16K/64K/128K tokens in chunks (as the engine does: a KV cache reserved once,
`--chunk` tokens per forward) and then decodes single tokens. Prompt embeddings are random, laid out
as 256-token frames with timestamp text between them (mRoPE positions per spec §4.6); the vision
tower's cost is measured separately on frames of the same size. With `--tp N` the same measurements run
on N GPUs at once, one process per GPU, each holding its shard of the heads and expert widths
(`model_runtime.parallel`) and all-reducing over NCCL, as `TensorParallelEngine` does. Model FLOP
utilisation divides the FLOPs the architecture (one rank's shard under `--tp`) needs by the time and by
787 TFLOP/s (the H200's measured dense bf16 rate): linear layers of the 8 active experts, attention
over all causal keys for `dense` and over min(position, top-k) keys plus the indexer's scoring of all
causal keys for `reference`/`triton`.
Each measurement has a time cap; a size whose projected time exceeds it is reported as skipped.

    python -m benchmarks.runtime_gpu --out benchmarks/results/runtime_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

PEAK_BF16_FLOPS = 787e12
FRAME_GRID = 16  # merged tokens per frame side: 256 tokens per 448x448 frame
TEXT_PER_FRAME = 5  # "<|frame|>" + "12.5" + vision markers, roughly


@dataclass
class Result:
    impl: str
    what: str
    tokens: int
    seconds: float | None
    tokens_per_s: float | None
    mfu: float | None
    peak_gib: float
    note: str = ""


BRANCHES = 8  # questions about one video decoding together in the graphed decode measurement


def video_positions(n_tokens: int, device: torch.device) -> torch.Tensor:
    """[3, n] mRoPE positions of a prompt made of text runs and 16x16-token frames (spec §4.6)."""
    t, h, w = [], [], []
    s = 0
    while len(t) < n_tokens:
        for _ in range(TEXT_PER_FRAME):  # timestamp text: all three channels advance together
            t.append(s), h.append(s), w.append(s)
            s += 1
        rows = torch.arange(FRAME_GRID).repeat_interleave(FRAME_GRID).tolist()
        cols = torch.arange(FRAME_GRID).repeat(FRAME_GRID).tolist()
        for r, c in zip(rows, cols, strict=True):
            t.append(s), h.append(s + r), w.append(s + c)
        s += FRAME_GRID  # next text starts after the frame's largest position
    return torch.tensor([t[:n_tokens], h[:n_tokens], w[:n_tokens]], device=device)


def linear_flops_per_token(cfg: Any) -> float:
    """2 x the active LM parameters a token passes through (lm_head excluded: prefill keeps one row)."""
    d, hd = cfg.hidden_size, cfg.head_dim
    attn = d * hd * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
    sa = cfg.sa
    indexer = d * (sa.indexer_num_heads * (sa.indexer_head_dim + 1) + sa.indexer_head_dim) if sa else 0
    experts = cfg.num_experts_per_tok * 3 * d * cfg.moe_intermediate_size
    router = d * cfg.num_experts
    return 2.0 * cfg.num_hidden_layers * (attn + indexer + experts + router)


def attention_flops(cfg: Any, start: int, n_new: int, impl: str) -> float:
    """QK^T and PV (and the indexer's scores) for queries at positions start..start+n_new-1."""
    positions = torch.arange(start + 1, start + n_new + 1, dtype=torch.float64)  # keys each query sees
    per_key = 4.0 * cfg.num_attention_heads * cfg.head_dim
    sa = cfg.sa
    if impl == "dense" or sa is None:
        return cfg.num_hidden_layers * per_key * float(positions.sum())
    attended = positions.clamp(max=sa.topk)
    scoring = 2.0 * sa.indexer_num_heads * sa.indexer_head_dim * positions  # q.k per indexer head
    scoring = torch.where(positions > sa.topk, scoring, torch.zeros_like(scoring))  # skipped at <= topk
    return cfg.num_hidden_layers * float((per_key * attended + scoring).sum())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0


def build_model(device: torch.device, size: str, tp: int = 1) -> Any:
    """The model (or, under tensor parallelism, this rank's shard of it) with random weights.

    Every rank draws from the same seed and its shards have the same shapes, so the replicated weights
    (indexer, norms, router, embeddings) come out identical on all ranks, as they would from a checkpoint.
    """
    from model_runtime.config import KeyeConfig
    from model_runtime.model import Attention, SparseMoe
    from model_runtime.parallel import shard_config
    from model_runtime.vlm import KeyeVL

    config = shard_config(KeyeConfig.from_size(size), tp)
    torch.manual_seed(0)
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        model = KeyeVL(config)
        torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():  # never time on zeros or uninitialised memory
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
    model.model.fuse_input_projections()  # as the engine serves it
    if tp > 1:
        for module in model.modules():
            if isinstance(module, (Attention, SparseMoe)):
                module.tp_group = dist.group.WORLD
    return model.eval()


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def say(*parts: Any, **kw: Any) -> None:
    if is_rank0():
        print(*parts, **kw)


def rank0_decides(flag: bool, device: torch.device) -> bool:
    """Rank 0's choice on every rank: a rank skipping a measurement the others run would hang them."""
    if not dist.is_initialized():
        return flag
    box = torch.tensor([int(flag)], device=device)
    dist.broadcast(box, src=0)
    return bool(box.item())


@torch.no_grad()
def prefill(model: Any, n_tokens: int, chunk: int, cache: Any, device: torch.device) -> float:
    """Chunked prefill of n_tokens random video-prompt embeddings; returns seconds."""
    from model_runtime.model import Segment

    d = model.config.text.hidden_size
    positions = video_positions(n_tokens, device)
    sync(device)
    t0 = time.perf_counter()
    for lo in range(0, n_tokens, chunk):
        hi = min(n_tokens, lo + chunk)
        seed = torch.Generator(device).manual_seed(lo)  # the same prompt on every tensor-parallel rank
        embeds = torch.randn(hi - lo, d, device=device, dtype=torch.bfloat16, generator=seed) * 0.02
        hidden = model.model(embeds, positions[:, lo:hi], [Segment(hi - lo, cache)])
    model.logits(hidden[-1:])
    sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def decode(model: Any, cache: Any, steps: int, device: torch.device) -> float:
    """Greedy single-token decode steps on top of `cache`; returns seconds per token."""
    from model_runtime.model import Segment

    token = torch.tensor([1], device=device)
    pos = cache.length
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        hidden = model.model(
            model.embed(token), torch.full((3, 1), pos + i, device=device), [Segment(1, cache)]
        )
        token = model.logits(hidden).argmax(-1)
    sync(device)
    return (time.perf_counter() - t0) / steps


@torch.no_grad()
def decode_graphed(model: Any, caches: list[Any], steps: int, device: torch.device) -> float:
    """Greedy decode steps of a batch through one captured CUDA graph (model_runtime/decode.py, as the engine
    runs them); the first step (eager, then the capture) is not timed. Returns seconds per step."""
    from model_runtime.decode import DecodeGraph, decode_state

    state = decode_state(caches, [steps + 1] * len(caches))
    assert state is not None
    graph = DecodeGraph(model, caches, state)
    tokens = torch.ones(len(caches), dtype=torch.long, device=device)

    def step(tokens: torch.Tensor) -> torch.Tensor:
        hidden = graph.step(caches, tokens.tolist(), [c.length for c in caches])
        return model.logits(hidden).argmax(-1)

    tokens = step(tokens)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        tokens = step(tokens)
    sync(device)
    return (time.perf_counter() - t0) / steps


def parse_config(text: str, default_chunk: int) -> tuple[str, str, int, bool]:
    """ "attn[/moe][+fp8][@chunk]" -> (attn_impl, moe_impl, prefill chunk (0 = the whole prompt in one
    forward), FP8 experts). FP8 quantises the experts in place, so list FP8 configs last."""
    impls, _, chunk = text.partition("@")
    impls, _, fp8 = impls.partition("+")
    attn, _, moe = impls.partition("/")
    return attn, moe or "reference", int(chunk) if chunk else default_chunk, fp8 == "fp8"


def run(args: argparse.Namespace) -> list[Result]:
    from model_runtime.model import KVCache

    device = torch.device(args.device)
    if args.tp > 1 and device.type == "cuda":
        device = torch.device(f"cuda:{dist.get_rank()}")
    t_start = time.perf_counter()
    model = build_model(device, args.size, args.tp)
    sync(device)
    say(
        f"built {args.size} model in {time.perf_counter() - t_start:.1f}s, peak {peak_gib(device):.1f} GiB",
        flush=True,
    )
    cfg = model.config.text
    lin = linear_flops_per_token(cfg)
    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        # written after every measurement, so a run cut short keeps what it measured
        if args.out and is_rank0():
            with open(args.out, "w") as f:
                json.dump({"results": [r.__dict__ for r in results]}, f, indent=2)

    def reset_peak() -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    for text in args.configs:
        attn, moe, chunk, fp8 = parse_config(text, args.chunk)
        label = f"{attn}/{moe}{' FP8 experts' if fp8 else ''} " + (
            "one forward" if chunk == 0 else f"chunk {chunk}"
        )
        if fp8:
            from model_runtime.model import quantize_experts

            quantize_experts(model)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            say(f"experts in FP8: {torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated", flush=True)
        needs_kernels = "triton" in (attn, moe)
        if rank0_decides(needs_kernels and model.model.kernels.get(device) is None, device):
            record(Result(label, "prefill", 0, None, None, None, 0.0, "skipped: Triton kernels unavailable"))
            continue
        if rank0_decides(left() < 20, device):
            record(Result(label, "prefill", 0, None, None, None, 0.0, "skipped: out of device time"))
            continue
        try:
            model.model.set_impl(attn_impl=attn, moe_impl=moe)
            # warm-up past top-k (so the sparse path and its kernels compile), then 2 decode steps
            n_warm = min(4096, args.sizes[0])
            warm = KVCache(cfg, capacity=n_warm + 2, device=device, dtype=torch.bfloat16)
            prefill(model, n_warm, chunk or n_warm, warm, device)
            decode(model, warm, 2, device)
            del warm
        except Exception as exc:  # a backend that fails here is reported, not fatal to the others
            record(
                Result(
                    label, "prefill", 0, None, None, None, 0.0, f"failed: {type(exc).__name__}: {exc}"[:200]
                )
            )
            say(f"{label}: warm-up failed: {exc!r}", flush=True)
            continue
        projected = 0.0
        for i, n in enumerate(args.sizes):
            cap = min(args.cap_s, left() - 10)
            if rank0_decides(projected > cap, device):
                record(
                    Result(
                        label, "prefill", n, None, None, None, 0.0, f"skipped: ~{projected:.0f}s projected"
                    )
                )
                say(
                    f"{label} prefill {n}: skipped (~{projected:.0f}s projected, {cap:.0f}s allowed)",
                    flush=True,
                )
                continue
            reset_peak()
            try:
                # Room for the eager decode steps and, after them, the graphed ones; spare rows for branches.
                tail = args.decode_steps + 2
                cache = KVCache(
                    cfg, capacity=n + 2 * tail, device=device, dtype=torch.bfloat16, spare=BRANCHES * tail
                )
                seconds = prefill(model, n, chunk or n, cache, device)
            except Exception as exc:  # OOM or a failing kernel: report it and move on to the next config
                note = f"failed: {type(exc).__name__}: {exc}"[:160]
                record(Result(label, "prefill", n, None, None, None, peak_gib(device), note))
                say(f"{label} prefill {n}: {note}", flush=True)
                break
            flops = n * lin + attention_flops(cfg, 0, n, attn)
            mfu = flops / seconds / PEAK_BF16_FLOPS
            record(Result(label, "prefill", n, seconds, n / seconds, mfu, peak_gib(device)))
            say(
                f"{label} prefill {n}: {seconds:.2f}s {n / seconds:,.0f} tok/s MFU {mfu:.1%} "
                f"peak {peak_gib(device):.1f} GiB",
                flush=True,
            )
            if i == 0 and args.decode_steps > 0:
                reset_peak()
                per_token = decode(model, cache, args.decode_steps, device)
                flops = lin + attention_flops(cfg, n, 1, attn)
                record(
                    Result(
                        label,
                        f"decode @ {n} context",
                        1,
                        per_token,
                        1 / per_token,
                        flops / per_token / PEAK_BF16_FLOPS,
                        peak_gib(device),
                        "batch 1",
                    )
                )
                say(f"{label} decode at {n}: {1 / per_token:.1f} tok/s", flush=True)
                if (attn, moe) == ("triton", "triton") and device.type == "cuda" and args.tp == 1:
                    # The same step captured as a CUDA graph: this sequence, then BRANCHES questions about it
                    # decoding together (branches of its cache, one storage: one launch per layer for all).
                    for batch in (1, BRANCHES):
                        caches = [cache] if batch == 1 else [cache.branch(tail) for _ in range(batch)]
                        per_step = decode_graphed(model, caches, args.decode_steps, device)
                        record(
                            Result(
                                label, f"decode @ {n} context", batch, per_step, batch / per_step, None,
                                peak_gib(device), f"batch {batch}, CUDA graph",
                            )
                        )  # fmt: skip
                        say(f"{label} graphed decode at {n}, batch {batch}: {batch / per_step:.1f} tok/s")
            del cache
            # Attention (and the reference path's per-query scoring and sort) grows with n^2: project
            # the next size's time from this one, conservatively, to skip what would not finish.
            if i + 1 < len(args.sizes):
                grow = args.sizes[i + 1] / n
                projected = seconds * grow * grow
    return results


def vision_speed(device: torch.device, size: str, frames: int = 64) -> Result:
    """The vision tower + projector on `frames` 448x448 frames (1024 patches, 256 LLM tokens each)."""
    from model_runtime.config import KeyeConfig
    from model_runtime.vision import Projector, VisionModel

    cfg = KeyeConfig.from_size(size)
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        tower, projector = (
            VisionModel(cfg.vision),
            Projector(cfg.vision, cfg.text.hidden_size, cfg.projector_ln_eps),
        )
        torch.set_default_dtype(torch.float32)
    grids = [(1, 32, 32)] * frames
    pixels = torch.randn(frames * 1024, 3, 14, 14, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        projector(tower(pixels, grids), grids)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        projector(tower(pixels, grids), grids)
        sync(device)
    seconds = time.perf_counter() - t0
    tokens = frames * 256
    return Result(
        "vision", f"encode {frames} frames", tokens, seconds, tokens / seconds, None, peak_gib(device)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["dense@0", "reference", "dense", "triton", "triton/triton"],
        help='"attn[/moe][@chunk]"; @0 prefills the whole prompt in one forward',
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[16_384, 65_536, 131_072])
    parser.add_argument(
        "--chunk", type=int, default=4096, help="prefill chunk tokens (NativeEngine's default)"
    )
    parser.add_argument("--budget-s", type=float, default=1e9, help="stop starting measurements after this")
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--cap-s", type=float, default=60.0, help="skip a size projected to take longer")
    parser.add_argument("--vision", action="store_true", help="also time the vision tower")
    parser.add_argument("--size", default="full", help="full, or tiny for a CPU smoke run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks, one process (GPU) each")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    try:
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        smi = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        smi = f"no nvidia-smi ({args.device})"
    print(f"device: {smi}; torch {torch.__version__}; tp {args.tp}", flush=True)
    if args.tp == 1:
        measure(0, args, smi)
        return
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast on a shared host
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    torch.multiprocessing.spawn(measure, args=(args, smi), nprocs=args.tp)


def measure(rank: int, args: argparse.Namespace, smi: str) -> None:
    """One rank's run (the only one without `--tp`); rank 0 prints the table and writes `--out`."""
    if args.tp > 1:
        on_gpu = args.device.startswith("cuda")
        if on_gpu:
            torch.cuda.set_device(rank)
        device = torch.device(f"cuda:{rank}") if on_gpu else None
        dist.init_process_group("nccl" if on_gpu else "gloo", rank=rank, world_size=args.tp, device_id=device)
    try:
        results = run(args)
        if args.vision and is_rank0():
            results.append(vision_speed(torch.device(args.device), args.size))
        if is_rank0():
            report(args, smi, results)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def report(args: argparse.Namespace, smi: str, results: list[Result]) -> None:
    header = f"| impl | what | tokens | s | tokens/s | MFU | peak GiB | note |\n|{'---|' * 8}"
    rows = [
        f"| {r.impl} | {r.what} | {r.tokens} | {'' if r.seconds is None else f'{r.seconds:.3f}'} | "
        f"{'' if r.tokens_per_s is None else f'{r.tokens_per_s:,.0f}'} | "
        f"{'' if r.mfu is None else f'{r.mfu:.1%}'} | {r.peak_gib:.1f} | {r.note} |"
        for r in results
    ]
    print(header + "\n" + "\n".join(rows), flush=True)
    if args.out:
        payload = {
            "device": smi,
            "torch": torch.__version__,
            "chunk": args.chunk,
            "tp": args.tp,
            "results": [r.__dict__ for r in results],
        }
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    main()
