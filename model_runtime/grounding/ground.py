"""Ground natural-language queries in a video: the library path the CLI and the workers share.

`ground_chunk` asks one chunk every query: ONE `VideoInput` for the chunk (frames labelled with
chunk-local seconds, DESIGN §5 "Video input") and one `GenerationRequest` per query, so the
native engine encodes the video prefix once; answers are parsed in chunk-local seconds, bounded by the
chunk, and shifted back to video time. `ground_video` runs a whole video with one of two strategies
(DESIGN §2, spec video-and-eval §3.2):
- `chunked`: every chunk of `plan_chunks` is asked every query; `merge_segments` dedupes the overlaps
  and joins spans cut by a boundary;
- `coarse_to_fine`: one pass over the whole video at the fps that fits one context (`plan_coarse`)
  finds candidates; each candidate window (`refine_windows`) is re-asked at full fps and resolution
  for exact boundaries. A candidate whose window yields nothing keeps its coarse span.
The pieces (`refine_padding`, `refine_queries`, `with_coarse_fallback`) are public so the workers can
run the same steps as separate tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from model_runtime.engine.base import Engine, GenerationRequest, VideoInput
from model_runtime.grounding.confidence import min_confidence as filter_min_confidence
from model_runtime.grounding.confidence import span_confidence
from model_runtime.grounding.merge import ChunkSegment, FinalSegment, merge_segments
from model_runtime.grounding.parsing import find_spans
from model_runtime.grounding.prompts import build_grounding_prompt
from model_runtime.video import (
    Chunk,
    SampledFrames,
    SamplingParams,
    VideoInfo,
    plan_chunks,
    plan_coarse,
    plan_window,
    probe_video,
    sample_chunk,
)

STRATEGIES = ("chunked", "coarse_to_fine")
TokenTexts = Callable[[list[int]], list[str]]  # token ids -> the text of each token, for span confidence


@dataclass
class GroundingStats:
    """What a grounding run cost: filled in place when passed to `ground_chunk` / `ground_video`."""

    chunks: int = 0  # windows shown to the model (coarse + refine windows for coarse_to_fine)
    refine_windows: int = 0
    frames: int = 0
    visual_tokens: int = 0  # planned frames × tokens per frame
    engine_calls: int = 0  # Engine.generate invocations
    requests: int = 0  # GenerationRequests (one per query per chunk)
    prompt_tokens: int = 0  # as reported by the engine, video prefix included for every request
    generated_tokens: int = 0
    decode_s: float = 0.0
    engine_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_texts_of(engine: Engine) -> TokenTexts | None:
    """Per-token strings for engines that can decode ids themselves (the native engine's processor).

    Not part of the Engine interface, so looked up by duck typing; None means span confidence falls
    back to all answer tokens (the openai engine's servers do not return token strings through it).
    """
    decode = getattr(getattr(engine, "processor", None), "decode", None)
    if not callable(decode):
        return None
    return lambda ids: [decode([i]) for i in ids]


def _chunk_video_input(
    frames: SampledFrames | None, chunk: Chunk, source: str | None, params: SamplingParams | None
) -> VideoInput:
    """The chunk as the model sees it: chunk-local one-decimal seconds before each frame."""
    kwargs: dict[str, Any] = params.to_kwargs() if params is not None else {}
    kwargs.update(start_s=chunk.start_s, end_s=chunk.end_s)  # window keys the serving side understands
    if frames is None:  # the engine decodes the window itself from `source` (the openai engine)
        empty = np.zeros((0, chunk.height, chunk.width, 3), dtype=np.uint8)
        return VideoInput(empty, [], source=source, preprocess_kwargs=kwargs)
    local = [max(0.0, round(t - chunk.start_s, 1)) for t in frames.timestamps]
    return VideoInput(frames.frames, local, source=source, preprocess_kwargs=kwargs)


def ground_chunk(
    engine: Engine,
    frames: SampledFrames | None,
    chunk: Chunk,
    queries: list[str],
    *,
    template: str = "default",
    max_new_tokens: int = 64,
    think: bool = False,
    tolerance_s: float = 1.0,
    source: str | None = None,
    params: SamplingParams | None = None,
    token_texts: TokenTexts | None = None,
    stats: GroundingStats | None = None,
) -> list[ChunkSegment]:
    """Every query over one chunk; segments in VIDEO seconds, in query order then answer order.

    `frames=None` with a `source` lets an engine that decodes videos itself (openai) fetch the window.
    `token_texts` (ids -> per-token strings) narrows confidence to the tokens that spell the times;
    by default it comes from the engine when it can decode ids (`token_texts_of`).
    """
    if not queries:
        return []
    token_texts = token_texts if token_texts is not None else token_texts_of(engine)
    duration = chunk.end_s - chunk.start_s
    video = _chunk_video_input(frames, chunk, source, params)
    requests = [
        GenerationRequest(
            prompt=build_grounding_prompt(q, duration, template=template, think=think),
            video=video,  # the same object for every query: the engine shares the encoded prefix
            max_new_tokens=max_new_tokens,
            temperature=0.0,
        )
        for q in queries
    ]
    started = time.perf_counter()
    completions = engine.generate(requests)
    if len(completions) != len(requests):
        raise RuntimeError(
            f"engine {engine.name!r} returned {len(completions)} completions for {len(requests)} requests"
        )
    if stats is not None:
        stats.engine_s += time.perf_counter() - started
        stats.engine_calls += 1
        stats.requests += len(requests)
        stats.prompt_tokens += sum(c.prompt_tokens for c in completions)
        stats.generated_tokens += sum(len(c.token_logprobs) for c in completions)
    segments = []
    for qi, (query, completion) in enumerate(zip(queries, completions, strict=True)):
        pieces = (
            token_texts(completion.token_ids) if token_texts is not None and completion.token_ids else None
        )
        for span in find_spans(completion.text, lo=0.0, hi=duration, tolerance_s=tolerance_s, query=query):
            confidence = span_confidence(completion, span, pieces)
            segments.append(
                ChunkSegment(
                    qi, chunk.start_s + span.start_s, chunk.start_s + span.end_s, confidence, chunk.index
                )
            )
    return segments


def refine_windows(
    candidates: list[FinalSegment],
    info: VideoInfo,
    params: SamplingParams,
    *,
    pad_s: float = 10.0,
    first_index: int = 0,
) -> list[Chunk]:
    """Windows around the candidates (padded, clipped to the video, overlapping ones merged), planned at
    full fps and resolution by `plan_window`; indices count up from `first_index`.

    A window longer than one context is thinned uniformly by `plan_window` (a very long candidate is
    already a coarse answer; there is nothing finer to ask within one context).
    """
    if pad_s < 0:
        raise ValueError(f"pad_s must not be negative, got {pad_s}")
    spans = sorted(
        (max(0.0, c.start_s - pad_s), min(info.duration_s, c.end_s + pad_s))
        for c in candidates
        if c.start_s < info.duration_s
    )
    merged: list[list[float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [
        plan_window(info, params, start, end, index=first_index + i)
        for i, (start, end) in enumerate(merged)
        if end > start
    ]


def refine_padding(coarse_chunks: Sequence[Chunk], pad_s: float = 10.0) -> float:
    """Padding of refine windows: at least `pad_s`, and at least two coarse frame spacings, because the
    coarse pass cannot place a boundary closer than its frame spacing."""
    spacing = max((c.end_s - c.start_s) / max(c.n_frames, 1) for c in coarse_chunks)
    return max(pad_s, 2.0 * spacing)


def refine_queries(window: Chunk, candidates: Sequence[FinalSegment]) -> list[int]:
    """Indices of the queries whose candidates lie inside `window`: the ones to re-ask there."""
    return sorted(
        {c.query_index for c in candidates if window.start_s <= c.start_s and c.end_s <= window.end_s}
    )


def with_coarse_fallback(
    window: Chunk, candidates: Sequence[FinalSegment], answers: list[ChunkSegment], asked: list[int]
) -> list[ChunkSegment]:
    """A refine window's answers with global query indices, plus the coarse candidate of every asked
    query the fine look found nothing for (so a miss at full fps never loses what the coarse pass saw).

    `answers` are `ground_chunk`'s output for the queries `[queries[i] for i in asked]` (local indices).
    """
    out = [replace(a, query_index=asked[a.query_index]) for a in answers]
    answered = {a.query_index for a in out}
    for c in candidates:
        inside = window.start_s <= c.start_s and c.end_s <= window.end_s
        if inside and c.query_index in asked and c.query_index not in answered:
            out.append(ChunkSegment(c.query_index, c.start_s, c.end_s, c.confidence, min(c.chunk_ids)))
    return out


def _sample(source: str, chunk: Chunk, backend: str, stats: GroundingStats | None) -> SampledFrames:
    started = time.perf_counter()
    frames = sample_chunk(source, chunk, backend=backend)
    if stats is not None:
        stats.decode_s += time.perf_counter() - started
        stats.chunks += 1
        stats.frames += len(frames.timestamps)
        stats.visual_tokens += len(frames.timestamps) * chunk.tokens_per_frame
    return frames


def ground_video(
    source: str,
    queries: list[str],
    engine: Engine,
    *,
    strategy: str = "chunked",
    params: SamplingParams | None = None,
    overlap_s: float = 4.0,
    template: str = "default",
    think: bool = False,
    max_new_tokens: int = 64,
    top_k: int = 5,
    iou_threshold: float = 0.5,
    min_confidence: float = 0.0,
    refine_top_k: int = 3,
    pad_s: float = 10.0,
    backend: str = "pyav",
    info: VideoInfo | None = None,
    decode_frames: bool = True,
    token_texts: TokenTexts | None = None,
    stats: GroundingStats | None = None,
    raw: list[ChunkSegment] | None = None,
) -> list[FinalSegment]:
    """Top-k segments per query (ranked, video seconds) for `source` with the chosen strategy.

    `decode_frames=False` is for engines that decode the video themselves (openai): each request then
    carries the source and the chunk window instead of frames. `raw`, when given, receives every chunk's
    answers before merging (chunked strategy): what the per-window diagnosis of a model counts.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")
    queries = [" ".join(q.split()) for q in queries]
    if not queries or not all(queries):
        raise ValueError("at least one non-empty query is required")
    params = params if params is not None else SamplingParams()
    info = info if info is not None else probe_video(source)
    stats = stats if stats is not None else GroundingStats()

    def ask(chunk: Chunk, asked: list[str]) -> list[ChunkSegment]:
        if decode_frames:
            frames: SampledFrames | None = _sample(source, chunk, backend, stats)
        else:
            frames = None
            stats.chunks += 1
        return ground_chunk(
            engine, frames, chunk, asked, template=template, max_new_tokens=max_new_tokens, think=think,
            source=source, params=params, token_texts=token_texts, stats=stats,
        )  # fmt: skip

    if strategy == "chunked":
        plan = plan_chunks(info, params, overlap_s=overlap_s)
        segments = [s for chunk in plan.chunks for s in ask(chunk, queries)]
        if raw is not None:
            raw.extend(segments)
        finals = merge_segments(
            segments, queries, iou_threshold=iou_threshold, top_k=top_k, chunks=plan.chunks
        )
        return filter_min_confidence(finals, min_confidence)

    coarse = plan_coarse(info, params)
    coarse_segments = [s for chunk in coarse.chunks for s in ask(chunk, queries)]
    candidates = merge_segments(coarse_segments, queries, iou_threshold=iou_threshold, top_k=refine_top_k)
    windows = refine_windows(
        candidates, info, params, pad_s=refine_padding(coarse.chunks, pad_s), first_index=len(coarse.chunks)
    )
    stats.refine_windows += len(windows)
    refined: list[ChunkSegment] = []
    for window in windows:
        asked = refine_queries(window, candidates)
        answers = ask(window, [queries[i] for i in asked])
        refined += with_coarse_fallback(window, candidates, answers, asked)
    finals = merge_segments(refined, queries, iou_threshold=iou_threshold, top_k=top_k, chunks=windows)
    return filter_min_confidence(finals, min_confidence)


def finals_by_query(finals: Sequence[FinalSegment], n_queries: int) -> list[list[FinalSegment]]:
    """Final segments grouped per query index (each list in rank order)."""
    grouped: list[list[FinalSegment]] = [[] for _ in range(n_queries)]
    for f in sorted(finals, key=lambda f: (f.query_index, f.rank)):
        grouped[f.query_index].append(f)
    return grouped
