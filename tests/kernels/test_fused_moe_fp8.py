"""FP8 fused MoE (`fused_moe_fp8`) against its PyTorch oracle, and FP8 against the unquantised product.

Tolerances: the kernel and the oracle do the same FP8 roundings (weights per 128x128 block, activations
per token and 128 channels, the activation rounded to x's dtype in between), so they differ only by
accumulation order: 1e-4 relative in fp32 (a flipped FP8 rounding of the stored activation shows), 2e-2 in bf16 (the stored activation's rounding can flip one
FP8 step). FP8 itself costs ~6 % relative error against the unquantised fp32 product on random weights
(e4m3 keeps 3 mantissa bits), bounded here at 10 %.
"""

from __future__ import annotations

import pytest
import torch

from kernels import KernelInputError, fused_moe_fp8, fused_moe_fp8_ref, fused_moe_ref
from kernels.testing import assert_close, error_report
from model_runtime.fp8 import FP8, quantize_blocks

GPU = pytest.mark.gpu
REL_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def make_case(tokens, hidden, width, experts, top, dtype, generator):
    x = torch.randn(tokens, hidden, generator=generator).to(dtype)
    gate_up = torch.randn(experts, hidden, 2 * width, generator=generator) * hidden**-0.5
    down = torch.randn(experts, width, hidden, generator=generator) * width**-0.5
    logits = torch.randn(tokens, experts, generator=generator)
    logits[:, -1] = float("-inf")  # one expert receives no token
    weights, ids = logits.softmax(dim=-1).topk(top, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return x, gate_up, down, ids, weights


CASES = [
    # (tokens, hidden, ffn width, experts, top-k, dtype, (block_m, block_n))
    pytest.param(1, 32, 16, 3, 2, torch.float32, (16, 32), id="T1-D32-F16-E3-k2"),
    pytest.param(63, 130, 48, 5, 3, torch.float32, (16, 32), id="T63-D130-F48-E5-k3-unaligned"),
    pytest.param(20, 200, 136, 4, 2, torch.bfloat16, (16, 64), id="T20-D200-F136-E4-k2-bf16"),
    pytest.param(
        2049, 2048, 768, 128, 8, torch.bfloat16, (64, 128), id="T2049-D2048-F768-E128-k8", marks=GPU
    ),
    pytest.param(5000, 256, 96, 60, 6, torch.bfloat16, (64, 128), id="T5000-D256-F96-E60-k6", marks=GPU),
]


@pytest.mark.parametrize(("tokens", "hidden", "width", "experts", "top", "dtype", "tiles"), CASES)
def test_fused_moe_fp8_matches_reference(tokens, hidden, width, experts, top, dtype, tiles, device) -> None:
    generator = torch.Generator().manual_seed(3)
    x, gate_up, down, ids, weights = make_case(tokens, hidden, width, experts, top, dtype, generator)
    (gu_q, gu_s), (dn_q, dn_s) = quantize_blocks(gate_up), quantize_blocks(down)
    args = [t.to(device) for t in (x, gu_q, gu_s, dn_q, dn_s, ids, weights)]
    out = fused_moe_fp8(*args, block_m=tiles[0], block_n=tiles[1])
    ref = fused_moe_fp8_ref(*args)
    assert out.dtype == x.dtype and not out.isnan().any()
    assert_close(out, ref, rel_tol=REL_TOL[dtype], what="fused_moe_fp8")
    exact = fused_moe_ref(x.float(), gate_up, down, ids, weights)
    _, rel = error_report(ref.float().cpu(), exact)
    assert rel < 0.10, f"FP8 experts are {rel:.3f} away from the unquantised product"


def test_fused_moe_fp8_rejects_bad_input(device: str) -> None:
    generator = torch.Generator().manual_seed(0)
    x, gate_up, down, ids, weights = make_case(4, 16, 8, 3, 2, torch.float32, generator)
    (gu_q, gu_s), (dn_q, dn_s) = quantize_blocks(gate_up), quantize_blocks(down)
    x, gu_q, gu_s, dn_q, dn_s, ids, weights = (
        t.to(device) for t in (x, gu_q, gu_s, dn_q, dn_s, ids, weights)
    )
    with pytest.raises(KernelInputError, match="gate_up has dtype"):
        fused_moe_fp8(x, gate_up.to(device), gu_s, dn_q, dn_s, ids, weights)
    with pytest.raises(KernelInputError, match="gate_up_scale must be"):
        fused_moe_fp8(x, gu_q, gu_s[:, :, :0], dn_q, dn_s, ids, weights)
    with pytest.raises(KernelInputError, match="down_scale must be"):
        fused_moe_fp8(x, gu_q, gu_s, dn_q, dn_s[:, :0], ids, weights)
    with pytest.raises(KernelInputError, match="one shape"):
        fused_moe_fp8(x, gu_q, gu_s, dn_q, dn_s, ids, weights[:, :1])
    assert dn_q.dtype == FP8
