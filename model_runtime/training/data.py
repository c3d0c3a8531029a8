"""Training data for the small Keye model: synthetic videos through the inference path.

Each video is written by the synthetic generator (`timemark synth`'s look), probed, planned and
decoded by `model_runtime.video` once (`sample_clips`). Examples are then drawn from the decoded
frames many times over (`draw_example`): a contiguous run of frames (a crop, or the whole chunk) is
labelled with crop-local one-decimal seconds, exactly as the service labels a chunk that starts at the
crop's first frame; a query about one shape is asked with the grounding prompt template and encoded by
the checkpoint's processor. Every shape that shows (events and distractors alike) can be asked about,
and so can shapes that never show; the answer is what the grounding parser reads: `[first, last]`, the
timestamps printed before the first and last frames that show the shape, or `none` when no frame of
the crop shows it.

Crops are the curriculum: short clips (few frames to search, short prompts) early in a run, whole
chunks later. Examples carry token ids and a frame range, not pixels: the trainer keeps all frames on
its device and patchifies there.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model_runtime.engine.base import VideoInput
from model_runtime.grounding.prompts import build_grounding_prompt
from model_runtime.grounding.synth import event_query, near_miss
from model_runtime.processor import KeyeProcessor
from model_runtime.video import (
    COLORS,
    SHAPES,
    SamplingParams,
    make_event,
    make_synthetic_video,
    plan_chunks,
    probe_video,
    random_events,
    sample_chunk,
)

# The small model's context is a short window: 16 frames at 2 fps (8 s), each 84×140 pixels = 15 tokens
# (min = max pixels: the frame size never shrinks to fit more frames), 240 visual tokens. The service's
# chunk planner cuts any longer video into such windows, overlapping by half, and merges their answers
# (`grounding.merge`), exactly as it cuts an hour for the 30B model's 100K-token context. A short
# context is what a 3 M-parameter model learns to ground in minutes of GPU time. Stored in the
# checkpoint's preprocessor config, whence the service takes its default sampling.
SMALL_SAMPLING = SamplingParams(
    fps=2.0, min_pixels=15 * 784, max_pixels=15 * 784, video_total_pixels=16 * 15 * 784, min_frames=2
)
IGNORE = -100  # label of tokens the loss skips (the prompt)
# A training-only question: which shapes a (short) clip shows. Its answers name every shape drawn in the
# frames, which teaches the vision tower colours and shapes and the LM their words far faster than the
# two time tokens of a grounding answer can; grounding then binds a query's words to those frames.
CAPTION_PROMPT = "Which coloured shapes appear in this clip? List them, or answer none."
ALL_QUERIES = {
    f"{color} {shape}": event_query(make_event(shape, color, 0.0, 0.0))
    for color in COLORS
    for shape in SHAPES
}
QUERY_INDEX = {label: i for i, label in enumerate(ALL_QUERIES)}  # the column of each in `frame_labels`


@dataclass
class Clip:
    """One decoded chunk of a synthetic video and what shows in it."""

    frames: np.ndarray  # [F, H, W, 3] uint8, as sampled for the model
    times: list[float]  # seconds of each frame in the video
    start_s: float  # the chunk's span in the video
    end_s: float
    shown: dict[str, tuple[float, float]]  # label ("red circle") → [start, end) s, every shape drawn

    def without_pixels(self) -> tuple:
        """What a worker that only tokenises needs (see `from_meta`): no pixels, cheap to pickle."""
        return (self.frames.shape, self.times, self.start_s, self.end_s, self.shown)

    @classmethod
    def from_meta(cls, meta: tuple) -> Clip:
        """A clip whose frames are a zero-stride stand-in of the right shape (tokens only need the shape)."""
        shape, times, start_s, end_s, shown = meta
        return cls(np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), shape), times, start_s, end_s, shown)


@dataclass
class Example:
    """One (crop, query, answer) turn, tokenised; `labels` marks the answer tokens (and `<|im_end|>`)."""

    input_ids: Tensor  # [N] int64
    positions: Tensor  # [3, N] int64
    labels: Tensor  # [N] int64, IGNORE outside the answer
    grids: list[tuple[int, int, int]]
    clip: int  # which clip the frames come from, and which of its frames: [lo, hi)
    lo: int
    hi: int
    kind: str = "ground"  # a span to find; "absent" (the answer is `none`) or "caption"
    answer_starts: list[int] = field(default_factory=list)  # each turn's first answer token
    asked: list[int] = field(default_factory=list)  # each grounding turn's shape, an `ALL_QUERIES` index

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


def sample_clips(
    seed: int,
    *,
    min_s: float = 30.0,
    max_s: float = 80.0,
    source_fps: float = 10.0,
    params: SamplingParams = SMALL_SAMPLING,
) -> list[Clip]:
    """One random synthetic video (random length, 1–3 events, 0–3 distractors, 0–2 cuts) → its chunks.

    Written at `source_fps` like `timemark synth`'s videos: sampling 2 fps from it gives the timestamps
    the service prints for such videos (0.0, 0.4, 1.0, … where frames fall), which the model must copy.
    """
    rng = np.random.default_rng(seed)
    duration = float(rng.uniform(min_s, max_s))
    events = random_events(
        rng, duration, n_events=int(rng.integers(1, 4)), min_len_s=max(1.0, 0.05 * duration)
    )
    cuts = sorted(float(c) for c in rng.uniform(1.0, duration - 1.0, size=int(rng.integers(0, 3))))
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "v.mp4")
        truth = make_synthetic_video(
            path, duration_s=duration, fps=source_fps, width=160, height=96, events=events,
            seed=int(rng.integers(2**31)),  # not `seed`: the same stream would give distractors the events' times
            n_distractors=int(rng.integers(0, 4)), scene_cuts_s=cuts,
        )  # fmt: skip
        shown = {e.label: (e.start_s, e.end_s) for e in [*truth.events, *truth.distractors]}
        clips = []
        for chunk in plan_chunks(probe_video(path), params).chunks:
            frames = sample_chunk(path, chunk)
            clips.append(Clip(frames.frames, list(frames.timestamps), chunk.start_s, chunk.end_s, shown))
        return clips


def draw_example(
    processor: KeyeProcessor,
    clips: list[Clip],
    rng: np.random.Generator,
    *,
    max_crop_s: float,
    whole_chunk_p: float = 0.25,
    absent_p: float = 0.15,
    overlap_p: float = 0.85,
    caption_p: float = 0.0,
    turns: int = 1,
    near_miss_p: float = 0.0,
    present_p: float = 0.0,
) -> Example:
    """A random query about a random clip, over a crop (the whole chunk with `whole_chunk_p`).

    A query about a shape that shows gets, with `overlap_p`, a crop that contains some of its frames,
    so short crops early in a run are mostly spans to find rather than `none`; otherwise the crop is
    anywhere (and may miss it: then the answer is `none`, as for absent shapes, asked with `absent_p`).
    With `caption_p` the question is `CAPTION_PROMPT` over a crop of at most 4 frames instead.
    `turns` > 1 asks up to that many queries about the same crop, one per turn, the first exactly as the
    service asks: the video costs ~300 tokens and a turn ~30, so each step learns from several answers
    per video instead of one. Extra turns ask the other shapes the crop shows, then one it does not: with
    `near_miss_p` one that shares a colour or a shape with a shape the crop shows ("red square" beside a red
    circle), so that answering by colour alone, by shape alone or with whatever is on screen costs loss.
    With `present_p` the first turn asks a shape the crop shows (when it shows one): a whole window
    asked about a random shape of its video mostly answers `none`, and a model unsure of the binding
    learns that `none` is the cheap guess.
    """
    if rng.random() < caption_p:
        return draw_caption(processor, clips, rng)
    index = int(rng.integers(len(clips)))
    clip = clips[index]
    n = len(clip.times)
    absent = [label for label in ALL_QUERIES if label not in clip.shown]
    if rng.random() < absent_p or not clip.shown:
        label = absent[int(rng.integers(len(absent)))]
        shown_at: list[int] = []
    else:
        label = list(clip.shown)[int(rng.integers(len(clip.shown)))]
        start, end = clip.shown[label]
        shown_at = [i for i, t in enumerate(clip.times) if start <= t < end]
    per_s = n / max(1e-6, clip.end_s - clip.start_s)
    if rng.random() < whole_chunk_p or max_crop_s * per_s >= n:
        lo, hi, start_s, end_s = 0, n, clip.start_s, clip.end_s
    else:
        shortest = min(n, 2)
        longest = min(n, max(shortest, round(max_crop_s * per_s)))
        length = int(rng.integers(shortest, longest + 1))
        if shown_at and rng.random() < overlap_p:  # a crop holding one of the shape's frames
            j = shown_at[int(rng.integers(len(shown_at)))]
            lo = int(rng.integers(max(0, j - length + 1), min(j, n - length) + 1))
        else:
            lo = int(rng.integers(0, n - length + 1))
        hi = lo + length
        start_s = clip.times[lo]
        end_s = clip.times[hi] if hi < n else clip.end_s
    times = clip.times[lo:hi]
    local = [max(0.0, round(t - start_s, 1)) for t in times]

    def spans_of(label: str) -> list[tuple[float, float]]:
        return visible_span(times, local, *clip.shown[label]) if label in clip.shown else []

    if present_p > 0 and rng.random() < present_p:
        in_crop = [x for x in clip.shown if spans_of(x)]
        if in_crop:
            label = in_crop[int(rng.integers(len(in_crop)))]
    labels = [label]
    if turns > 1:
        visible = [x for x in clip.shown if x != label and spans_of(x)]
        rng.shuffle(visible)
        labels += visible[: turns - 2]
        others = [x for x in ALL_QUERIES if x not in labels and not spans_of(x)]
        on_screen = [x for x in clip.shown if spans_of(x)]
        near = [x for x in others if near_miss(x, on_screen)]
        pool = near if near_miss_p > 0 and near and rng.random() < near_miss_p else others
        labels.append(pool[int(rng.integers(len(pool)))])
    video = VideoInput(clip.frames[lo:hi], local)
    prompts = [build_grounding_prompt(ALL_QUERIES[x], end_s - start_s) for x in labels]
    answers = [answer_text(spans_of(x)) for x in labels]
    example = encode_turns(processor, video, prompts, answers, index, lo, hi)
    example.kind = "ground" if spans_of(label) else "absent"  # the first turn's, which the service asks
    example.asked = [QUERY_INDEX[x] for x in labels]
    return example


def draw_caption(processor: KeyeProcessor, clips: list[Clip], rng: np.random.Generator) -> Example:
    """`CAPTION_PROMPT` over 1–4 consecutive frames; the answer lists the shapes they show, sorted."""
    index = int(rng.integers(len(clips)))
    clip = clips[index]
    n = len(clip.times)
    length = int(rng.integers(1, min(4, n) + 1))
    lo = int(rng.integers(0, n - length + 1))
    hi = lo + length
    times = clip.times[lo:hi]
    labels = sorted(
        label for label, (start, end) in clip.shown.items() if any(start <= t < end for t in times)
    )
    local = [max(0.0, round(t - times[0], 1)) for t in times]
    video = VideoInput(clip.frames[lo:hi], local)
    example = encode_turn(processor, video, CAPTION_PROMPT, ", ".join(labels) or "none", index, lo, hi)
    example.kind = "caption"
    return example


def encode_turn(
    processor: KeyeProcessor, video: VideoInput, prompt: str, answer: str, clip: int, lo: int, hi: int
) -> Example:
    """Prompt as at inference (+ generation prompt), then the answer and `<|im_end|>` as targets."""
    return encode_turns(processor, video, [prompt], [answer], clip, lo, hi)


def encode_turns(
    processor: KeyeProcessor,
    video: VideoInput,
    prompts: list[str],
    answers: list[str],
    clip: int,
    lo: int,
    hi: int,
) -> Example:
    """A conversation about one video: the first user turn holds it; every answer (+ `<|im_end|>`) is a
    target. Each prefix is checked to tokenise the same alone as inside the whole conversation."""
    messages: list[dict] = []
    spans, prefixes = [], []
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        parts = [{"type": "video", "video": video}] if i == 0 else []
        messages.append({"role": "user", "content": [*parts, {"type": "text", "text": prompt}]})
        asked = processor.encode_messages(messages, with_pixels=False)  # ends "<|im_start|>assistant\n"
        n_prompt = asked.input_ids.shape[0]
        spans.append((n_prompt, n_prompt + len(processor.tokenizer.encode(answer + "<|im_end|>"))))
        prefixes.append(asked.input_ids)
        messages.append({"role": "assistant", "content": answer})
    full = processor.encode_messages(messages, add_generation_prompt=False, with_pixels=False)
    if not all(torch.equal(full.input_ids[: len(ids)], ids) for ids in prefixes):
        raise RuntimeError("the prompt does not tokenise the same with and without the answers")
    labels = torch.full_like(full.input_ids, IGNORE)
    for start, end in spans:
        labels[start:end] = full.input_ids[start:end]
    return Example(
        full.input_ids, full.positions, labels, full.grids, clip, lo, hi, answer_starts=[a for a, _ in spans]
    )


def frame_labels(clip: Clip) -> np.ndarray:
    """[F, len(ALL_QUERIES)] 0/1: which shapes each frame shows (the vision tower's auxiliary target)."""
    out = np.zeros((len(clip.times), len(QUERY_INDEX)), np.float32)
    for label, (start, end) in clip.shown.items():
        out[[i for i, t in enumerate(clip.times) if start <= t < end], QUERY_INDEX[label]] = 1.0
    return out


class FrameStore:
    """Every clip's frames (uint8) and frame labels in tensors on the training device; patchified per
    batch there."""

    def __init__(self, clips: list[Clip], device: torch.device):
        self.offsets = np.cumsum([0] + [len(c.times) for c in clips]).tolist()
        self.most_frames = max(len(c.times) for c in clips)  # one context window's frames
        self.frames = torch.from_numpy(np.concatenate([c.frames for c in clips])).to(device)
        self.labels = torch.from_numpy(np.concatenate([frame_labels(c) for c in clips])).to(device)

    def gather(self, examples: list[Example]) -> Tensor:
        """The examples' frames, in order: [ΣF, H, W, 3] uint8."""
        return torch.cat([self.frames[self._rows(e)] for e in examples])

    def gather_labels(self, examples: list[Example]) -> Tensor:
        """The examples' frame labels, in the order of `gather`: [ΣF, len(ALL_QUERIES)]."""
        return torch.cat([self.labels[self._rows(e)] for e in examples])

    def gather_asked(self, examples: list[Example]) -> tuple[Tensor, Tensor]:
        """Per grounding turn (example by example), which frames of its crop show the shape asked:
        targets [turns, W] 0/1 and the mask of the W = `most_frames` slots the crop really has."""
        width = self.most_frames
        rows, cols, real = [], [], []
        for e in examples:
            first, n = self.offsets[e.clip] + e.lo, e.hi - e.lo
            for label in e.asked:
                rows.append([first + min(f, n - 1) for f in range(width)])
                cols.append([label] * width)
                real.append([f < n for f in range(width)])
        device = self.labels.device
        if not rows:
            return self.labels.new_zeros(0, width), torch.zeros(0, width, dtype=torch.bool, device=device)
        # made on the host and sent without a stream sync (a list turned into a GPU tensor waits)
        rows_t, cols_t, real_t = (torch.tensor(x).to(device, non_blocking=True) for x in (rows, cols, real))
        return self.labels[rows_t, cols_t], real_t

    def _rows(self, e: Example) -> slice:
        return slice(self.offsets[e.clip] + e.lo, self.offsets[e.clip] + e.hi)
