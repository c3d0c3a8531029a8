"""Temporal grounding: prompts, answer parsing, confidence, merging across chunks, strategies, evaluation.

The pure parts (prompts, parsing, metrics, annotations, merge) import nothing heavy; the names that
need video decoding (`ground_chunk`, `ground_video`, `refine_windows`, … see `_LAZY`) are loaded on
first use, so reading annotations or scoring predictions never pulls in PyAV.
"""

from __future__ import annotations

from typing import Any

from model_runtime.grounding.annotations import (
    AnnotationError,
    GroundingSample,
    Prediction,
    load_annotations,
    predictions_to_json,
    read_predictions,
)
from model_runtime.grounding.confidence import combine_agreeing, min_confidence, span_confidence
from model_runtime.grounding.evaluate import EvalReport, score_predictions
from model_runtime.grounding.merge import ChunkSegment, FinalSegment, merge_segments
from model_runtime.grounding.metrics import summarize_ious, temporal_iou
from model_runtime.grounding.parsing import ParsedSpan, extract_time_timelens, find_spans, parse_segments
from model_runtime.grounding.prompts import PROMPT_TEMPLATES, PromptError, build_grounding_prompt

_LAZY = {
    "STRATEGIES",
    "GroundingStats",
    "ground_chunk",
    "ground_video",
    "refine_padding",
    "refine_queries",
    "refine_windows",
    "token_texts_of",
    "with_coarse_fallback",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from model_runtime.grounding import ground

        return getattr(ground, name)
    raise AttributeError(f"module 'model_runtime.grounding' has no attribute {name!r}")


__all__ = [
    "PROMPT_TEMPLATES",
    "STRATEGIES",
    "AnnotationError",
    "ChunkSegment",
    "EvalReport",
    "FinalSegment",
    "GroundingSample",
    "GroundingStats",
    "ParsedSpan",
    "Prediction",
    "PromptError",
    "build_grounding_prompt",
    "combine_agreeing",
    "extract_time_timelens",
    "find_spans",
    "ground_chunk",
    "ground_video",
    "load_annotations",
    "merge_segments",
    "min_confidence",
    "parse_segments",
    "predictions_to_json",
    "read_predictions",
    "refine_padding",
    "refine_queries",
    "refine_windows",
    "score_predictions",
    "span_confidence",
    "summarize_ious",
    "temporal_iou",
    "token_texts_of",
    "with_coarse_fallback",
]
