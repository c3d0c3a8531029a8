"""Lightning-indexer scores and the fused `indexer_topk` against their PyTorch oracles.

Scores are compared by relative error (fp32: tensor products in IEEE fp32, so 1e-5; fp16/bf16
inputs with fp32 accumulation: 1e-3 against an fp32 oracle fed the same rounded inputs). Top-k
sets are compared tie-aware on the oracle's scores, with a score tolerance matching the dtype.
"""

from __future__ import annotations

import pytest
import torch
import triton

from kernels import KernelInputError, indexer_scores, indexer_scores_ref, indexer_topk, indexer_topk_ref
from kernels.indexer.kernel import INTERPRETED, launch_indexer_scores
from kernels.indexer.reference import causal_lengths
from kernels.testing import assert_close, assert_same_selection
from kernels.topk import minmax
from kernels.topk.minmax import GROUP, _minmax_stats_kernel, group_stats_buffers
from kernels.topk.reference import select_topk_ref

GPU = pytest.mark.gpu
SCORE_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}
SELECT_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}


def make_inputs(tokens: int, start: int, heads: int, dim: int, dtype: torch.dtype, seed: int):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(tokens, heads, dim, generator=generator).to(dtype)  # [T, H, D]
    w = torch.randn(tokens, heads, generator=generator)  # [T, H] fp32, signed like the real weights
    k = torch.randn(start + tokens, dim, generator=generator).to(dtype)  # [S, D]
    return q, w, k


SCORE_CASES = [
    pytest.param(1, 0, 1, 64, torch.float32, id="T1-S1-H1-D64-fp32"),
    pytest.param(63, 0, 3, 64, torch.float16, id="T63-S63-H3-D64-fp16"),
    pytest.param(17, 40, 5, 32, torch.float32, id="T17-S57-H5-D32-fp32"),
    pytest.param(70, 130, 16, 64, torch.float32, id="T70-S200-H16-D64-fp32"),
    pytest.param(2049, 0, 16, 64, torch.bfloat16, id="T2049-S2049-H16-D64-bf16", marks=GPU),
    pytest.param(300, 4700, 7, 64, torch.bfloat16, id="T300-S5000-H7-D64-bf16", marks=GPU),
]


@pytest.mark.parametrize(("tokens", "start", "heads", "dim", "dtype"), SCORE_CASES)
def test_indexer_scores_match_reference(tokens, start, heads, dim, dtype, device) -> None:
    q, w, k = (t.to(device) for t in make_inputs(tokens, start, heads, dim, dtype, seed=7))
    out = indexer_scores(q, w, k, start)
    ref = indexer_scores_ref(q, w, k, start)
    future = torch.isinf(ref)
    assert torch.equal(torch.isneginf(out), future), "exactly the future positions must be -inf"
    assert_close(out[~future], ref[~future], rel_tol=SCORE_TOL[dtype], what="indexer_scores")


BIG = 1 << 30  # one chunk of queries; a buffer of 1 byte forces 64-query chunks

TOPK_CASES = [
    # (tokens, start, heads, dim, topk, dtype, score buffer bytes, top-k method)
    pytest.param(1, 0, 2, 64, 4, torch.float32, BIG, "auto", id="T1-S1-K4"),
    pytest.param(63, 0, 3, 64, 16, torch.float16, BIG, "auto", id="T63-S63-H3-K16-fp16"),
    pytest.param(70, 30, 5, 32, 24, torch.float32, 1, "compact", id="T70-S100-H5-K24-chunked-compact"),
    pytest.param(70, 30, 5, 32, 24, torch.float32, 1, "radix", id="T70-S100-H5-K24-chunked-radix"),
    pytest.param(70, 30, 5, 32, 24, torch.float32, 1, "torch", id="T70-S100-H5-K24-chunked-torch"),
    pytest.param(70, 30, 5, 32, 24, torch.float32, 1, "split", id="T70-S100-H5-K24-chunked-split"),
    pytest.param(70, 700, 4, 16, 24, torch.float32, 1, "bound", id="T70-S770-K24-chunked-bound"),
    pytest.param(70, 700, 4, 16, 24, torch.float32, 1, "minmax", id="T70-S770-K24-chunked-minmax"),
    pytest.param(90, 0, 3, 32, 40, torch.float32, BIG, "minmax", id="T90-K40-minmax-short-rows"),
    pytest.param(80, 500, 4, 16, 16, torch.float32, BIG, "auto", id="T80-S580-K16-prefill-auto-bound"),
    pytest.param(3, 90, 4, 16, 32, torch.float32, BIG, "auto", id="T3-S93-K32-decode-auto-cooperative"),
    pytest.param(40, 90, 4, 16, 32, torch.float32, BIG, "auto", id="T40-S130-K32-auto-torch"),
    pytest.param(1, 90, 4, 16, 32, torch.float32, BIG, "auto", id="T1-S91-K32-decode-auto-cooperative"),
    pytest.param(2, 2047, 2, 16, 2048, torch.float32, BIG, "auto", id="T2-S2049-K2048-border"),
    pytest.param(
        5000, 0, 16, 64, 2048, torch.bfloat16, BIG, "auto", id="T5000-K2048-bf16-auto-bound", marks=GPU
    ),
    pytest.param(
        257, 4000, 16, 64, 2048, torch.bfloat16, 1 << 22, "auto", id="T257-S4257-K2048-chunked", marks=GPU
    ),
    pytest.param(
        257, 40000, 16, 64, 2048, torch.bfloat16, BIG, "bound", id="T257-S40K-K2048-bound", marks=GPU
    ),
    pytest.param(
        257, 40000, 16, 64, 2048, torch.bfloat16, BIG, "minmax", id="T257-S40K-K2048-minmax", marks=GPU
    ),
    pytest.param(
        1, 131071, 16, 64, 2048, torch.bfloat16, BIG, "split", id="T1-S128K-K2048-decode-split", marks=GPU
    ),
    pytest.param(
        1, 131071, 16, 64, 2048, torch.bfloat16, BIG, "auto", id="T1-S128K-K2048-decode-auto", marks=GPU
    ),
]


# `head_mma` rounds ReLU'd logits and weights to bf16 before a tensor-core head sum (the interpreter, which runs
# no inline assembly and multiplies bf16 dots wrongly, sums in fp32 unrounded: there the test checks the layout
# of the product). Its oracle rounds the same way; its bound against exact scores is two roundings of 2^-8.
HEAD_ROUNDING = None if INTERPRETED else torch.bfloat16
HEAD_MMA_BOUND = 2.0**-7
# Against the rounded oracle: a logit whose last-bit difference (fp32 sums, tf32x3 products) crosses a bf16
# rounding midpoint moves one term by 2^-8 of itself; rare, so 1e-3 relative (the H200 measured 2.7e-5 for fp32).
HEAD_MMA_TOL = 1e-3


@pytest.mark.parametrize(("tokens", "start", "heads", "dim", "dtype"), SCORE_CASES)
def test_head_mma_scores_match_their_rounded_oracle_and_bound(
    tokens, start, heads, dim, dtype, device
) -> None:
    q, w, k = (t.to(device) for t in make_inputs(tokens, start, heads, dim, dtype, seed=7))
    out = indexer_scores(q, w, k, start, head_mma=True)
    rounded = indexer_scores_ref(q, w, k, start, head_rounding=HEAD_ROUNDING)
    future = torch.isinf(rounded)
    assert torch.equal(torch.isneginf(out), future), "exactly the future positions must be -inf"
    assert_close(out[~future], rounded[~future], rel_tol=HEAD_MMA_TOL, what="indexer_scores head_mma")
    exact = indexer_scores_ref(q, w, k, start)
    magnitude = indexer_scores_ref(q, w.abs(), k, start)  # sum_h |w_h| ReLU(logit_h)
    slack = HEAD_MMA_BOUND * magnitude[~future] + SCORE_TOL[dtype] * exact[~future].abs().max()
    assert ((out[~future] - exact[~future]).abs() <= slack).all(), "head_mma strays past its rounding bound"


def test_head_mma_scores_are_never_negative_zero(device) -> None:
    """Negative weights times zero ReLUs are -0.0 products; a score of zero must still come out +0.0, which
    the top-k's ordered keys and the group extremes rank as the oracle does."""
    q, w, k = (t.to(device) for t in make_inputs(40, 30, 1, 32, torch.float32, seed=3))
    out = indexer_scores(q, -w.abs(), k, 30, head_mma=True)
    zeros = out == 0
    assert zeros.sum() > 100, "the case must hold many zero scores"
    assert not torch.signbit(out[zeros]).any(), "a zero score came out -0.0"


@pytest.mark.parametrize(
    ("tokens", "start", "dim", "dtype", "method"),
    [
        pytest.param(70, 700, 16, torch.float32, "minmax", id="T70-S770-minmax"),
        pytest.param(70, 30, 32, torch.float32, "compact", id="T70-S100-compact"),
        # 256 queries in 64-query chunks: a chunk of one query is scored by the decode kernel, exactly
        pytest.param(256, 40000, 64, torch.bfloat16, "minmax", id="T256-S40K-minmax-bf16", marks=GPU),
    ],
)
def test_head_mma_topk_selects_the_top_k_of_its_scores(tokens, start, dim, dtype, method, device) -> None:
    """Chunked and fused with the top-k, the MMA head sum selects the top-k of its own unchunked scores (the
    test above holds those to their oracle; its rounding flips would blur a comparison with the oracle's)."""
    q, w, k = (t.to(device) for t in make_inputs(tokens, start, 16, dim, dtype, seed=13))
    topk = 24 if tokens + start < 2048 else 2048
    picked = indexer_topk(q, w, k, topk, start, max_buffer_bytes=1, topk_method=method, head_mma=True)
    scores = indexer_scores(q, w, k, start, head_mma=True)
    lengths = causal_lengths(tokens, start, q.device)
    expected = select_topk_ref(scores, topk, lengths)
    assert_same_selection(picked, expected, scores, lengths, score_tol=1e-6, what="head_mma top-k")


@pytest.mark.parametrize(("tokens", "start", "heads", "dim", "topk", "dtype", "buffer", "method"), TOPK_CASES)
def test_indexer_topk_matches_reference(
    tokens, start, heads, dim, topk, dtype, buffer, method, device
) -> None:
    q, w, k = (t.to(device) for t in make_inputs(tokens, start, heads, dim, dtype, seed=11))
    picked = indexer_topk(q, w, k, topk, start, max_buffer_bytes=buffer, topk_method=method)
    expected = indexer_topk_ref(q, w, k, topk, start)
    scores = indexer_scores_ref(q, w, k, start)
    lengths = causal_lengths(tokens, start, q.device)
    assert picked.dtype == torch.int32
    assert_same_selection(picked, expected, scores, lengths, score_tol=SELECT_TOL[dtype], what="indexer_topk")


@pytest.mark.parametrize(
    ("tokens", "start"),
    [(70, 130), (5, 0), (11, 2290)],
    ids=["T70-S200", "T5-S5", "T11-S2301-two-key-ranges"],
)
def test_score_kernel_group_extremes_match_the_stats_pass(tokens: int, start: int, device: str) -> None:
    """The score kernel's packed per-group extremes for "minmax" equal the standalone pass over its own scores
    on every group a row can read (those holding at least one visible key), and both leave each row's top byte
    (of its largest score's ordered key) in the row tops."""
    q, w, k = (t.to(device) for t in make_inputs(tokens, start, 4, 32, torch.float32, seed=5))
    keys = start + tokens
    scores = torch.empty(tokens, keys, device=device)
    fused = group_stats_buffers(tokens, keys, q.device)
    launch_indexer_scores(q, w, k, start, scores, fill_future=True, stats=fused)
    lengths = causal_lengths(tokens, start, q.device).to(torch.int32)
    alone = group_stats_buffers(tokens, keys, q.device)
    _minmax_stats_kernel[(tokens, triton.cdiv(keys, 64))](
        scores, lengths, alone[0], alone[1], alone[0].shape[1], scores.stride(0), alone[0].stride(0),
        BLOCK=64, GROUP=GROUP, INTERPRETED=minmax.INTERPRETED,
    )  # fmt: skip
    readable = torch.arange(alone[0].shape[1], device=q.device)[None, :] * GROUP < lengths[:, None]
    assert torch.equal(fused[0][readable], alone[0][readable]), "group extremes differ"
    largest = scores.max(1).values.cpu().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    ordered = torch.where(largest >= 0x80000000, ~largest & 0xFFFFFFFF, largest | 0x80000000)
    assert torch.equal(fused[1].cpu(), (ordered >> 24).to(torch.int32)), "row tops differ from the scores'"
    assert torch.equal(alone[1], fused[1]), "the stats pass's row tops differ"


def test_indexer_topk_rejects_bad_input(device: str) -> None:
    q, w, k = (t.to(device) for t in make_inputs(4, 2, 3, 16, torch.float32, seed=0))
    with pytest.raises(KernelInputError, match="start \\+ T"):
        indexer_topk(q, w, k[:-1], 4, 2)
    with pytest.raises(KernelInputError, match="w must be"):
        indexer_topk(q, w[:, :2], k, 4, 2)
    with pytest.raises(KernelInputError, match="dtype"):
        indexer_topk(q, w, k.half(), 4, 2)
    with pytest.raises(KernelInputError, match="topk"):
        indexer_topk(q, w, k, 0, 2)
    with pytest.raises(KernelInputError, match="dims"):
        indexer_scores(q[0], w, k, 2)
