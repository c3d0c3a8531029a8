"""Run a model over an annotation set: the `timemark eval --checkpoint …` path.

Samples are grouped by video so each video is probed, planned and decoded once with all its queries
(the same `ground_video` call the workers make), and the answers come back as `Prediction`s in the
predictions-file shape, top-1 first, ready for `score_predictions`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_runtime.engine.base import Engine
from model_runtime.grounding.annotations import AnnotationError, GroundingSample, Prediction
from model_runtime.grounding.ground import GroundingStats, finals_by_query, ground_video

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")


def find_video(videos_dir: Path, video: str) -> Path:
    """The file of an annotation's video id under `videos_dir` (the id may carry its extension).

    An id is a name inside the folder: one that climbs out of it (`../x`, an absolute path) is refused."""
    if Path(video).is_absolute() or ".." in Path(video).parts:
        raise AnnotationError(f"video id {video!r} points outside {videos_dir}")
    direct = videos_dir / video
    if direct.suffix.lower() in VIDEO_EXTENSIONS and direct.is_file():
        return direct
    for ext in VIDEO_EXTENSIONS:
        candidate = videos_dir / f"{video}{ext}"
        if candidate.is_file():
            return candidate
    raise AnnotationError(f"video {video!r} not found in {videos_dir} (tried {', '.join(VIDEO_EXTENSIONS)})")


def predict_samples(
    samples: list[GroundingSample],
    videos_dir: Path,
    engine: Engine,
    *,
    stats: GroundingStats | None = None,
    on_video: Callable[[str, int], None] | None = None,
    **ground_options: Any,
) -> list[Prediction]:
    """One `ground_video` call per video with all of its (distinct) queries; `ground_options` pass through."""
    by_video: dict[str, list[str]] = {}
    for s in samples:
        queries = by_video.setdefault(s.video, [])
        if s.query not in queries:
            queries.append(s.query)
    paths = {video: find_video(videos_dir, video) for video in by_video}  # fail before any model work
    predictions = []
    for video, queries in by_video.items():
        finals = ground_video(str(paths[video]), queries, engine, stats=stats, **ground_options)
        for query, segments in zip(queries, finals_by_query(finals, len(queries)), strict=True):
            predictions.append(
                Prediction(video, query, [(f.start_s, f.end_s, f.confidence) for f in segments])
            )
        if on_video is not None:
            on_video(video, len(queries))
    return predictions
