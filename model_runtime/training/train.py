"""Train the small Keye-architecture model on synthetic videos (issue 7), nanoGPT-style: one file, top-down.

    python -m model_runtime.training.train --out model_runtime/checkpoints/keye-synth-small --minutes 6

What happens: worker processes write synthetic videos and turn them into tokenised grounding turns
(`training.data`) while the GPU trains on what is ready. Loss = next-token cross-entropy on the answer
tokens + the indexer's KL objective (spec §2.6): per layer, KL(dense attention averaged over heads ‖
softmax of the indexer scores), with the indexer's input detached so the KL trains only the indexer.
The first part of the run attends densely (dense warm-up); the rest runs the real top-k sparse
attention (`attn_impl="reference"`), so the shipped model is trained the way it is served. The result
is saved in the official checkpoint layout with the tokenizer, the preprocessor config (carrying the
video sampling defaults the model was trained with) and a training log.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from model_runtime.checkpoint import load_state, save_checkpoint
from model_runtime.config import KeyeConfig, SparseAttnConfig, TextConfig, VisionConfig
from model_runtime.model import Attention, ForwardContext, Segment, indexer_scores
from model_runtime.processor import DEFAULT_PREPROCESSOR_CONFIG, KeyeProcessor
from model_runtime.tokenizer import KeyeTokenizer, build_tiny_tokenizer, save_tokenizer
from model_runtime.training.data import IGNORE, SMALL_SAMPLING, Example, synthetic_examples
from model_runtime.vlm import KeyeVL, init_weights


def small_config(tokenizer: Any) -> KeyeConfig:
    """~2.5 M parameters of exactly the runtime's architecture; top-k 128 of ~2,300-token prompts."""
    ids = tokenizer.token_to_id
    text = TextConfig(
        vocab_size=-(-tokenizer.get_vocab_size(with_added_tokens=True) // 64) * 64,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=256,
        moe_intermediate_size=128,
        num_experts=8,
        num_experts_per_tok=2,
        mrope_section=[4, 6, 6],
        sa=SparseAttnConfig(
            indexer_num_heads=4, indexer_head_dim=16, topk=128, q_chunk_size=256, kv_chunk_size=256
        ),
    )
    vision = VisionConfig(
        hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=3, image_size=84,
        packing_position_embedding_size=64,
    )  # fmt: skip
    return KeyeConfig(
        text=text,
        vision=vision,
        torch_dtype="float32",
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
    )


# ---- data: worker processes make examples, then the trainer samples from them ----------------------------------

_PROCESSOR: KeyeProcessor | None = None


def _init_worker(folder: str) -> None:
    global _PROCESSOR
    torch.set_num_threads(1)
    _PROCESSOR = KeyeProcessor.from_pretrained(folder)


def _make(seed: int) -> list[Example]:
    assert _PROCESSOR is not None
    return synthetic_examples(_PROCESSOR, seed)


def generate_examples(folder: Path, seeds: range, workers: int, seconds: float) -> list[Example]:
    """Examples of as many seeds' videos as `workers` processes finish in `seconds` (or all of them).

    Generation and training take turns rather than overlap: on the GPU host the trainer's Python
    dispatch is the bottleneck, and worker processes on every core starve it.
    """
    deadline = time.time() + seconds
    out: list[Example] = []
    if workers <= 0:
        _init_worker(str(folder))
        for seed in seeds:
            out += _make(seed)
            if time.time() > deadline:
                break
        return out
    with mp.get_context("spawn").Pool(workers, _init_worker, (str(folder),)) as pool:
        for examples in pool.imap_unordered(_make, seeds, chunksize=2):
            out += examples
            if time.time() > deadline:
                break
        pool.terminate()
    return out


def make_batch(examples: list[Example], processor: KeyeProcessor, device: torch.device) -> dict[str, Any]:
    """Pack examples into one ragged forward: concatenated tokens, one Segment each."""
    return {
        "input_ids": torch.cat([e.input_ids for e in examples]).to(device),
        "positions": torch.cat([e.positions for e in examples], dim=1).to(device),
        "labels": torch.cat([e.labels for e in examples]).to(device),
        "segments": [Segment(e.n_tokens) for e in examples],
        "pixel_values": torch.cat([processor.patchify(e.frames) for e in examples]).to(device),
        "grids": [g for e in examples for g in e.grids],
    }


def sample_batch(buffer: list[Example], max_tokens: int, rng: random.Random) -> list[Example]:
    batch, total = [], 0
    while True:
        e = buffer[rng.randrange(len(buffer))]
        if batch and total + e.n_tokens > max_tokens:
            return batch
        batch.append(e)
        total += e.n_tokens


# ---- the indexer's KL objective ---------------------------------------------------------------------


class IndexerDistillation:
    """Forward hooks that add, per layer and sequence, KL(dense attention over heads ‖ softmax(I))."""

    def __init__(self, model: KeyeVL, max_segments: int = 2):
        self.max_segments = max_segments
        self.losses: list[Tensor] = []
        self.handles = [
            m.register_forward_hook(self._hook)
            for m in model.modules()
            if isinstance(m, Attention) and m.sa_indexer
        ]

    def _hook(self, attn: Attention, args: tuple[Tensor, ForwardContext], _out: Tensor) -> None:
        x, ctx = args
        x = x.detach()  # the KL trains the indexer only (spec §2.6: indexer input detached)
        with torch.no_grad():
            q, k, _ = attn.project(x, ctx)  # [N, H, Dh], [N, K, Dh]
        iq, iw, ik = attn.sa_indexer(x, ctx.index_rope)  # [N, I, Di], [N, I], [N, Di]
        a = 0
        for seg in ctx.segments[: self.max_segments]:  # a sample of the batch is enough for the KL
            b = a + seg.length
            causal = torch.ones(seg.length, seg.length, dtype=torch.bool, device=x.device).tril()
            with torch.no_grad():
                kk = k[a:b].repeat_interleave(attn.n_heads // attn.n_kv, dim=1)  # [T, H, Dh]
                logits = torch.einsum("thd,shd->hts", q[a:b].float(), kk.float()) * attn.head_dim**-0.5
                target = logits.masked_fill(~causal, float("-inf")).softmax(-1).mean(0)  # [T, T]
            scores = indexer_scores(iq[a:b], iw[a:b], ik[a:b]).masked_fill(~causal, float("-inf"))
            log_q = scores.log_softmax(-1)
            kl = (target * (target.clamp_min(1e-12).log() - log_q.masked_fill(~causal, 0.0))).sum(-1)
            self.losses.append(kl.mean())
            a = b

    def pop(self) -> Tensor:
        loss = torch.stack(self.losses).mean()
        self.losses = []
        return loss


# ---- training ---------------------------------------------------------------------------------------


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def write_checkpoint_files(out: Path, tokenizer: Any, config: KeyeConfig) -> None:
    save_tokenizer(tokenizer, out)
    config.save(out)
    pre = {**DEFAULT_PREPROCESSOR_CONFIG, "video_sampling": SMALL_SAMPLING.to_kwargs()}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    generation = {
        "eos_token_id": [config.eos_token_id, config.pad_token_id],
        "pad_token_id": config.pad_token_id,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def train(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    config = small_config(tokenizer)
    write_checkpoint_files(out, tokenizer, config)
    processor = KeyeProcessor(KeyeTokenizer.from_pretrained(out), config, {})
    model = init_weights(KeyeVL(config, attn_impl="dense"), seed=args.seed).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    distill = IndexerDistillation(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))

    if args.init:
        load_state(model, args.init)  # continue from an earlier run of this script
    seeds = range(args.seed_offset, args.seed_offset + args.videos)
    buffer = generate_examples(out, seeds, args.workers, args.data_seconds)
    print(json.dumps({"examples": len(buffer), "data_seconds": args.data_seconds}), flush=True)
    rng = random.Random(args.seed)
    started = time.time()
    budget_s = args.minutes * 60
    est_steps = args.max_steps
    log: list[dict[str, float]] = []
    step = 0
    sparse = False
    while step < args.max_steps and time.time() - started < budget_s:
        elapsed = time.time() - started
        if not sparse and elapsed > args.dense_fraction * budget_s:
            model.model.set_impl(attn_impl="reference")  # sparse adaptation for the rest of the run
            sparse = True
        batch = make_batch(sample_batch(buffer, args.batch_tokens, rng), processor, device)
        logits = model(
            batch["input_ids"], batch["positions"], batch["segments"], batch["pixel_values"], batch["grids"]
        )
        targets = torch.full_like(batch["labels"], IGNORE)
        targets[:-1] = batch["labels"][1:]  # token i predicts label i+1 (segment ends are IGNORE anyway)
        ce = F.cross_entropy(logits, targets, ignore_index=IGNORE)
        kl = distill.pop()
        loss = ce + args.kl_weight * kl
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, est_steps, args.lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0:
            rate = (step + 1) / max(1e-6, time.time() - started)
            est_steps = min(args.max_steps, int(rate * budget_s))  # cosine schedule over the time budget
            row = {"step": step, "s": round(time.time() - started, 1), "ce": ce.item(), "kl": kl.item(),
                   "sparse": sparse, "examples": len(buffer)}  # fmt: skip
            log.append(row)
            print(json.dumps(row), flush=True)
        step += 1
    model.model.set_impl(attn_impl="reference")
    save_checkpoint(model.cpu(), config, out)
    summary = {
        "parameters": n_params,
        "steps": step,
        "train_seconds": round(time.time() - started, 1),
        "examples": len(buffer),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "final_ce": log[-1]["ce"] if log else None,
        "final_kl": log[-1]["kl"] if log else None,
        "args": vars(args),
    }
    (out / "training_log.json").write_text(json.dumps({"summary": summary, "log": log}, indent=1) + "\n")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--videos", type=int, default=3000)
    p.add_argument("--data-seconds", type=float, default=120.0, help="time to spend making videos first")
    p.add_argument("--init", help="start from this checkpoint's weights")
    p.add_argument("--workers", type=int, default=max(1, (mp.cpu_count() or 2) - 2))
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--dense-fraction", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seed-offset", type=int, default=1_000_000, help="video seeds; eval sets use others")
    print(json.dumps(train(p.parse_args())), flush=True)


if __name__ == "__main__":
    main()
