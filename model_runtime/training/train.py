"""Train the small Keye-architecture model on synthetic videos (issue 7), nanoGPT-style: one file, top-down.

    python -m model_runtime.training.train --out DIR --minutes 8 [--init EARLIER_RUN]

(`model_runtime.training.recipe` chains the three runs that made the shipped checkpoint.)

What happens: worker processes write synthetic videos and decode them through `model_runtime.video`
(`training.data.sample_clips`); all their frames move to the training device once. While the GPU
trains, a few worker processes draw tokenised examples from them (crops and queries,
`training.data.draw_example`), short crops first and whole chunks later (the curriculum). Loss =
next-token cross-entropy on the answer tokens + the indexer's KL objective (spec §2.6): KL(dense
attention averaged over heads ‖ softmax of the indexer scores), with the indexer's input detached so
the KL trains only the indexer + a per-frame auxiliary loss (`FrameProbe`: which shapes each frame
shows, read from its visual tokens), because two answer tokens per clip teach the vision tower far too
slowly on their own + a per-question auxiliary loss (`MatchProbe`: which frames of the crop show the shape
asked, read from the hidden state where the answer starts), because the answers alone reward a model that
answers whatever shape is on screen. The first part of the run (`--dense-fraction`, 0 for none) attends
densely; the rest runs the real top-k sparse attention (`attn_impl="reference"`, each length group of the
packed batch as one masked call), so the shipped model is trained the way it is served.
The result is saved in the official checkpoint layout with the tokenizer, the preprocessor config
(carrying the video sampling defaults the model was trained with) and a training log.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import functools
import itertools
import json
import math
import multiprocessing as mp
import os
import pickle
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_runtime.checkpoint import load_state, save_checkpoint
from model_runtime.config import KeyeConfig, SparseAttnConfig, TextConfig, VisionConfig
from model_runtime.model import Attention, ForwardContext, Segment, host_index, indexer_scores
from model_runtime.processor import DEFAULT_PREPROCESSOR_CONFIG, KeyeProcessor
from model_runtime.tokenizer import build_tiny_tokenizer, save_tokenizer
from model_runtime.training.data import (
    ALL_QUERIES,
    IGNORE,
    SMALL_SAMPLING,
    Clip,
    Example,
    FrameStore,
    draw_example,
    sample_clips,
)
from model_runtime.vlm import KeyeVL, init_weights

TIME_TOKENS_S = 200  # one token per one-decimal time below 200 s (the small model's windows are 8 s)


def small_config(tokenizer: Any) -> KeyeConfig:
    """~2.9 M parameters of exactly the runtime's architecture; top-k 128 of ~330-token prompts (8-s windows)."""
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
            indexer_num_heads=4, indexer_head_dim=16, topk=128, q_chunk_size=128, kv_chunk_size=128
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


# ---- data: videos first, then worker processes draw examples while the trainer trains ---------------


def _init_worker() -> None:
    torch.set_num_threads(1)


def sample_videos(seeds: range, workers: int, seconds: float, min_s: float, max_s: float) -> list[Clip]:
    """Decoded chunks of as many seeds' videos as `workers` processes finish in `seconds` (or all).

    Seeds go out a few at a time and stop going out at the deadline, so the pool simply drains and
    shuts down: `Pool.terminate` after `imap_unordered` over a long range can hang (one H200 run sat in
    setup until its time limit)."""
    deadline = time.time() + seconds
    make = functools.partial(sample_clips, min_s=min_s, max_s=max_s)
    out: list[Clip] = []
    todo = iter(seeds)
    if workers <= 0:
        for seed in todo:
            out += make(seed)
            if time.time() > deadline:
                break
        return out
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker) as pool:
        pending = {pool.submit(make, seed) for seed in itertools.islice(todo, 2 * workers)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                out += future.result()
            if time.time() < deadline:
                pending |= {pool.submit(make, seed) for seed in itertools.islice(todo, len(done))}
    return out


_DRAWER: tuple[KeyeProcessor, list[Clip]] | None = None


def _init_drawer(folder: str, metas_file: str, worker: bool = True) -> None:
    global _DRAWER
    if worker:  # not when drawing inline: that would leave the trainer itself one thread
        torch.set_num_threads(1)
    metas = pickle.loads(Path(metas_file).read_bytes())
    _DRAWER = (KeyeProcessor.from_pretrained(folder), [Clip.from_meta(m) for m in metas])


def _draw(seed: int, max_crop_s: float, caption_p: float, n: int, options: dict[str, Any]) -> bytes:
    """`n` examples, pickled here with the plain pickler and their tensors as numpy arrays: returned as
    tensors, they would go through torch's multiprocessing reducers, which pass every tensor as a file
    descriptor with a socket handshake each (~300 per step at 96 examples; an H200 run stalled in that
    handshake, then crashed); pickled as tensors, unpickling 128 of them took the trainer ~25 ms a step,
    as arrays ~4 ms."""
    assert _DRAWER is not None
    processor, clips = _DRAWER
    rng = np.random.default_rng(seed)
    drawn = [
        draw_example(processor, clips, rng, max_crop_s=max_crop_s, caption_p=caption_p, **options)
        for _ in range(n)
    ]
    return pickle.dumps([_with_tensors(e, Tensor.numpy) for e in drawn], protocol=pickle.HIGHEST_PROTOCOL)


def _with_tensors(example: Example, convert: Any) -> Example:
    """The example with `convert` applied to its token arrays (to numpy for the pipe, back after)."""
    return dataclasses.replace(
        example,
        input_ids=convert(example.input_ids),
        positions=convert(example.positions),
        labels=convert(example.labels),
    )


class ExampleFeed:
    """Examples drawn by worker processes (a bounded number of requests in flight) or, with no workers,
    in this process. Tokenising is cheap next to a step, so a few workers keep the GPU fed."""

    def __init__(
        self,
        folder: Path,
        clips: list[Clip],
        workers: int,
        seed: int,
        per_request: int = 16,
        **options: Any,
    ):
        """`options` go to every `draw_example` (turns, near_miss_p, present_p)."""
        # The clips go to the workers through a file: a spawn start blocks until the child has read
        # its arguments (imports included), so megabytes of arguments start workers one after another
        # (~8 s each on the H200's host); a file name lets them all start at once, in the background.
        handle, name = tempfile.mkstemp(suffix=".pkl", prefix="feed-clips-")
        os.close(handle)
        self.metas_file = Path(name)
        self.metas_file.write_bytes(pickle.dumps([c.without_pixels() for c in clips]))
        self.workers, self.per_request, self.seed = workers, per_request, seed * 1_000_003
        self.options = options
        args = (str(folder), str(self.metas_file))
        self.pool = mp.get_context("spawn").Pool(workers, _init_drawer, args) if workers else None
        if self.pool is None:
            _init_drawer(*args, worker=False)
        self.pending: deque[Any] = deque()
        self.ready: deque[Example] = deque()

    def batch(
        self, max_tokens: int, max_crop_s: float, caption_p: float, max_examples: int = 1 << 30
    ) -> list[Example]:
        """Examples up to `max_tokens` in all and `max_examples` of them (at least one)."""
        batch: list[Example] = []
        total = 0
        while True:
            example = self._next(max_crop_s, caption_p)
            if batch and (total + example.n_tokens > max_tokens or len(batch) == max_examples):
                self.ready.appendleft(example)
                return batch
            batch.append(example)
            total += example.n_tokens

    def prefetch(self, max_crop_s: float, caption_p: float) -> None:
        """Keep 2 requests per worker in flight (workers draw while the trainer trains)."""
        while self.pool is not None and len(self.pending) < 2 * self.workers:
            self.pending.append(
                self.pool.apply_async(
                    _draw,
                    (self._seed(), max_crop_s, caption_p, self.per_request, self.options),
                )
            )

    def _next(self, max_crop_s: float, caption_p: float) -> Example:
        if not self.ready:
            if self.pool is None:
                drawn = _draw(self._seed(), max_crop_s, caption_p, self.per_request, self.options)
            else:
                self.prefetch(max_crop_s, caption_p)
                drawn = self.pending.popleft().get()
            self.ready.extend(_with_tensors(e, torch.from_numpy) for e in pickle.loads(drawn))
        return self.ready.popleft()

    def _seed(self) -> int:
        self.seed += 1
        return self.seed

    def close(self) -> None:
        if self.pool is not None:
            # Let the requests in flight finish first: a worker killed while it writes its answer holds the
            # result pipe's lock, and terminate() then waits on that lock forever (seen once in CI).
            for request in self.pending:
                request.wait(timeout=60)
            self.pending.clear()
            self.pool.terminate()
        self.metas_file.unlink(missing_ok=True)


class FrameProbe(nn.Module):
    """Training-only head: which of the `ALL_QUERIES` shapes a frame shows, from the max over its visual
    tokens. A probe on the vision tower alone learns the 63 labels within a few hundred steps; through
    the LM's answers alone it had not after a thousand. Not saved: the checkpoint keeps the official
    layout."""

    def __init__(self, width: int, n_labels: int = len(ALL_QUERIES)):
        super().__init__()
        self.head = nn.Linear(width, n_labels)

    def forward(self, visual: Tensor, grids: list[tuple[int, int, int]], merge: int = 2) -> Tensor:
        """visual [M, D] (frames' tokens in order) → label logits [F, n_labels]."""
        per_frame = [h * w // merge**2 for t, h, w in grids for _ in range(t)]
        frame_of = host_index(np.repeat(np.arange(len(per_frame)), per_frame), visual.device)
        pooled = visual.new_zeros(len(per_frame), visual.shape[1]).scatter_reduce(
            0, frame_of[:, None].expand_as(visual), visual, "amax", include_self=False
        )
        return self.head(pooled)


class MatchProbe(nn.Module):
    """Training-only head: from the hidden state where an answer starts, which frames of the crop show the
    shape asked (one logit per frame slot). Binding the query to its frames is what the answer's two time
    tokens teach slowest: a model answering whatever shape is on screen already gets most of them right.
    These 16 labels per question reward only an answer position that attended to the asked shape's
    frames. Not saved."""

    def __init__(self, width: int, n_slots: int):
        super().__init__()
        self.head = nn.Linear(width, n_slots)

    def forward(self, hidden: Tensor, rows: Tensor) -> Tensor:
        """hidden [N, D], rows [turns] (the positions that predict each first answer token) → [turns, W]."""
        return self.head(hidden[rows])


def warm_up_vision(
    model: KeyeVL,
    probe: FrameProbe,
    frames: FrameStore,
    processor: KeyeProcessor,
    args: argparse.Namespace,
    stall: StallReport | None = None,
) -> list[dict[str, Any]]:
    """Stage 1: the vision tower, projector and probe alone learn which shapes each frame shows, from
    random frames, before the LM asks them anything (cheap: no prompts, no LM)."""
    params = [*model.visual.parameters(), *model.mlp_AR.parameters(), *probe.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    _, height, width, _ = frames.frames.shape
    grids = [(1, height // processor.patch, width // processor.patch)] * args.vision_batch
    log = []
    for step in range(args.vision_steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 50)
        rows = torch.randint(frames.frames.shape[0], (args.vision_batch,), device=frames.frames.device)
        with torch.autocast(frames.frames.device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = probe(model.encode_vision(processor.patchify(frames.frames[rows]), grids).float(), grids)
        labels = frames.labels[rows]
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if stall is not None:
            stall.tick()
        if step % args.log_every == 0 or step == args.vision_steps - 1:
            row = {"vision_step": step, "frame_loss": round(loss.item(), 4),
                   "frames_named": round(frames_named(logits, labels), 3)}  # fmt: skip
            log.append(row)
            print(json.dumps(row), flush=True)
    return log


def frames_named(logits: Tensor, labels: Tensor) -> float:
    """Of the frames that show any shape, the fraction whose shapes the probe names exactly."""
    shown = labels > 0
    return ((logits > 0) == shown).all(1)[shown.any(1)].float().mean().item()


def turns_matched(logits: Tensor, targets: Tensor, real: Tensor) -> float:
    """Of the grounding turns, the fraction whose frames `MatchProbe` marks exactly right."""
    if not len(targets):
        return 0.0
    return (((logits > 0) == (targets > 0)) | ~real).all(1).float().mean().item()


def make_batch(
    examples: list[Example], frames: FrameStore, processor: KeyeProcessor, device: torch.device
) -> dict[str, Any]:
    """Pack examples into one ragged forward: concatenated tokens, one Segment each."""
    starts = [0, *itertools.accumulate(e.n_tokens for e in examples)][:-1]
    match_targets, match_real = frames.gather_asked(examples)
    input_ids = torch.cat([e.input_ids for e in examples])
    placeholders = np.isin(input_ids.numpy(), [processor.image_token_id, processor.video_token_id])
    return {
        "input_ids": input_ids.to(device, non_blocking=True),
        "visual_rows": host_index(np.flatnonzero(placeholders), device),  # `KeyeVL.embed`: no sync
        "positions": torch.cat([e.positions for e in examples], dim=1).to(device, non_blocking=True),
        "labels": torch.cat([e.labels for e in examples]).to(device, non_blocking=True),
        "segments": [Segment(e.n_tokens) for e in examples],
        "pixel_values": processor.patchify(frames.gather(examples)),
        "frame_labels": frames.gather_labels(examples),
        "grids": [g for e in examples for g in e.grids],
        # the position before each grounding turn's answer, for `MatchProbe`
        "match_rows": torch.tensor(
            [
                start + a - 1
                for e, start in zip(examples, starts, strict=True)
                for a in e.answer_starts[: len(e.asked)]
            ],
            dtype=torch.long,
        ).to(device, non_blocking=True),
        "match_targets": match_targets,
        "match_real": match_real,
    }


def crop_limit(progress: float, longest_s: float, shortest_s: float = 3.0, ramp: float = 0.6) -> float:
    """The curriculum: the longest crop grows from `shortest_s` to `longest_s` (whole windows) over the
    first `ramp` of the run."""
    return shortest_s + (longest_s - shortest_s) * min(1.0, progress / ramp)


# ---- the indexer's KL objective ---------------------------------------------------------------------


class IndexerDistillation:
    """Forward hooks that add, per layer and sequence, KL(dense attention over heads ‖ softmax(I))."""

    def __init__(self, model: KeyeVL, max_segments: int = 1):
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


class StallReport:
    """Prints every thread's stack once no step has ended for `seconds`: a stalled run says where.

    faulthandler's own watchdog, re-armed at every step, so it fires only on a stall (and even when the
    stalled call holds the GIL). Its periodic mode (`repeat=True`) dumped running threads' frames every N s,
    and two H200 runs segfaulted right after one of those dumps."""

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"a stall report needs a positive number of seconds, got {seconds}")
        self.seconds = seconds
        self.tick()

    def tick(self) -> None:
        faulthandler.dump_traceback_later(self.seconds, repeat=False, file=sys.stderr)

    def close(self) -> None:
        faulthandler.cancel_dump_traceback_later()


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


def next_token_targets(labels: Tensor) -> Tensor:
    """Token i predicts label i+1 (segments end in IGNORE, so none predicts across into the next)."""
    targets = torch.full_like(labels, IGNORE)
    targets[:-1] = labels[1:]
    return targets


def answer_accuracy(
    logits: Tensor, targets: Tensor, lengths: list[int], kinds: list[str]
) -> tuple[float, dict[str, float]]:
    """(answer tokens predicted right, {kind: answers predicted entirely right}), greedy, as fractions.

    Per kind because `none` answers are easy: a model that says `none` to everything would look good."""
    mask = targets != IGNORE
    wrong = (logits.argmax(-1) != targets) & mask
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=targets.device),
                                  torch.tensor(lengths, device=targets.device))  # fmt: skip
    wrong_per_answer = torch.zeros(len(lengths), device=targets.device).index_add_(0, seg, wrong.float())
    token_acc = 1.0 - wrong.sum().item() / max(1, int(mask.sum().item()))
    right = (wrong_per_answer == 0).tolist()
    exact = {
        kind: sum(r for r, k in zip(right, kinds, strict=True) if k == kind) / kinds.count(kind)
        for kind in sorted(set(kinds))
    }
    return token_acc, exact


def report_profile(profiler: torch.profiler.profile) -> None:
    profiler.stop()
    table = profiler.key_averages()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(table.table(sort_by=sort, row_limit=15), flush=True)
    print(table.table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
    print(json.dumps({"op_calls_per_step": sum(e.count for e in table) // 5}), flush=True)


def train(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    if device.type == "cuda":
        # Every step has new sequence lengths; cuDNN's attention spent ~9 ms of host time per call on
        # them (H200 profile, 7 calls a step); the flash and memory-efficient kernels take new shapes free.
        torch.backends.cuda.enable_cudnn_sdp(False)
        # The trainer's own host work is launching kernels; a pool of intra-op threads as wide as the
        # machine only competes with the drawing workers for its cores.
        torch.set_num_threads(args.trainer_threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(time_tokens_s=TIME_TOKENS_S)
    config = small_config(tokenizer)
    write_checkpoint_files(out, tokenizer, config)
    processor = KeyeProcessor.from_pretrained(out)
    model = init_weights(KeyeVL(config, attn_impl="dense", moe_impl="all_experts"), seed=args.seed).to(device)
    if args.init:
        load_state(model, args.init)  # continue from an earlier run of this script
    n_params = sum(p.numel() for p in model.parameters())
    distill = IndexerDistillation(model)
    probe = FrameProbe(config.text.hidden_size).to(device)

    seeds = range(args.seed_offset, args.seed_offset + args.videos)
    setup_started = time.time()
    clips = sample_videos(seeds, args.workers, args.data_seconds, args.min_seconds, args.max_seconds)
    sampled_s = time.time() - setup_started
    frames = FrameStore(clips, device)
    stored_s = time.time() - setup_started
    match = MatchProbe(config.text.hidden_size, frames.most_frames).to(device)
    trained = [*model.parameters(), *probe.parameters(), *match.parameters()]
    # fused: one kernel for all ~130 parameters (host time, not GPU time, bounds this model's steps)
    optimizer = torch.optim.AdamW(
        trained, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95), fused=device.type == "cuda"
    )
    feed = ExampleFeed(
        out,
        clips,
        args.draw_workers,
        args.seed,
        turns=args.turns,
        near_miss_p=args.near_miss_p,
        present_p=args.present_p,
    )
    window_s = max(c.end_s - c.start_s for c in clips)  # the longest crop: one whole context window
    feed.prefetch(crop_limit(0.0, window_s, args.crop_start_s), args.caption_p)  # drawn during stage 1
    print(json.dumps({"clips": len(clips), "frames": frames.offsets[-1], "sampled_s": round(sampled_s, 1),
                      "stored_s": round(stored_s, 1)}), flush=True)  # fmt: skip
    stall = StallReport(args.hang_report_s) if args.hang_report_s else None
    vision_log = warm_up_vision(model, probe, frames, processor, args, stall) if args.vision_steps else []
    started = time.time()
    budget_s = args.minutes * 60
    est_steps = args.max_steps
    log: list[dict[str, Any]] = []
    step = examples_seen = 0
    feed_wait_s = 0.0
    sparse = False
    last_save = started
    profiler = torch.profiler.profile() if args.profile else None
    while step < args.max_steps and time.time() - started < budget_s:
        if profiler is not None and step in (10, 15):  # five steps after warm-up: where a step's time goes
            profiler.start() if step == 10 else report_profile(profiler)
            if device.type == "cuda":  # and every host wait for the GPU in them, with its stack
                torch.cuda.set_sync_debug_mode("warn" if step == 10 else "default")
        # Whichever ends the run first (steps or minutes) paces the curriculum and the dense→sparse switch.
        progress = max(step / args.max_steps, (time.time() - started) / budget_s)
        if not sparse and progress > args.dense_fraction:
            model.model.set_impl(attn_impl="reference")  # sparse adaptation for the rest of the run
            sparse = True
        limit = crop_limit(progress, window_s, args.crop_start_s, args.crop_ramp)
        caption_p = args.caption_p * max(0.0, 1.0 - progress / args.crop_ramp)  # captions fade out
        waited = time.time()
        examples = feed.batch(args.batch_tokens, limit, caption_p, args.batch_examples)
        feed_wait_s += time.time() - waited  # the trainer idle for want of examples
        batch = make_batch(examples, frames, processor, device)
        examples_seen += len(examples)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):  # fused SDPA kernels
            visual = model.encode_vision(batch["pixel_values"], batch["grids"])
            embeds = model.embed(batch["input_ids"], visual, batch["visual_rows"])
            hidden = model.model(embeds, batch["positions"], batch["segments"])
            logits = model.logits(hidden)
            frame_logits = probe(visual.float(), batch["grids"]).float()
            match_logits = match(hidden.float(), batch["match_rows"]).float()
        targets = next_token_targets(batch["labels"])
        ce = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE)
        kl = distill.pop()
        frame_loss = F.binary_cross_entropy_with_logits(frame_logits, batch["frame_labels"])
        real = batch["match_real"]
        match_each = F.binary_cross_entropy_with_logits(
            match_logits, batch["match_targets"], reduction="none"
        )
        match_loss = (match_each * real).sum() / real.sum().clamp_min(1)
        loss = ce + args.kl_weight * kl + args.frame_weight * frame_loss + args.match_weight * match_loss
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, est_steps, args.lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        if step % args.log_every == 0:
            elapsed = time.time() - started
            est_steps = min(
                args.max_steps, int((step + 1) / max(1e-6, elapsed) * budget_s)
            )  # cosine over the budget
            token_acc, exact = answer_accuracy(
                logits, targets, [e.n_tokens for e in examples], [e.kind for e in examples]
            )
            frames_right = frames_named(frame_logits, batch["frame_labels"])
            row = {"step": step, "s": round(elapsed, 1), "ce": round(ce.item(), 4), "kl": round(kl.item(), 4),
                   "frame_loss": round(frame_loss.item(), 4), "frames_named": round(frames_right, 3),
                   "match_loss": round(match_loss.item(), 4),
                   "turns_matched": round(turns_matched(match_logits, batch["match_targets"], real), 3),
                   "answer_token_acc": round(token_acc, 3),
                   **{f"{kind}_exact": round(share, 3) for kind, share in exact.items()},
                   "examples": examples_seen, "tokens": int(batch["input_ids"].shape[0]),
                   "feed_wait_s": round(feed_wait_s, 1),
                   "max_crop_s": round(limit, 1), "sparse": sparse}  # fmt: skip
            log.append(row)
            print(json.dumps(row), flush=True)
        if time.time() - last_save > args.save_every_s:  # a run cut short still leaves a checkpoint
            save_checkpoint(model, config, out)
            last_save = time.time()
        step += 1
        if stall is not None:
            stall.tick()
    if stall is not None:
        stall.close()
    if profiler is not None and 10 < step < 16:  # the run ended inside the profiled steps
        profiler.stop()
    if device.type == "cuda":  # the mode is process-wide: a next run in this process (recipe) starts clean
        torch.cuda.set_sync_debug_mode("default")
    feed.close()
    model.model.set_impl(attn_impl="reference", moe_impl="reference")
    save_checkpoint(model.cpu(), config, out)
    summary = {
        "parameters": n_params,
        "steps": step,
        "train_seconds": round(time.time() - started, 1),
        "clips": len(clips),
        "examples_seen": examples_seen,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "final": log[-1] if log else None,
        "args": vars(args),
    }
    (out / "training_log.json").write_text(
        json.dumps({"summary": summary, "vision_log": vision_log, "log": log}, indent=1) + "\n"
    )
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--max-steps", type=int, default=1_000_000)
    p.add_argument("--videos", type=int, default=100_000, help="at most this many videos (seeds)")
    p.add_argument("--data-seconds", type=float, default=120.0, help="time to spend making videos first")
    p.add_argument("--min-seconds", type=float, default=30.0, help="shortest synthetic video")
    p.add_argument("--max-seconds", type=float, default=80.0, help="longest synthetic video")
    p.add_argument("--init", help="start from this checkpoint's weights")
    p.add_argument("--workers", type=int, default=max(1, (mp.cpu_count() or 2) - 1), help="video makers")
    p.add_argument("--draw-workers", type=int, default=max(0, min(6, (mp.cpu_count() or 2) - 3)))
    p.add_argument("--trainer-threads", type=int, default=4, help="the trainer's intra-op threads (CUDA)")
    p.add_argument("--batch-tokens", type=int, default=32768)
    p.add_argument(
        "--batch-examples", type=int, default=24,
        help="at most this many examples per step (64 whole windows: ~0.14 s a step on an H200, "
        "benchmarks/results/training.md)",
    )  # fmt: skip
    p.add_argument("--turns", type=int, default=4, help="queries asked per crop, one per turn")
    p.add_argument(
        "--near-miss-p", type=float, default=0.5,
        help="share of last turns asking an absent shape with the colour or shape of one on screen",
    )  # fmt: skip
    p.add_argument(
        "--present-p", type=float, default=0.0,
        help="share of first turns asking a shape the crop shows (else any of the video's, often `none`)",
    )  # fmt: skip
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--vision-steps", type=int, default=0, help="stage 1: frame-label steps, vision only")
    p.add_argument("--vision-batch", type=int, default=256, help="frames per stage-1 step")
    p.add_argument("--frame-weight", type=float, default=1.0, help="weight of the per-frame label loss")
    p.add_argument("--match-weight", type=float, default=1.0, help="weight of the asked-frames loss")
    p.add_argument("--dense-fraction", type=float, default=0.75)
    p.add_argument("--crop-start-s", type=float, default=3.0, help="longest crop at the start (curriculum)")
    p.add_argument("--crop-ramp", type=float, default=0.6, help="fraction of the run until whole videos")
    p.add_argument("--caption-p", type=float, default=0.5, help="share of caption questions at the start")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every-s", type=float, default=120.0)
    p.add_argument("--profile", action="store_true", help="print where steps 10-14 spend their time")
    p.add_argument(
        "--bf16", action="store_true", help="bf16 autocast (fp32 weights): fused attention kernels"
    )
    p.add_argument(
        "--hang-report-s",
        type=float,
        default=0,
        help="print all stacks once no step has ended for N s (0: off)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seed-offset", type=int,
        help="first video seed (default 1,000,000 + 100,000 × --seed: each run of a line makes new videos; "
        "evaluation sets use seeds below 1,000,000)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.hang_report_s < 0:
        p.error(f"--hang-report-s must be 0 (off) or positive, got {args.hang_report_s}")
    if args.trainer_threads < 1:
        p.error(f"--trainer-threads must be at least 1, got {args.trainer_threads}")
    if args.seed < 0:
        p.error(f"--seed must be 0 or more, got {args.seed}")
    if args.seed_offset is None:
        if args.videos > 100_000:
            p.error(f"--videos {args.videos} would reach the next --seed's videos: give --seed-offset")
        args.seed_offset = 1_000_000 + 100_000 * args.seed
    elif args.seed_offset < 1_000_000:
        p.error(
            f"--seed-offset must be at least 1,000,000 (evaluation sets use the seeds below), got {args.seed_offset}"
        )
    return args


def main() -> None:
    args = parse_args()
    print(json.dumps(train(args)), flush=True)


if __name__ == "__main__":
    main()
