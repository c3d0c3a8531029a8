"""Comparison helpers shared by the kernel tests and the benchmark sweeps.

`error_report` gives max-abs and relative (Frobenius) error of an output against its oracle;
`assert_close` fails with that report. `assert_same_selection` compares top-k index sets
tie-aware: two selections agree when each row picks the same number of valid, distinct, in-range
positions and their sorted oracle scores match within a tolerance, so swapping one of several
equal-scoring keys for another never fails a test.
"""

from __future__ import annotations

import torch


def error_report(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |out - ref|, ||out - ref|| / ||ref||) in float64; NaN anywhere gives (nan, nan)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if out64.isnan().any() or ref64.isnan().any():
        return float("nan"), float("nan")
    diff = out64 - ref64
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    rel = (diff.norm() / ref64.norm().clamp_min(1e-30)).item() if diff.numel() else 0.0
    return max_abs, rel


def assert_close(out: torch.Tensor, ref: torch.Tensor, *, rel_tol: float, what: str) -> None:
    """Fail unless out has ref's shape, no NaN, and relative error <= rel_tol."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    max_abs, rel = error_report(out, ref)
    assert rel <= rel_tol, f"{what}: max_abs={max_abs:.3e} rel={rel:.3e} > {rel_tol:.1e}"


def assert_same_selection(
    picked: torch.Tensor,
    expected: torch.Tensor,
    scores: torch.Tensor,
    lengths: torch.Tensor,
    *,
    score_tol: float,
    what: str,
) -> None:
    """Tie-aware comparison of two int [R, K] selections (-1 = padding) over oracle `scores` [R, S]."""
    assert picked.shape == expected.shape, f"{what}: shape {tuple(picked.shape)} != {tuple(expected.shape)}"
    picked, expected = picked.long().cpu(), expected.long().cpu()
    scores, lengths = scores.double().cpu(), lengths.long().cpu()
    for row in range(picked.shape[0]):
        mine = picked[row][picked[row] >= 0]
        theirs = expected[row][expected[row] >= 0]
        assert (picked[row] >= -1).all(), f"{what}: row {row} holds ids below -1"
        assert len(mine) == len(theirs), (
            f"{what}: row {row} picked {len(mine)} valid ids, oracle {len(theirs)}"
        )
        assert len(set(mine.tolist())) == len(mine), f"{what}: row {row} picked an id twice"
        assert (mine < lengths[row]).all(), f"{what}: row {row} picked a position past its causal length"
        mine_scores = scores[row, mine].sort().values
        their_scores = scores[row, theirs].sort().values
        same = mine_scores == their_scores  # also equal infinities, whose difference is NaN
        gap = torch.where(same, 0.0, (mine_scores - their_scores).abs())
        bound = score_tol * (1.0 + their_scores.abs())
        assert (same | (gap <= bound)).all(), (
            f"{what}: row {row} selection differs beyond ties (gap {gap.max():.3e})"
        )
