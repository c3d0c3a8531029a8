"""Temporal-grounding metrics: IoU of intervals, mIoU and R1@m over queries.

Definitions follow the standard ones as TimeLens computes them (spec video-and-eval §2.2): IoU is the
overlap divided by the hull of both spans (equal to the union when they overlap), 0 when they are
disjoint, when the prediction is reversed, or when the hull has no length (two zero-length spans
score 0: there is no measure to share). mIoU is the mean over queries of the top-1 IoU; R1@m is the
fraction of queries whose top-1 IoU is at least m. A query with no prediction scores IoU 0. When a
query has several ground-truth windows (QVHighlights), its IoU is the best over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RECALL_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)

Span = tuple[float, float]


def temporal_iou(pred: Span, gt: Span) -> float:
    """IoU of two [start, end] intervals in seconds; 0 for reversed, disjoint or length-less pairs."""
    (ps, pe), (gs, ge) = pred, gt
    if pe < ps or ge < gs:
        return 0.0
    hull = max(pe, ge) - min(ps, gs)
    if hull <= 0:
        return 0.0
    return max(min(pe, ge) - max(ps, gs), 0.0) / hull


def best_iou(pred: Span | None, gts: Sequence[Span]) -> float:
    """Top-1 IoU of one query: 0 without a prediction, best over its ground-truth windows otherwise."""
    if pred is None or not gts:
        return 0.0
    return max(temporal_iou(pred, gt) for gt in gts)


@dataclass
class GroundingScores:
    """mIoU and R1@m over `count` queries, as fractions (or ×100 when `scale` is 100)."""

    count: int
    miou: float
    recall: dict[float, float]
    scale: float = 1.0

    def to_dict(self, digits: int = 4) -> dict[str, float | int]:
        out: dict[str, float | int] = {"count": self.count, "mIoU": round(self.miou, digits)}
        for threshold, value in self.recall.items():
            out[f"R1@{threshold}"] = round(value, digits)
        return out


def summarize_ious(
    ious: Sequence[float], *, thresholds: Sequence[float] = RECALL_THRESHOLDS, scale: float = 1.0
) -> GroundingScores:
    """mIoU and R1@m from per-query top-1 IoUs; an empty list scores 0 everywhere."""
    n = len(ious)
    if n == 0:
        return GroundingScores(0, 0.0, {t: 0.0 for t in thresholds}, scale)
    miou = sum(ious) / n * scale
    recall = {t: sum(1 for iou in ious if iou >= t) / n * scale for t in thresholds}
    return GroundingScores(n, miou, recall, scale)
