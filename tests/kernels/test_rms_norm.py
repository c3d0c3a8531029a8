"""RMSNorm (+ rotary) in one kernel (`kernels.rms_norm`) against the runtime's own norm and rotary.

The kernel keeps the reference's roundings but not its reduction order or its reciprocal square root, so
fp32 results agree to a few ulps and 16-bit ones to a unit in the last place of each of the two rounded
values (normalised, then scaled): fp32 relative 1e-5 by norm, 16-bit elementwise 2^-6 relative, and as
much absolute error per unit of the largest value (rotary's differences cancel to small outputs). Triton's
CPU interpreter truncates fp32 -> bf16 where the GPU rounds to nearest, so there nearly every other value
is one unit off; on the GPU the differences are rare.
"""

from __future__ import annotations

import pytest
import torch

from kernels import KernelInputError, rms_norm, rms_norm_ref
from kernels.testing import assert_close
from model_runtime.model import mrope_cos_sin

GPU = pytest.mark.gpu


def rope_tables(tokens: int, dim: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    base = torch.arange(tokens, device=device)
    positions = torch.stack([base, base + base % 3, base + base % 5])  # video-like t/h/w channels
    quarter = dim // 8
    return mrope_cos_sin(positions, dim, [quarter, quarter, dim // 2 - 2 * quarter], 1e6)


CASES = [
    # (shape [tokens, ..., dim], x dtype, weight dtype, rotary)
    pytest.param((1, 64), torch.float32, torch.float32, False, id="one-token-hidden"),
    pytest.param((63, 2048), torch.bfloat16, torch.bfloat16, False, id="hidden-2048-bf16"),
    pytest.param((5, 4, 32), torch.float32, torch.float32, True, id="heads-rotary-fp32"),
    pytest.param((33, 3, 10), torch.bfloat16, torch.bfloat16, True, id="odd-heads-dim10-bf16"),
    pytest.param((7, 2, 16), torch.bfloat16, torch.float32, True, id="bf16-x-fp32-weight"),
    pytest.param((9, 2, 24), torch.float16, torch.float16, True, id="fp16-dim24"),
    pytest.param((4096, 32, 128), torch.bfloat16, torch.bfloat16, True, id="keye-q-4096", marks=GPU),
    pytest.param((2049, 2048), torch.bfloat16, torch.bfloat16, False, id="keye-hidden-2049", marks=GPU),
    pytest.param((5000, 16, 64), torch.bfloat16, torch.bfloat16, True, id="keye-indexer-q-5000", marks=GPU),
]


@pytest.mark.parametrize(("shape", "x_dtype", "w_dtype", "rotary"), CASES)
def test_rms_norm_matches_the_runtime(shape, x_dtype, w_dtype, rotary, device) -> None:
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=generator) * 3).to(device, x_dtype)
    weight = (torch.rand(shape[-1], generator=generator) + 0.5).to(device, w_dtype)
    rope = rope_tables(shape[0], shape[-1], device) if rotary else None
    out = rms_norm(x, weight, 1e-6, rope)
    ref = rms_norm_ref(x, weight, 1e-6, rope)
    assert out.dtype == ref.dtype == torch.promote_types(x_dtype, w_dtype)
    if ref.dtype == torch.float32 and x_dtype == torch.float32:
        assert_close(out, ref, rel_tol=1e-5, what="rms_norm")
    else:  # one rounding of a 16-bit value may land one unit apart
        torch.testing.assert_close(out.float(), ref.float(), rtol=2**-6, atol=2**-6 * ref.abs().max().item())
    assert not out.isnan().any()


def test_rms_norm_reads_strided_inputs_and_leaves_them_unchanged(device) -> None:
    generator = torch.Generator().manual_seed(4)
    wide = torch.randn(6, 3, 40, generator=generator).to(device)
    x = wide[:, :, 4:36]  # a view with row strides the kernel must not assume away
    before = wide.clone()
    weight = torch.rand(32, generator=generator).to(device)
    rope = rope_tables(6, 32, device)
    assert_close(
        rms_norm(x, weight, 1e-5, rope), rms_norm_ref(x, weight, 1e-5, rope), rel_tol=1e-5, what="view"
    )
    assert torch.equal(wide, before)


def test_rms_norm_reads_columns_of_a_fused_projection_in_place(device) -> None:
    """Tokens apart by a stride, each token's heads contiguous: the kernel reads the slice without a copy."""
    generator = torch.Generator().manual_seed(5)
    fused = torch.randn(7, 3 * 32 + 20, generator=generator).to(device)  # [tokens, q heads ‖ other columns]
    weight = torch.rand(32, generator=generator).to(device)
    rope = rope_tables(7, 32, device)
    for x, tables in ((fused[:, 8 : 8 + 96].view(7, 3, 32), (rope, None)), (fused[:, 40:72], (None,))):
        assert x[0].is_contiguous() and not x.is_contiguous()
        for table in tables:
            assert_close(
                rms_norm(x, weight, 1e-5, table),
                rms_norm_ref(x, weight, 1e-5, table),
                rel_tol=1e-5,
                what="slice",
            )


def test_rms_norm_of_nothing_is_empty(device) -> None:
    x = torch.empty(0, 4, 16, device=device)
    assert rms_norm(x, torch.ones(16, device=device), 1e-6).shape == (0, 4, 16)


@pytest.mark.parametrize(
    ("x_shape", "w_len", "rope_shape", "message"),
    [
        ((4, 16), 15, None, "weight must be"),
        ((4, 15), 15, None, "even"),
        ((16,), 16, None, "x must be"),
        ((4, 2, 16), 16, (3, 16), "cos must be"),
        ((4, 2, 15), 15, (4, 15), "even"),
    ],
)
def test_rms_norm_rejects_bad_shapes(x_shape, w_len, rope_shape, message, device) -> None:
    x = torch.randn(x_shape, device=device)
    rope = None if rope_shape is None else (torch.ones(rope_shape, device=device),) * 2
    with pytest.raises(KernelInputError, match=message):
        rms_norm(x, torch.ones(w_len, device=device), 1e-6, rope)


def test_rms_norm_rejects_integer_input(device) -> None:
    with pytest.raises(KernelInputError, match="x"):
        rms_norm(torch.ones(2, 8, dtype=torch.int32, device=device), torch.ones(8, device=device), 1e-6)
