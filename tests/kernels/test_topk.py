"""Radix top-k (`select_topk`) against the torch.topk oracle, tie-aware, with awkward lengths."""

from __future__ import annotations

import pytest
import torch

from kernels import KernelInputError, select_topk, select_topk_ref
from kernels.testing import assert_same_selection
from kernels.topk import bound, minmax
from kernels.topk.kernel import launch_select_topk
from kernels.topk.minmax import group_stats_buffers

GPU = pytest.mark.gpu

# (rows, columns, topk, kind of scores)
CASES = [
    pytest.param(1, 1, 4, "normal", id="R1-S1-K4"),
    pytest.param(3, 63, 8, "normal", id="R3-S63-K8"),
    pytest.param(4, 300, 64, "ties", id="R4-S300-K64-ties"),
    pytest.param(2, 200, 16, "constant", id="R2-S200-K16-allequal"),
    pytest.param(3, 130, 5, "signed", id="R3-S130-K5-negative-and-inf"),
    pytest.param(3, 700, 32, "narrow", id="R3-S700-K32-narrow"),
    pytest.param(3, 90, 16, "mostly-inf", id="R3-S90-K16-mostly-neg-inf"),
    pytest.param(3, 2049, 2048, "normal", id="R3-S2049-K2048"),
    pytest.param(
        3, 1500, 40, "narrow", id="R3-S1500-K40-narrow"
    ),  # "bound": over 16 * K keys, a bound exists
    pytest.param(2, 1400, 24, "ties", id="R2-S1400-K24-ties"),
    pytest.param(3, 1200, 64, "smooth", id="R3-S1200-K64-smooth"),  # "minmax": the bound from group minima
    # "minmax": the bound's first byte lies one below the row maximum's (K = 100) or further down (K = 700;
    # those rows then take compact's path, having fewer than K groups)
    pytest.param(3, 1200, 100, "spread", id="R3-S1200-K100-spread"),
    pytest.param(3, 1200, 700, "spread", id="R3-S1200-K700-spread"),
    # ... a few outliers in the top byte, none in the next, the K-th far below: the histograms decide
    pytest.param(3, 1200, 64, "outliers", id="R3-S1200-K64-outliers"),
    pytest.param(64, 5000, 2048, "normal", id="R64-S5000-K2048", marks=GPU),
    pytest.param(8, 131072, 2048, "ties", id="R8-S128K-K2048-ties", marks=GPU),
]


def make_scores(rows: int, cols: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    scores = torch.randn(rows, cols, generator=generator)
    if kind == "ties":  # a handful of distinct values: the threshold bin is full of ties
        scores = (scores * 2).round()
    elif kind == "mostly-inf":  # fewer finite scores than k: -inf columns inside the prefix are selected
        scores[:, 5:] = float("-inf")
    elif kind == "narrow":  # one octave, like indexer scores: the top 8 key bits barely separate them
        scores = 2.5 + 0.05 * scores
    elif (
        kind == "smooth"
    ):  # rising towards the row's end, like positional indexer scores, with a little noise
        scores = 1.0 + torch.arange(cols) / cols + 1e-4 * scores
    elif kind == "spread":  # uniform over [1, 16): maxima in [8, 32), most weighted minima a byte below
        scores = 1.0 + 15.0 * torch.rand(rows, cols, generator=generator)
    elif (
        kind == "outliers"
    ):  # smooth rows (a tight bound: nothing to spare) with every 100th score 1000 times larger
        scores = 1.0 + torch.arange(cols) / cols + 1e-4 * scores
        scores[:, ::100] = 1000.0
    elif kind == "hidden":  # pairs of large keys: a group counts one of them, so the bound falls a byte below
        scores = 1.0 + torch.arange(cols) / cols + 1e-4 * scores
        scores[:, : 16 * 40 : 16] = 1000.0
        scores[:, 1 : 16 * 40 : 16] = 1001.0
    elif kind == "plateau":
        # noise below 1, 40 keys at 3.0 among 3 000 at 2.0: a K-th key (K = 64) in a bucket three blocks wide
        scores = torch.rand(rows, cols, generator=generator)
        scores[:, 1000:4000] = 2.0
        scores[:, 7:4000:100] = 3.0
    elif kind == "constant":
        scores = torch.full((rows, cols), 0.5)
    elif kind == "signed":
        scores[:, ::7] = float("-inf")
        scores[:, 1::5] = -scores[:, 1::5].abs() - 3.0
        scores[:, 0] = 0.0
        scores[:, 2] = -0.0
    return scores


@pytest.mark.parametrize("method", ["compact", "radix", "sample", "split", "cooperative", "bound", "minmax"])
@pytest.mark.parametrize(("rows", "cols", "topk", "kind"), CASES)
def test_select_topk_matches_reference(
    rows: int, cols: int, topk: int, kind: str, method: str, device: str
) -> None:
    if method == "sample" and device == "cpu" and topk > 64:
        pytest.skip("the interpreter sorts 2K+ keys too slowly; the GPU run covers these sizes")
    generator = torch.Generator().manual_seed(1234)
    scores = make_scores(rows, cols, kind, generator)
    # Mixed valid lengths: full rows, rows shorter than k, and the k-1 / k / k+1 borders.
    lengths = torch.randint(1, cols + 1, (rows,), generator=generator)
    lengths[0] = cols
    borders = [topk - 1, topk, topk + 1]
    for row, length in zip(range(1, rows), borders, strict=False):
        lengths[row] = min(max(length, 1), cols)
    # A small threshold sample on the CPU keeps the interpreter's sort cheap (same code path);
    # small slices there make "split" and "cooperative" cut even the short rows into several programs.
    sample_size, slice_size = (64, 64) if device == "cpu" else (4096, 2048)
    picked = select_topk(
        scores.to(device),
        topk,
        lengths.to(device),
        method=method,
        sample_size=sample_size,
        slice_size=slice_size,
    )
    expected = select_topk_ref(scores, topk, lengths)
    # fp32 in, fp32 compared: the selected score multisets must be identical (tolerance 0).
    assert_same_selection(picked, expected, scores, lengths, score_tol=0.0, what="select_topk")
    short = lengths <= topk
    for row in torch.nonzero(short).flatten().tolist():
        ids = picked[row].cpu()
        assert sorted(ids[ids >= 0].tolist()) == list(range(int(lengths[row]))), "short row must select all"
        assert (ids[int(lengths[row]) :] == -1).all(), "short row must be padded with -1 at the end"


# (method, k, row lengths) around the length where a method starts to prune: "bound" needs K groups of
# GROUP keys, "minmax" K / GROUP full groups (only a k that is not a multiple of GROUP has lengths below that)
BORDERS = [
    ("bound", 32, [bound.GROUP * 32, bound.GROUP * 31 + 1, bound.GROUP * 31, bound.GROUP * 32 + 5, 96]),
    ("minmax", 40, [41, 47, 48, 49, 3 * minmax.GROUP + 15]),
]


@pytest.mark.parametrize(("method", "topk", "lengths"), BORDERS, ids=[b[0] for b in BORDERS])
@pytest.mark.parametrize("kind", ["narrow", "ties", "signed", "smooth"])
def test_pruning_methods_at_their_border(
    method: str, topk: int, lengths: list[int], kind: str, device: str
) -> None:
    lengths_t = torch.tensor(lengths)
    scores = make_scores(len(lengths), max(lengths), kind, torch.Generator().manual_seed(3))
    picked = select_topk(scores.to(device), topk, lengths_t.to(device), method=method)
    expected = select_topk_ref(scores, topk, lengths_t)
    assert_same_selection(picked, expected, scores, lengths_t, score_tol=0.0, what=f"{method} border")


def keys_above_the_bounds_top_byte(row: torch.Tensor, k: int) -> int:
    """Keys of a full row above the top byte of "minmax"'s bound: the k-th largest entry of the list where each
    GROUP-key group's maximum counts once and a full group's minimum GROUP - 1 more times (ordered keys)."""
    bits = row.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    keys = torch.where(bits >= 0x80000000, ~bits & 0xFFFFFFFF, bits | 0x80000000)
    full = keys[: len(keys) // minmax.GROUP * minmax.GROUP].view(-1, minmax.GROUP)
    maxima = torch.nn.functional.pad(keys, (0, -len(keys) % minmax.GROUP)).view(-1, minmax.GROUP).amax(1)
    weighted = torch.cat([maxima, full.amin(1).repeat_interleave(minmax.GROUP - 1)])
    bound_top_byte = int(weighted.topk(k).values[-1]) >> 24
    return int(((keys >> 24) > bound_top_byte).sum())


def assert_minmax_exact(
    scores: torch.Tensor, topk: int, lengths: list[int], device: str, what: str
) -> torch.Tensor:
    """ "minmax" over `scores` against the reference, tie-aware and exact; returns its selection."""
    lengths_t = torch.tensor(lengths)
    picked = select_topk(scores.to(device), topk, lengths_t.to(device), method="minmax")
    expected = select_topk_ref(scores, topk, lengths_t)
    assert_same_selection(picked, expected, scores, lengths_t, score_tol=0.0, what=what)
    return picked


@pytest.mark.parametrize("top_from_bound", [True, False], ids=["top-from-bound", "four-steps"])
@pytest.mark.parametrize(("kind", "above"), [("hidden", 80), ("outliers", 12), ("narrow", 0)])
def test_minmax_finish_from_the_bounds_top_byte(
    kind: str, above: int, top_from_bound: bool, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finish starts at the second byte only when fewer than K candidates lie above the bound's top byte:
    "hidden" rows put 80 of them there (two per group, so the weighted bound counts 40 and falls below: the
    four-step branch), "outliers" 12 and "narrow" none (the short branch); either way, and with the switch off,
    the selection is exact."""
    monkeypatch.setattr(minmax, "TOP_FROM_BOUND", top_from_bound)
    scores = make_scores(3, 1200, kind, torch.Generator().manual_seed(5))
    assert keys_above_the_bounds_top_byte(scores[0], 64) == above  # the branch this case is meant to take
    assert_minmax_exact(scores, 64, [1200, 1100, 1025], device, f"minmax {kind}")


@pytest.mark.parametrize("last_bits", [8, 6, 3])
@pytest.mark.parametrize(
    ("kind", "topk"), [("narrow", 64), ("spread", 100), ("outliers", 64), ("smooth", 64)]
)
def test_minmax_bound_at_any_last_digit_width(
    kind: str, topk: int, last_bits: int, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound's last radix digit at 8, 6 (the default) or 3 bits: any prefix of the K-th weighted entry is a
    lower bound, so the selection is exact at every width, whether the first byte came from the counting passes
    ("narrow", "smooth": the top byte; "spread": the byte below) or from a histogram ("outliers")."""
    monkeypatch.setattr(minmax, "LAST_BITS", last_bits)
    scores = make_scores(3, 1200, kind, torch.Generator().manual_seed(7))
    assert_minmax_exact(scores, topk, [1200, 1100, 1025], device, f"minmax {kind} {last_bits} bits")


@pytest.mark.parametrize("bucket_finish", [True, False], ids=["bucket", "every-candidate"])
@pytest.mark.parametrize("kind", ["plateau", "constant", "ties", "narrow", "outliers"])
def test_minmax_finish_over_the_kth_keys_bucket(
    kind: str, bucket_finish: bool, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last two radix bytes over only the candidates that share the K-th key's top 16 bits (the others
    written out or dropped in one pass, the bucket compacted in place) or over every candidate: exact either
    way, with a bucket of a few keys ("narrow", "outliers"), of ties ("ties"), or several blocks wide
    ("plateau", and "constant", where every key shares it and the columns alone decide)."""
    monkeypatch.setattr(minmax, "BUCKET_FINISH", bucket_finish)
    generator = torch.Generator().manual_seed(11)
    cols = 5000
    scores = make_scores(3, cols, kind, generator)
    picked = assert_minmax_exact(scores, 64, [cols, 4100, 2500], device, f"minmax {kind}")
    if kind in ("plateau", "constant"):  # ties at the threshold go to the lowest columns
        above = list(range(7, 4000, 100)) if kind == "plateau" else []
        ties = [c for c in range(1000 if kind == "plateau" else 0, cols) if c not in above][: 64 - len(above)]
        assert sorted(picked[0].cpu().tolist()) == sorted(above + ties)


@pytest.mark.parametrize("row_top", [True, False], ids=["row-top", "own-pass"])
@pytest.mark.parametrize(
    ("kind", "topk"), [("narrow", 64), ("spread", 100), ("hidden", 64), ("signed", 64), ("ties", 64)]
)
def test_minmax_packed_extremes_with_either_row_top(
    kind: str, topk: int, row_top: bool, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group extremes floored to 16 bits and packed in one word give the exact selection (the bound keeps at
    most 16 bits, and a floor at 16 bits orders every key against such a bound as the key itself does), with
    the row's top byte from the stats pass (`minmax.ROW_TOP`) or from the select's own pass over the extremes
    ("signed": negative keys, -inf and -0.0; "spread": the first byte from below the row maximum's; "hidden":
    from a histogram)."""
    monkeypatch.setattr(minmax, "ROW_TOP", row_top)
    scores = make_scores(3, 1200, kind, torch.Generator().manual_seed(13))
    assert_minmax_exact(scores, topk, [1200, 1100, 1025], device, f"minmax {kind} row_top={row_top}")


@pytest.mark.parametrize("group_loads", [True, False], ids=["group-loads", "key-loads"])
@pytest.mark.parametrize("cols", [1200, 1190], ids=["whole-groups", "part-group-row-end"])
@pytest.mark.parametrize("kind", ["narrow", "ties", "signed", "hidden"])
def test_minmax_gather_drops_keys_past_the_length(
    kind: str, cols: int, group_loads: bool, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gather loads a listed group whole (`minmax.GROUP_LOADS`, where rows are a multiple of GROUP long) or
    key by key; either way the keys past a row's length never count. Those columns hold the largest scores of the
    row (+inf, 1e30, NaN), so one that leaked in would be selected."""
    monkeypatch.setattr(minmax, "GROUP_LOADS", group_loads)
    scores = make_scores(4, cols, kind, torch.Generator().manual_seed(23))
    lengths = [cols, 1100, 1025, 1170]
    for row, length in enumerate(lengths):
        scores[row, length:] = torch.tensor([float("inf"), 1e30, float("nan")]).repeat(cols)[: cols - length]
    assert_minmax_exact(scores, 64, lengths, device, f"minmax {kind} group_loads={group_loads}")


def test_minmax_reuses_its_stats_buffers(device: str) -> None:
    """One pair of stats buffers serves consecutive selections (as `indexer_topk` reuses them chunk after chunk):
    the select resets the row tops it read. (A stale, higher top would not change a selection — the bound would
    take its first byte from a histogram instead — but it would cost every later row the counting pass's
    shortcut, so the reset is checked directly.)"""
    generator = torch.Generator().manual_seed(17)
    high = make_scores(2, 1200, "narrow", generator) * 1000.0
    low = make_scores(2, 1200, "narrow", generator)
    lengths = torch.tensor([1200, 1100], device=device)
    stats = group_stats_buffers(2, 1200, torch.device(device))
    for scores in (high, low):
        rows = scores.to(device)
        minmax._minmax_stats_kernel[(2, 1)](
            rows, lengths, stats[0], stats[1], stats[0].shape[1], rows.stride(0), stats[0].stride(0),
            BLOCK=2048, GROUP=minmax.GROUP, INTERPRETED=minmax.INTERPRETED,
        )  # fmt: skip
        picked = torch.empty(2, 64, dtype=torch.int32, device=device)
        launch_select_topk(rows, 64, lengths, picked, method="minmax", stats=stats)
        expected = select_topk_ref(scores, 64, lengths.cpu())
        assert_same_selection(picked, expected, scores, lengths.cpu(), score_tol=0.0, what="reused stats")
        assert not stats[1].any(), "the select must leave the row tops at zero"


def test_select_topk_rejects_bad_input(device: str) -> None:
    scores = torch.randn(2, 10, device=device)
    lengths = torch.tensor([10, 10], device=device)
    with pytest.raises(KernelInputError, match="float32"):
        select_topk(scores.half(), 4, lengths)
    with pytest.raises(KernelInputError, match="one entry per score row"):
        select_topk(scores, 4, lengths[:1])
    with pytest.raises(KernelInputError, match="topk"):
        select_topk(scores, 0, lengths)
    with pytest.raises(KernelInputError, match="dtype"):
        select_topk(scores, 4, lengths.float())
    with pytest.raises(KernelInputError, match="method"):
        select_topk(scores, 4, lengths, method="sort")
    with pytest.raises(KernelInputError, match="slice_size"):
        select_topk(scores, 4, lengths, method="split", slice_size=48)
