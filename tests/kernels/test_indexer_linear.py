"""The linear split of the indexer scores (`kernels.indexer.linear`): sum_h w_h ReLU(x_h) as one linear product
plus sum_h w_h / 2 |x_h|, against the ReLU oracle.

The CPU interpreter multiplies bf16 tiles wrongly (it feeds their raw 16-bit patterns to numpy), so bf16 runs
on the GPU only; under the interpreter the same kernel code runs with fp16 terms (fp16 and e4m3 inputs).
Tolerances: fp16 terms carry 22 significant bits, so the scores stay within 1e-5 relative of the oracle's fed
the same inputs; bf16 terms 16 bits, within the bf16 path's 1e-3.
"""

from __future__ import annotations

import pytest
import torch

from kernels import KernelInputError, indexer_scores, indexer_scores_ref, indexer_topk, indexer_topk_ref
from kernels.indexer.linear import LARGEST, linear_queries, linear_queries_torch
from kernels.indexer.reference import causal_lengths
from kernels.testing import assert_close, assert_same_selection

GPU = pytest.mark.gpu


def make_inputs(
    tokens: int, start: int, heads: int, dim: int, dtype: torch.dtype, seed: int, scale: float = 1.0
):
    """`scale` multiplies q and, beyond 1, w too (a large one sums past fp16's range; q alone stays within)."""
    generator = torch.Generator().manual_seed(seed)
    q = (torch.randn(tokens, heads, dim, generator=generator) * min(scale, 1e4)).to(dtype)
    w = torch.randn(tokens, heads, generator=generator) * max(1.0, scale / 1e4)  # signed, like the model's
    k = torch.randn(start + tokens, dim, generator=generator).to(dtype)
    return q, w, k


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [
        pytest.param(torch.float16, 1.0, id="fp16"),
        pytest.param(torch.float16, 8e4, id="fp16-beyond-fp16-range-once-summed"),
        pytest.param(torch.float16, 1e-4, id="fp16-tiny"),
        pytest.param(torch.bfloat16, 1.0, id="bf16", marks=GPU),
    ],
)
def test_linear_queries_match_their_oracle(dtype: torch.dtype, scale: float, device: str) -> None:
    q, w, _ = (t.to(device) for t in make_inputs(37, 0, 5, 64, dtype, seed=1, scale=scale))
    (terms, row_scale), (terms_ref, row_scale_ref) = linear_queries(q, w), linear_queries_torch(q, w)
    if dtype == torch.bfloat16:
        assert row_scale is None and row_scale_ref is None
        ratio = torch.ones(q.shape[0], 1, device=device)
    else:  # powers of two, the same as the oracle's, and the largest term of each row within fp16's reach
        assert torch.equal(row_scale, row_scale_ref)
        assert torch.equal(torch.frexp(row_scale).mantissa, torch.full_like(row_scale, 0.5))
        assert terms[:, 0].float().abs().amax() <= 2.0**LARGEST
        ratio = row_scale[:, None]
    exact = torch.einsum("thd,th->td", q.double(), w.double()).cpu() * 0.5
    if scale > 1e4:
        assert exact.abs().max() > torch.finfo(torch.float16).max, "the case must reach past fp16's range"
    bits = 16 if dtype == torch.bfloat16 else 22
    for which in (terms, terms_ref):  # hi + lo: the sum to `bits` significant bits of the row's largest entry
        total = (which.float().sum(1) * ratio).double().cpu()
        assert torch.isfinite(total).all()
        assert ((total - exact).abs() <= exact.abs().amax(1, keepdim=True) * 2.0 ** -(bits - 1)).all()


SPLIT_CASES = [
    # (tokens, start, heads, dim, dtype, query scale)
    pytest.param(63, 0, 3, 64, torch.float16, 1.0, id="T63-H3-fp16"),
    pytest.param(70, 130, 16, 64, torch.float16, 1.0, id="T70-S200-H16-fp16"),
    pytest.param(17, 40, 5, 32, torch.float16, 8e4, id="T17-S57-H5-D32-fp16-large"),
    pytest.param(5, 0, 2, 16, torch.float16, 1e-4, id="T5-H2-D16-fp16-tiny"),
    pytest.param(2049, 0, 16, 64, torch.bfloat16, 1.0, id="T2049-H16-bf16", marks=GPU),
    pytest.param(300, 4700, 7, 64, torch.bfloat16, 1.0, id="T300-S5000-H7-bf16", marks=GPU),
]


@pytest.mark.parametrize(("tokens", "start", "heads", "dim", "dtype", "scale"), SPLIT_CASES)
def test_linear_split_scores_match_the_relu_oracle(tokens, start, heads, dim, dtype, scale, device) -> None:
    q, w, k = (t.to(device) for t in make_inputs(tokens, start, heads, dim, dtype, seed=7, scale=scale))
    out = indexer_scores(q, w, k, start, linear_split=True)
    ref = indexer_scores_ref(q, w, k, start)
    future = torch.isinf(ref)
    assert torch.equal(torch.isneginf(out), future), "exactly the future positions must be -inf"
    assert_close(
        out[~future], ref[~future], rel_tol=1e-5 if dtype == torch.float16 else 1e-3, what="linear split"
    )


def test_linear_split_never_writes_negative_zero(device: str) -> None:
    """A sum of zeros ends at +0.0 (the group extremes compare fp32 scores as ordered keys): zero queries
    with negative weights make every product -0.0."""
    q, w, k = (t.to(device) for t in make_inputs(9, 3, 4, 32, torch.float16, seed=3))
    q[::2] = 0
    w = -w.abs()
    out = indexer_scores(q, w, k, 3, linear_split=True)
    zeros = out[::2][torch.isfinite(out[::2])]
    assert zeros.numel() > 0 and torch.equal(zeros, torch.zeros_like(zeros))
    assert not torch.signbit(zeros).any()


@pytest.mark.parametrize("method", ["minmax", "compact"])
def test_linear_split_topk_selects_the_oracles_keys(method: str, device: str) -> None:
    tokens, start, topk = 70, 700, 24
    q, w, k = (t.to(device) for t in make_inputs(tokens, start, 4, 16, torch.float16, seed=11))
    picked = indexer_topk(q, w, k, topk, start, max_buffer_bytes=1, topk_method=method, linear_split=True)
    expected = indexer_topk_ref(q, w, k, topk, start)
    scores = indexer_scores_ref(q, w, k, start)
    lengths = causal_lengths(tokens, start, q.device)
    assert_same_selection(picked, expected, scores, lengths, score_tol=1e-5, what="linear split top-k")


def test_linear_split_rejects_fp32(device: str) -> None:
    q, w, k = (t.to(device) for t in make_inputs(4, 2, 3, 16, torch.float32, seed=0))
    with pytest.raises(KernelInputError, match="linear split needs"):
        indexer_topk(q, w, k, 4, 2, linear_split=True)
    with pytest.raises(KernelInputError, match="linear split needs"):
        indexer_scores(q, w, k, 2, linear_split=True)
