"""Training examples for the small Keye model: synthetic videos through the inference path.

Every example is made the way the service makes a prompt: the video is written by the synthetic
generator (`timemark synth`'s distribution), probed, planned and decoded by `model_runtime.video`,
labelled with chunk-local one-decimal seconds, asked with the grounding prompt template, and encoded by
the checkpoint's processor. The answer is what the grounding parser reads: `[first, last]` — the
timestamps printed before the first and last frames that show the shape — or `none` when the shape
never shows in the chunk (queries about absent shapes teach the model to say so).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model_runtime.engine.base import VideoInput
from model_runtime.grounding.prompts import build_grounding_prompt
from model_runtime.grounding.synth import event_query
from model_runtime.processor import KeyeProcessor
from model_runtime.video import (
    COLORS,
    SHAPES,
    SamplingParams,
    SyntheticTruth,
    make_event,
    make_synthetic_video,
    plan_chunks,
    probe_video,
    random_events,
    sample_chunk,
)

# Frames of the synthetic videos (160×96) become 84×140 pixels = 15 tokens; 2 fps; an 80 s clip fits
# one context of 4096 visual tokens. Stored in the checkpoint's preprocessor config as its defaults.
SMALL_SAMPLING = SamplingParams(
    fps=2.0, min_pixels=8 * 784, max_pixels=15 * 784, video_total_pixels=4096 * 784, min_frames=2
)
IGNORE = -100  # label of tokens the loss skips (the prompt)


@dataclass
class Example:
    """One (video chunk, query, answer) turn, tokenised; `labels` marks the answer tokens.

    Frames stay uint8 and are shared by the turns of one chunk (patchify at batch time): float patches
    of every turn would take ~17 MB each.
    """

    input_ids: Tensor  # [N] int64
    positions: Tensor  # [3, N] int64
    frames: np.ndarray  # [F, H, W, 3] uint8
    grids: list[tuple[int, int, int]]
    labels: Tensor  # [N] int64, IGNORE outside the answer (and its <|im_end|>)

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def answer_text(spans: list[tuple[float, float]]) -> str:
    """The strict answer the default template asks for: `[a, b]`, `[[a, b], [c, d]]` or `none`."""
    if not spans:
        return "none"
    if len(spans) == 1:
        return f"[{spans[0][0]:.1f}, {spans[0][1]:.1f}]"
    return "[" + ", ".join(f"[{a:.1f}, {b:.1f}]" for a, b in spans) + "]"


def visible_span(
    times: list[float], local: list[float], start_s: float, end_s: float
) -> list[tuple[float, float]]:
    """[first, last] local label of the frames whose true time lies in [start_s, end_s); [] if none."""
    shown = [loc for t, loc in zip(times, local, strict=True) if start_s <= t < end_s]
    return [(shown[0], shown[-1])] if shown else []


def encode_turn(processor: KeyeProcessor, video: VideoInput, prompt: str, answer: str) -> Example:
    """Prompt as at inference (+ generation prompt), then the answer and `<|im_end|>` as targets."""
    user = {"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": prompt}]}
    asked = processor.encode_messages([user])  # ends with "<|im_start|>assistant\n"
    full = processor.encode_messages(
        [user, {"role": "assistant", "content": answer}], add_generation_prompt=False
    )
    n_prompt = asked.input_ids.shape[0]
    if not torch.equal(full.input_ids[:n_prompt], asked.input_ids):
        raise RuntimeError("the prompt does not tokenise the same with and without the answer")
    end = n_prompt + len(processor.tokenizer.encode(answer + "<|im_end|>"))
    labels = torch.full_like(full.input_ids, IGNORE)
    labels[n_prompt:end] = full.input_ids[n_prompt:end]
    return Example(full.input_ids, full.positions, video.frames, full.grids, labels)


def video_examples(
    processor: KeyeProcessor,
    path: str,
    truth: SyntheticTruth,
    rng: np.random.Generator,
    params: SamplingParams = SMALL_SAMPLING,
    n_negatives: int = 1,
) -> list[Example]:
    """Every event's query (and `n_negatives` absent shapes) over every chunk of the video."""
    info = probe_video(path)
    present = {(e.color, e.shape) for e in [*truth.events, *truth.distractors]}
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    examples = []
    for chunk in plan_chunks(info, params).chunks:
        frames = sample_chunk(path, chunk)
        local = [max(0.0, round(t - chunk.start_s, 1)) for t in frames.timestamps]
        video = VideoInput(frames.frames, local)
        duration = chunk.end_s - chunk.start_s
        asked = [
            (event_query(e), visible_span(frames.timestamps, local, e.start_s, e.end_s)) for e in truth.events
        ]
        for i in rng.choice(len(absent), size=min(n_negatives, len(absent)), replace=False):
            color, shape = absent[int(i)]
            asked.append((event_query(make_event(shape, color, 0.0, 0.0)), []))
        for query, spans in asked:
            prompt = build_grounding_prompt(query, duration)
            examples.append(encode_turn(processor, video, prompt, answer_text(spans)))
    return examples


def synthetic_examples(
    processor: KeyeProcessor, seed: int, *, min_s: float = 30.0, max_s: float = 80.0
) -> list[Example]:
    """One random synthetic video (the `timemark synth` look, random length and event count) → examples."""
    rng = np.random.default_rng(seed)
    duration = float(rng.uniform(min_s, max_s))
    n_events = int(rng.integers(1, 4))
    events = random_events(rng, duration, n_events=n_events, min_len_s=max(1.0, 0.05 * duration))
    cuts = sorted(float(c) for c in rng.uniform(1.0, duration - 1.0, size=int(rng.integers(0, 3))))
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "v.mp4")
        truth = make_synthetic_video(
            path, duration_s=duration, fps=10.0, width=160, height=96, events=events, seed=seed,
            n_distractors=int(rng.integers(0, 3)), scene_cuts_s=cuts,
        )  # fmt: skip
        return video_examples(processor, path, truth, rng)
