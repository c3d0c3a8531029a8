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


def f16_logits_oracle(q8, q_scale, w, k8, k_scale, start: int) -> torch.Tensor:
    """`f16_logits`' scores as the interpreter computes them, from the dequantised math: each (query, head) q
    divided by the power of two that keeps sum |q| * 448 under 60000 and re-rounded to e4m3, the logits rounded once
    to fp16, each query's weights (times q's scales and shifts) divided by the power of two at or below their
    largest and rounded to fp16, the head sum in fp32, then that power and k's scale multiplied back."""
    q, k = q8.float(), k8.float()
    shift = torch.exp2(torch.ceil(torch.log2((q.abs().sum(-1) * 448 / 60000).clamp_min(1))))  # [T, H]
    q = (q / shift[..., None]).to(torch.float8_e4m3fn).float()
    weights = w.float() * q_scale.float() * shift
    row = torch.exp2(torch.floor(torch.log2(weights.abs().amax(-1))))  # [T]
    weights = (weights / row[:, None]).half().float()
    logits = torch.einsum("thd,sd->ths", q, k).half().float().clamp_min(0)
    scores = torch.einsum("th,ths->ts", weights, logits) * row[:, None] * k_scale.float()[None, :]
    lengths = causal_lengths(q8.shape[0], start, q8.device)
    return scores.masked_fill(
        torch.arange(k8.shape[0], device=q8.device)[None, :] >= lengths[:, None], float("-inf")
    )


@pytest.mark.parametrize(("tokens", "start", "heads", "dim"), CASES)
def test_fp8_f16_logits_match_their_rounded_oracle_and_bound(tokens, start, heads, dim, device) -> None:
    """`f16_logits` (the default for e4m3) against `f16_logits_oracle`: the interpreter rounds as the oracle does,
    up to fp32 summation order (measured 5e-8); the GPU's tensor cores round the fp16 partial sums at each step,
    which the oracle rounds once. Against the unrounded FP8 scores: within 2^-9 of sum_h |w_h| |q_h| . |k|, what
    bounds every partial sum (fp16's 2^-11 on the logit's sums and on the weight, and q's re-rounding; the
    interpreter measured 0.16 x 2^-10 at most) plus the tolerance."""
    q, w, k = make_inputs(tokens, start, heads, dim)
    (q8, q_scale), (k8, k_scale) = quantize_indexer_fp8_ref(q), quantize_indexer_fp8_ref(k)
    args = [t.to(device) for t in (q8, q_scale, w, k8, k_scale)]
    out = indexer_scores_fp8(*args, start, head_mma=True, f16_logits=True)
    ref = f16_logits_oracle(*args, start)
    visible = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), visible) and not out.isnan().any()
    rel_tol = 2e-3 if torch.device(device).type == "cuda" else 1e-6
    assert_close(out[visible], ref[visible], rel_tol=rel_tol, what="indexer_scores_fp8 f16_logits")
    unrounded = indexer_scores_fp8_ref(*args, start)
    q8_abs, k8_abs = (t.float().abs().to(torch.float8_e4m3fn) for t in (args[0], args[3]))
    magnitude = indexer_scores_fp8_ref(
        q8_abs, args[1], args[2].abs(), k8_abs, args[4], start
    )  # sum |w| |q| . |k|
    slack = 2.0**-9 * magnitude[visible] + rel_tol * unrounded[visible].abs().max()
    assert ((out[visible] - unrounded[visible]).abs() <= slack).all(), "f16_logits strays past its bound"


def test_fp8_f16_logits_hold_e4m3_extremes(device) -> None:
    """Every product at e4m3's largest magnitude with one sign (a logit of 448^2 * 64 = 1.3e7, 196x fp16's range)
    and weights 50 powers of ten apart: the shrink keeps the sums finite and the scores within fp16's rounding."""
    tokens, start, dim = 6, 3, 64
    q8 = torch.full((tokens, 2, dim), 448.0).to(torch.float8_e4m3fn)
    k8 = torch.full((start + tokens, dim), 448.0)
    k8[1::2] = -448.0
    k8 = k8.to(torch.float8_e4m3fn)
    w = torch.tensor([[1e-30, 3e20]]).expand(tokens, 2).contiguous()
    q_scale, k_scale = torch.ones(tokens, 2), torch.full((start + tokens,), 0.25)
    args = [t.to(device) for t in (q8, q_scale, w, k8, k_scale)]
    out = indexer_scores_fp8(*args, start, head_mma=True, f16_logits=True)
    ref = indexer_scores_fp8_ref(*args, start)
    visible = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), visible) and not out.isnan().any()
    assert_close(out[visible], ref[visible], rel_tol=2.0**-10, what="f16_logits at e4m3's extremes")


def test_f16_logits_need_e4m3_and_the_mma_head_sum(device) -> None:
    q, w, k = (t.to(device) for t in make_inputs(4, 0, 2, 32))
    (q8, q_scale), (k8, k_scale) = quantize_indexer_fp8_ref(q), quantize_indexer_fp8_ref(k)
    with pytest.raises(KernelInputError, match="f16_logits needs"):
        indexer_scores_fp8(q8, q_scale, w, k8, k_scale, 0, f16_logits=True)
    with pytest.raises(KernelInputError, match="f16_logits needs"):
        indexer_topk(q, w, k, 2, 0, f16_logits=True)


@pytest.mark.parametrize("head_mma", [False, None], ids=["fma", "default-mma"])
@pytest.mark.parametrize("method", ["compact", "radix", "torch"])
def test_fp8_indexer_topk_selects_the_top_k_of_its_scores(method: str, head_mma: bool | None, device) -> None:
    """The FMA head sum against the FP8 oracle; the default (the MMA head sum on fp16 logits) against the top-k of
    the score kernel's own unchunked scores, which the tests above hold to their oracle."""
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
        scores = indexer_scores_fp8(q8, q_scale, w, k8, k_scale, start, head_mma=True, f16_logits=True)
        score_tol = 1e-6
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
