"""Metric definitions on hand-computed cases."""

from __future__ import annotations

import pytest

from model_runtime.grounding.metrics import best_iou, summarize_ious, temporal_iou


@pytest.mark.parametrize(
    ("pred", "gt", "iou"),
    [
        ((0.0, 10.0), (0.0, 10.0), 1.0),
        ((0.0, 10.0), (5.0, 15.0), 5.0 / 15.0),  # overlap 5, union 15
        ((2.0, 4.0), (0.0, 10.0), 0.2),  # inside: 2 / 10
        ((0.0, 10.0), (2.0, 4.0), 0.2),
        ((0.0, 5.0), (5.0, 10.0), 0.0),  # touching
        ((0.0, 4.0), (6.0, 10.0), 0.0),  # disjoint: hull 10, overlap 0
        ((10.0, 0.0), (0.0, 10.0), 0.0),  # reversed prediction
        ((3.0, 3.0), (0.0, 10.0), 0.0),  # zero-length prediction inside the truth
        ((3.0, 3.0), (3.0, 3.0), 0.0),  # two zero-length spans: no measure to share
        ((0.0, 10.0), (4.0, 4.0), 0.0),  # zero-length truth
        ((12.0, 30.0), (10.0, 28.0), 16.0 / 20.0),
    ],
)
def test_temporal_iou(pred: tuple[float, float], gt: tuple[float, float], iou: float) -> None:
    assert temporal_iou(pred, gt) == pytest.approx(iou)


def test_best_iou_over_several_windows_and_missing_prediction() -> None:
    assert best_iou((0.0, 10.0), [(20.0, 30.0), (0.0, 5.0)]) == pytest.approx(0.5)
    assert best_iou(None, [(0.0, 5.0)]) == 0.0


def test_summary_by_hand() -> None:
    # Four queries: 1.0, 0.6, 0.35, and an empty prediction (0).
    scores = summarize_ious([1.0, 0.6, 0.35, 0.0])
    assert scores.count == 4
    assert scores.miou == pytest.approx(1.95 / 4)
    assert scores.recall == pytest.approx({0.3: 0.75, 0.5: 0.5, 0.7: 0.25})
    as_percent = summarize_ious([1.0, 0.6, 0.35, 0.0], scale=100.0)
    assert as_percent.miou == pytest.approx(48.75)
    assert as_percent.to_dict() == {"count": 4, "mIoU": 48.75, "R1@0.3": 75.0, "R1@0.5": 50.0, "R1@0.7": 25.0}


def test_threshold_is_inclusive_and_empty_input_scores_zero() -> None:
    assert summarize_ious([0.5]).recall[0.5] == 1.0
    empty = summarize_ious([])
    assert empty.count == 0 and empty.miou == 0.0 and set(empty.recall.values()) == {0.0}
