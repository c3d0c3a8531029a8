"""FP8 lightning-indexer scores (`indexer_scores_fp8`) against their oracle, and FP8 against exact scores.

The kernel and the oracle score the same e4m3 vectors (Hadamard-rotated, power-of-two per-vector scales),
whose products are exact in fp32: they differ by accumulation only — 1e-5 relative under the CPU
interpreter (fp32 sums), 2e-4 on the GPU, whose FP8 tensor cores accumulate with fewer mantissa bits than
fp32 (DeepSeek-V3 reports ~14 on Hopper; the H200 measured 4.5e-5 at T2049-S2049-H16-D64). Against the
unquantised scores FP8 costs a few percent (bounded at 8 %), and the top-k it selects keeps ≥ 90 % of the
exact top-k's keys on random inputs (the worst case: no structure to separate the winners).
"""

from __future__ import annotations

import pytest
import torch

from kernels import (
    KernelInputError,
    hadamard,
    indexer_scores_fp8,
    indexer_scores_fp8_ref,
    indexer_scores_ref,
    indexer_topk,
    quantize_indexer_fp8_ref,
)
from kernels.indexer.kernel import INTERPRETED
from kernels.indexer.reference import causal_lengths
from kernels.testing import assert_close, assert_same_selection, error_report

GPU = pytest.mark.gpu

CASES = [
    pytest.param(1, 0, 1, 64, id="T1-S1-H1-D64"),
    pytest.param(63, 0, 3, 64, id="T63-S63-H3-D64"),
    pytest.param(17, 40, 5, 32, id="T17-S57-H5-D32"),
    pytest.param(70, 130, 16, 64, id="T70-S200-H16-D64"),
    pytest.param(2049, 0, 16, 64, id="T2049-S2049-H16-D64", marks=GPU),
    pytest.param(300, 4700, 7, 64, id="T300-S5000-H7-D64", marks=GPU),
]


def make_inputs(tokens: int, start: int, heads: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(tokens, heads, dim, generator=g)
    q[..., 3] *= 20  # an outlier channel: what the Hadamard transform is for
    k = torch.randn(start + tokens, dim, generator=g)
    w = torch.rand(tokens, heads, generator=g) / heads
    return q, w, k


@pytest.mark.parametrize(("tokens", "start", "heads", "dim"), CASES)
def test_fp8_scores_match_the_oracle_and_stay_close_to_exact(tokens, start, heads, dim, device) -> None:
    q, w, k = make_inputs(tokens, start, heads, dim)
    (q8, q_scale), (k8, k_scale) = quantize_indexer_fp8_ref(q), quantize_indexer_fp8_ref(k)
    args = [t.to(device) for t in (q8, q_scale, w, k8, k_scale)]
    out = torch.full((tokens, start + tokens), float("nan"), device=device)
    out = indexer_scores_fp8(*args, start)
    ref = indexer_scores_fp8_ref(*args, start)
    visible = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), visible) and not out.isnan().any()
    rel_tol = 2e-4 if torch.device(device).type == "cuda" else 1e-5  # the tensor cores' FP8 accumulation
    assert_close(out[visible], ref[visible], rel_tol=rel_tol, what="indexer_scores_fp8")
    exact = indexer_scores_ref(q, w, k, start)
    _, rel = error_report(ref.cpu()[visible.cpu()], exact[visible.cpu()])
    assert rel < 0.08, f"FP8 scores are {rel:.3f} away from the exact ones"


@pytest.mark.parametrize(("tokens", "start", "heads", "dim"), CASES)
def test_fp8_head_mma_scores_match_their_rounded_oracle(tokens, start, heads, dim, device) -> None:
    """`head_mma` (the default for e4m3) against an oracle that rounds the dequantised terms as the kernel
    rounds its own (the scales are powers of two): bf16 on the GPU, none under the interpreter (an fp32 product
    there). The FP8 tensor cores' accumulation moves a logit by ~1e-4 of itself, which flips the bf16 rounding
    of a few percent of the terms by 2^-8 each: 1e-3 relative (the H200 measured 2.3e-4 to 4.3e-4)."""
    q, w, k = make_inputs(tokens, start, heads, dim)
    (q8, q_scale), (k8, k_scale) = quantize_indexer_fp8_ref(q), quantize_indexer_fp8_ref(k)
    args = [t.to(device) for t in (q8, q_scale, w, k8, k_scale)]
    out = indexer_scores_fp8(*args, start, head_mma=True)
    rounding = None if INTERPRETED else torch.bfloat16
    ref = indexer_scores_fp8_ref(*args, start, head_rounding=rounding)
    visible = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), visible) and not out.isnan().any()
    rel_tol = 1e-3 if torch.device(device).type == "cuda" else 1e-5
    assert_close(out[visible], ref[visible], rel_tol=rel_tol, what="indexer_scores_fp8 head_mma")
    unrounded = indexer_scores_fp8_ref(*args, start)
    magnitude = indexer_scores_fp8_ref(args[0], args[1], args[2].abs(), args[3], args[4], start)
    slack = 2.0**-7 * magnitude[visible] + rel_tol * unrounded[visible].abs().max()
    assert ((out[visible] - unrounded[visible]).abs() <= slack).all(), (
        "head_mma strays past its rounding bound"
    )


@pytest.mark.parametrize("head_mma", [False, None], ids=["fma", "default-mma"])
@pytest.mark.parametrize("method", ["compact", "radix", "torch"])
def test_fp8_indexer_topk_selects_the_top_k_of_its_scores(method: str, head_mma: bool | None, device) -> None:
    """The FMA head sum against the FP8 oracle; the default (the MMA head sum, rounded) against the top-k of
    the score kernel's own unchunked scores, which the test above holds to its oracle."""
    tokens, start, topk = 70, 30, 24
    q, w, k = make_inputs(tokens, start, 5, 32, seed=5)
    (q8, q_scale), (k8, k_scale) = quantize_indexer_fp8_ref(q), quantize_indexer_fp8_ref(k)
    q8, q_scale, w, k8, k_scale = (t.to(device) for t in (q8, q_scale, w, k8, k_scale))
    # A 1-byte buffer forces 64-query chunks: the scales must be sliced with the queries and keys.
    picked = indexer_topk(
        q8,
        w,
        k8,
        topk,
        start,
        max_buffer_bytes=1,
        topk_method=method,
        scales=(q_scale, k_scale),
        head_mma=head_mma,
    )
    if head_mma is None:
        scores, score_tol = indexer_scores_fp8(q8, q_scale, w, k8, k_scale, start, head_mma=True), 1e-6
    else:
        scores, score_tol = indexer_scores_fp8_ref(q8, q_scale, w, k8, k_scale, start), 2e-4
    lengths = causal_lengths(tokens, start, scores.device)
    expected = scores.topk(topk, dim=1).indices.int()
    expected = torch.where(expected < lengths[:, None], expected, -1)
    assert_same_selection(picked, expected, scores, lengths, score_tol=score_tol, what="indexer_topk fp8")


def test_fp8_top_k_keeps_most_of_the_exact_selection() -> None:
    q, w, k = make_inputs(64, 960, 16, 64, seed=3)
    (q8, q_scale), (k8, k_scale) = quantize_indexer_fp8_ref(q), quantize_indexer_fp8_ref(k)
    approx = indexer_scores_fp8_ref(q8, q_scale, w, k8, k_scale, 960).topk(128, dim=1).indices
    exact = indexer_scores_ref(q, w, k, 960).topk(128, dim=1).indices
    kept = [len(set(a.tolist()) & set(e.tolist())) / 128 for a, e in zip(approx, exact, strict=True)]
    assert sum(kept) / len(kept) >= 0.9


def test_hadamard_keeps_dot_products_and_scales_are_powers_of_two() -> None:
    h = hadamard(64)
    assert torch.allclose(h @ h.T, torch.eye(64), atol=1e-6)
    x = torch.randn(10, 64) * 5
    _, scale = quantize_indexer_fp8_ref(x)
    assert torch.equal(torch.exp2(torch.log2(scale).round()), scale)
    with pytest.raises(KernelInputError, match="power-of-two"):
        hadamard(48)


def test_fp8_scores_reject_unquantised_inputs(device) -> None:
    q, w, k = (t.to(device) for t in make_inputs(4, 0, 2, 32))
    (q8, q_scale), (k8, k_scale) = quantize_indexer_fp8_ref(q), quantize_indexer_fp8_ref(k)
    with pytest.raises(KernelInputError, match="must be e4m3"):
        indexer_scores_fp8(q, q_scale, w, k8, k_scale, 0)
    with pytest.raises(KernelInputError, match="k_scale must be"):
        indexer_scores_fp8(q8, q_scale, w, k8, k_scale[:2], 0)
    with pytest.raises(KernelInputError, match="must be positive"):
        indexer_scores_fp8(q8, q_scale, w, k8, -k_scale, 0)
