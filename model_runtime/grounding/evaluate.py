"""Score predictions against annotations: per-query top-1 IoU, then mIoU and R1@{0.3, 0.5, 0.7}.

Two modes. The default scores timemark's own output: top-1 is the first ranked segment; a prediction
that only has raw answer text is parsed with our strict parser. `timelens=True` reproduces the official
TimeLens procedure (spec video-and-eval §2.2) so numbers compare with published ones: top-1 is the
first span (from `timestamps`, else the official extractor on the raw answer), both ends rounded to the
dataset unit (1.0 s), unparseable answers score IoU 0, and metrics are reported ×100. Rounding is
`round(t / unit) * unit` with Python's `round`, as the spec describes the official inference script.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from model_runtime.grounding.annotations import GroundingSample, Prediction, normalize_query, video_key
from model_runtime.grounding.metrics import GroundingScores, Span, best_iou, summarize_ious
from model_runtime.grounding.parsing import extract_time_timelens, parse_segments


@dataclass
class EvalRow:
    """One query's outcome, for `--details`."""

    video: str
    query: str
    ground_truth: list[Span]
    prediction: Span | None
    iou: float
    status: str  # "ok", "missing" (no prediction for the query) or "unparsed" (nothing usable in it)

    def to_dict(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "query": self.query,
            "ground_truth": [list(s) for s in self.ground_truth],
            "prediction": None if self.prediction is None else list(self.prediction),
            "iou": round(self.iou, 4),
            "status": self.status,
        }


@dataclass
class EvalReport:
    scores: GroundingScores
    rows: list[EvalRow]

    def to_dict(self, *, details: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = self.scores.to_dict()
        out["scale"] = self.scores.scale
        out["missing"] = sum(r.status == "missing" for r in self.rows)
        out["unparsed"] = sum(r.status == "unparsed" for r in self.rows)
        if details:
            out["rows"] = [r.to_dict() for r in self.rows]
        return out


def round_to_unit(t: float, unit: float) -> float:
    """The official inference script's rounding of predicted times to the dataset unit."""
    return round(t / unit) * unit


def top1_span(prediction: Prediction, sample: GroundingSample, *, timelens: bool, unit: float) -> Span | None:
    """The prediction's top-1 span under the chosen scoring mode, or None when nothing is usable."""
    span: Span | None = None
    if prediction.segments:
        span = (prediction.segments[0][0], prediction.segments[0][1])
    elif prediction.answer is not None:
        if timelens:
            spans = extract_time_timelens(prediction.answer)
        else:
            hi = sample.duration_s if sample.duration_s is not None else math.inf
            spans = parse_segments(prediction.answer, lo=0.0, hi=hi, query=sample.query)
        span = spans[0] if spans else None
    if span is not None and timelens:
        span = (round_to_unit(span[0], unit), round_to_unit(span[1], unit))
    return span


def score_predictions(
    samples: list[GroundingSample],
    predictions: list[Prediction],
    *,
    timelens: bool = False,
    unit: float = 1.0,
) -> EvalReport:
    """Match predictions to samples by (video id, normalised query), in order, and score them."""
    by_key: dict[tuple[str, str], deque[Prediction]] = defaultdict(deque)
    for p in predictions:
        by_key[(video_key(p.video), normalize_query(p.query))].append(p)
    rows = []
    for sample in samples:
        queue = by_key.get((video_key(sample.video), normalize_query(sample.query)))
        if not queue:
            rows.append(EvalRow(sample.video, sample.query, sample.spans, None, 0.0, "missing"))
            continue
        # Several samples may share video and query (different truths); each takes the next prediction,
        # and the last one is reused if predictions ran out (a model answers a query once).
        prediction = queue.popleft() if len(queue) > 1 else queue[0]
        span = top1_span(prediction, sample, timelens=timelens, unit=unit)
        status = "ok" if span is not None else "unparsed"
        rows.append(
            EvalRow(sample.video, sample.query, sample.spans, span, best_iou(span, sample.spans), status)
        )
    scores = summarize_ious([r.iou for r in rows], scale=100.0 if timelens else 1.0)
    return EvalReport(scores, rows)
