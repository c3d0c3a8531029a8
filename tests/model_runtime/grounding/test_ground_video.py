"""An hour of synthetic video through `chunked` and `coarse_to_fine`.

Two engines. The tiny random-weight Keye checkpoint through `NativeEngine` proves the plumbing with the
real runtime (chunk counts, one engine call per chunk, one request per query sharing one VideoInput,
well-formed output); its answers are noise, so nothing is asserted about accuracy. The colour-detecting
baseline engine (it really looks at the frames it is given) proves the time bookkeeping:
chunk-local timestamps in, video-time segments out, overlapping for real with the known events.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime.checkpoint import init_checkpoint
from model_runtime.engine.base import Completion, Engine, GenerationRequest
from model_runtime.engine.native import NativeEngine
from model_runtime.engine.openai_engine import OpenAIEngine
from model_runtime.grounding import GroundingStats, ground_chunk, ground_video, refine_windows
from model_runtime.grounding.annotations import load_annotations
from model_runtime.grounding.color_engine import ColorBaselineEngine
from model_runtime.grounding.evaluate import score_predictions
from model_runtime.grounding.ground import (
    refine_padding,
    refine_queries,
    token_texts_of,
    with_coarse_fallback,
)
from model_runtime.grounding.merge import ChunkSegment, FinalSegment
from model_runtime.grounding.metrics import temporal_iou
from model_runtime.grounding.predict import predict_samples
from model_runtime.grounding.synth import write_synthetic_set
from model_runtime.video import (
    Chunk,
    SamplingParams,
    SyntheticTruth,
    make_event,
    make_synthetic_video,
    plan_chunks,
    probe_video,
    sample_chunk,
)

HOUR = 3600.0
# 1 frame / 20 s, 4 tokens per 56x56 frame, 40 frames per context: an hour is 5 chunks, coarse is 1.
PARAMS = SamplingParams(fps=0.05, min_pixels=4 * 784, max_pixels=4 * 784, video_total_pixels=40 * 4 * 784)
OVERLAP_S = 40.0


@pytest.fixture(scope="module")
def hour_video(tmp_path_factory: pytest.TempPathFactory) -> SyntheticTruth:
    path = tmp_path_factory.mktemp("hour") / "hour.mp4"
    events = [make_event("circle", "red", 700.0, 790.0), make_event("square", "blue", 2010.0, 2130.0)]
    # 1 fps source at 56x56, no distractors (the colour engine must not see a second red thing).
    return make_synthetic_video(
        path, duration_s=HOUR, fps=1.0, width=56, height=56, events=events, seed=3, n_distractors=0,
        gop=60, bframes=0, barcode=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def native_engine(tmp_path_factory: pytest.TempPathFactory) -> NativeEngine:
    torch.manual_seed(0)
    ckpt = init_checkpoint(tmp_path_factory.mktemp("ckpt"), size="tiny", seed=0)
    engine = NativeEngine(ckpt)
    yield engine
    engine.close()


class RecordingEngine:
    """Passes requests to a real engine and keeps them, to check what grounding asked."""

    def __init__(self, inner: Engine) -> None:
        self.inner, self.name, self.batches = inner, inner.name, []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        self.batches.append(list(requests))
        return self.inner.generate(requests)

    def close(self) -> None:
        self.inner.close()


def _check_well_formed(finals: list[FinalSegment], queries: list[str], top_k: int) -> None:
    for qi in range(len(queries)):
        mine = [f for f in finals if f.query_index == qi]
        assert [f.rank for f in mine] == list(range(1, len(mine) + 1)) and len(mine) <= top_k
        assert all(f.query == queries[qi] for f in mine)
        assert [f.confidence for f in mine] == sorted((f.confidence for f in mine), reverse=True)
    for f in finals:
        assert 0.0 <= f.start_s <= f.end_s <= HOUR and 0.0 <= f.confidence <= 1.0 and f.chunk_ids


def test_native_engine_chunked_plumbing(hour_video: SyntheticTruth, native_engine: NativeEngine) -> None:
    queries = ["When does the red circle appear?", "When does the blue square appear?"]
    engine, stats = RecordingEngine(native_engine), GroundingStats()
    finals = ground_video(
        hour_video.path, queries, engine, strategy="chunked", params=PARAMS, overlap_s=OVERLAP_S,
        max_new_tokens=8, stats=stats,
    )  # fmt: skip
    plan = plan_chunks(probe_video(hour_video.path), PARAMS, overlap_s=OVERLAP_S)
    assert len(plan.chunks) == 5
    assert stats.chunks == stats.engine_calls == len(engine.batches) == 5
    assert stats.requests == 10 and stats.frames == sum(c.n_frames for c in plan.chunks)
    assert 0 < stats.generated_tokens <= 10 * 8 and stats.prompt_tokens > stats.visual_tokens
    for batch, chunk in zip(engine.batches, plan.chunks, strict=True):
        assert len(batch) == 2 and batch[0].video is batch[1].video  # one VideoInput per chunk
        local = list(batch[0].video.timestamps)
        assert local[0] == 0.0 and local[-1] <= chunk.end_s - chunk.start_s
        assert all(q.split("?")[0] in r.prompt for q, r in zip(queries, batch, strict=True))
    _check_well_formed(finals, queries, 5)


def test_native_token_texts_spell_the_completion(native_engine: NativeEngine) -> None:
    texts = token_texts_of(native_engine)
    assert texts is not None and token_texts_of(ColorBaselineEngine()) is None
    (completion,) = native_engine.generate([GenerationRequest("Say 12.5 - 30 seconds.", max_new_tokens=12)])
    assert "".join(texts(completion.token_ids)) == completion.text


def test_native_engine_coarse_to_fine_plumbing(
    hour_video: SyntheticTruth, native_engine: NativeEngine
) -> None:
    queries = ["red circle"]
    stats = GroundingStats()
    finals = ground_video(
        hour_video.path, queries, native_engine, strategy="coarse_to_fine", params=PARAMS, max_new_tokens=8,
        stats=stats,
    )  # fmt: skip
    # One coarse pass over the whole hour, then one window per candidate the noise produced.
    assert stats.chunks == 1 + stats.refine_windows and stats.engine_calls == stats.chunks
    assert stats.frames >= 40
    _check_well_formed(finals, queries, 5)


@pytest.mark.parametrize("strategy", ["chunked", "coarse_to_fine"])
def test_segments_land_on_the_events(hour_video: SyntheticTruth, strategy: str) -> None:
    queries = [f"{e.label}" for e in hour_video.events]
    engine, stats = RecordingEngine(ColorBaselineEngine()), GroundingStats()
    finals = ground_video(
        hour_video.path, queries, engine, strategy=strategy, params=PARAMS, overlap_s=OVERLAP_S, stats=stats
    )
    _check_well_formed(finals, queries, 5)
    for qi, event in enumerate(hour_video.events):
        top = next(f for f in finals if f.query_index == qi and f.rank == 1)
        # Frames are 20 s apart: each boundary may be off by up to one spacing.
        assert temporal_iou((top.start_s, top.end_s), (event.start_s, event.end_s)) >= 0.6, (top, event)
    if strategy == "coarse_to_fine":
        assert stats.refine_windows == 2 and stats.chunks == 3
        # Final answers come from the refine windows (indices after the single coarse chunk).
        assert all(min(f.chunk_ids) >= 1 for f in finals if f.rank == 1)
    else:
        assert stats.chunks == 5


def test_predict_and_score_a_synthetic_set(tmp_path: Path) -> None:
    path = write_synthetic_set(
        tmp_path,
        count=2,
        seed=2,
        duration_s=40.0,
        fps=4.0,
        width=64,
        height=48,
        min_event_s=8.0,
        distractors=0,
    )
    samples, _ = load_annotations(path)
    for video in {s.video for s in samples}:  # the colour engine tells events apart by colour only
        colors = [s.query.split()[3] for s in samples if s.video == video]
        assert len(set(colors)) == len(colors)
    params = SamplingParams(fps=2.0, min_pixels=4 * 784, max_pixels=4 * 784, video_total_pixels=40 * 4 * 784)
    stats = GroundingStats()
    predictions = predict_samples(samples, tmp_path, ColorBaselineEngine(), params=params, stats=stats)
    assert [(p.video, p.query) for p in predictions] == [(s.video, s.query) for s in samples]
    report = score_predictions(samples, predictions)
    # 0.5 s between frames: boundaries are off by at most one spacing on 8-13 s events.
    assert report.scores.miou >= 0.8 and report.scores.recall[0.7] == 1.0, report.to_dict(details=True)
    assert stats.engine_calls == stats.chunks >= 2


def test_ground_chunk_maps_local_answers_to_video_time(hour_video: SyntheticTruth) -> None:
    info = probe_video(hour_video.path)
    chunk = plan_chunks(info, PARAMS, overlap_s=OVERLAP_S).chunks[2]  # starts well after 0
    frames = sample_chunk(hour_video.path, chunk)
    engine = RecordingEngine(ColorBaselineEngine())
    (seg,) = ground_chunk(engine, frames, chunk, ["blue square"])
    (request,) = engine.batches[0]
    assert request.video.timestamps[0] == 0.0 and "This video clip is" in request.prompt
    assert request.video.preprocess_kwargs["start_s"] == chunk.start_s
    assert chunk.start_s <= seg.start_s < seg.end_s <= chunk.end_s and seg.chunk_index == 2
    assert temporal_iou((seg.start_s, seg.end_s), (2010.0, 2130.0)) >= 0.6
    assert seg.confidence == pytest.approx(np.exp(-0.05))


@pytest.fixture(scope="module")
def color_server_url() -> Iterator[str]:
    """E's OpenAI-compatible server (real `create_app`) in front of the colour baseline, on a free port."""
    import uvicorn

    from model_runtime.engine.server import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ColorBaselineEngine(), model_name="color"),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the model server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("strategy", ["chunked", "coarse_to_fine"])
def test_openai_engine_through_a_real_server(
    hour_video: SyntheticTruth, color_server_url: str, strategy: str
) -> None:
    # The server decodes each chunk window itself (source + start_s/end_s), so no frames travel.
    engine = OpenAIEngine(color_server_url, "color")
    stats = GroundingStats()
    queries = [e.label for e in hour_video.events]
    finals = ground_video(
        hour_video.path, queries, engine, strategy=strategy, params=PARAMS, overlap_s=OVERLAP_S,
        decode_frames=False, stats=stats,
    )  # fmt: skip
    engine.close()
    assert stats.decode_s == 0.0 and stats.frames == 0
    for qi, event in enumerate(hour_video.events):
        top = next(f for f in finals if f.query_index == qi and f.rank == 1)
        assert temporal_iou((top.start_s, top.end_s), (event.start_s, event.end_s)) >= 0.6, (top, event)


def test_engine_that_decodes_itself_gets_source_and_window(hour_video: SyntheticTruth) -> None:
    info = probe_video(hour_video.path)
    chunk = plan_chunks(info, PARAMS, overlap_s=OVERLAP_S).chunks[1]

    class FixedAnswer:  # stands for a server-side decoder: it never looks at frames
        name = "fixed"

        def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
            return [
                Completion("The event happens in 10 - 20 seconds.", [1, 2], [-0.1, -0.1], 5, "stop")
            ] * len(requests)

        def close(self) -> None:
            pass

    engine = RecordingEngine(FixedAnswer())
    (seg,) = ground_chunk(engine, None, chunk, ["red circle"], source=hour_video.path, params=PARAMS)
    video = engine.batches[0][0].video
    assert video.frames.shape[0] == 0 and video.source == hour_video.path
    assert video.preprocess_kwargs == {**PARAMS.to_kwargs(), "start_s": chunk.start_s, "end_s": chunk.end_s}
    assert (seg.start_s, seg.end_s) == (chunk.start_s + 10.0, chunk.start_s + 20.0)


def test_refine_windows_pad_clip_and_merge(hour_video: SyntheticTruth) -> None:
    info = probe_video(hour_video.path)
    cands = [
        FinalSegment(0, "a", 5.0, 20.0, 0.9, 1, [0]),
        FinalSegment(1, "b", 25.0, 40.0, 0.8, 1, [0]),  # within the padding of the first: merged
        FinalSegment(0, "a", 3590.0, 3600.0, 0.5, 2, [0]),
    ]
    windows = refine_windows(cands, info, PARAMS, pad_s=10.0, first_index=1)
    assert [(w.index, w.start_s, w.end_s) for w in windows] == [(1, 0.0, 50.0), (2, 3580.0, 3600.0)]
    assert all(w.n_frames >= PARAMS.min_frames for w in windows)
    with pytest.raises(ValueError):
        refine_windows(cands, info, PARAMS, pad_s=-1)


def test_refine_steps_on_constructed_candidates() -> None:
    window = Chunk(3, 100.0, 200.0, [100.0 + i for i in range(100)], 56, 56, 4)
    cands = [
        FinalSegment(0, "a", 120.0, 130.0, 0.6, 1, [0]),
        FinalSegment(2, "c", 150.0, 160.0, 0.4, 1, [0]),
        FinalSegment(1, "b", 190.0, 260.0, 0.9, 1, [0]),  # sticks out of the window: not asked here
    ]
    asked = refine_queries(window, cands)
    assert asked == [0, 2]
    # The window answered query "c" (local index 1) only; "a" keeps its coarse span.
    answers = [ChunkSegment(1, 151.0, 158.5, 0.8, 3)]
    merged = with_coarse_fallback(window, cands, answers, asked)
    assert merged == [ChunkSegment(2, 151.0, 158.5, 0.8, 3), ChunkSegment(0, 120.0, 130.0, 0.6, 0)]
    coarse = [Chunk(0, 0.0, 3600.0, [90.0 * i for i in range(40)], 56, 56, 4)]
    assert refine_padding(coarse, 10.0) == 180.0 and refine_padding(coarse, 500.0) == 500.0


def test_bad_arguments(hour_video: SyntheticTruth) -> None:
    with pytest.raises(ValueError, match="strategy"):
        ground_video(hour_video.path, ["x"], ColorBaselineEngine(), strategy="nope")
    with pytest.raises(ValueError, match="query"):
        ground_video(hour_video.path, ["  "], ColorBaselineEngine())
    assert (
        ground_chunk(
            ColorBaselineEngine(), None, plan_chunks(probe_video(hour_video.path), PARAMS).chunks[0], []
        )
        == []
    )
