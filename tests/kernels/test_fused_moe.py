"""Fused MoE (`fused_moe`) against the DeepSeek-style bincount loop, plus the expert sort.

Tolerances (relative error vs the fp32 oracle on the same rounded weights): fp32 1e-5; fp16
3e-3 and bf16 2e-2, because the SiLU*up activation is rounded to the input dtype between the
two GEMMs (the oracle keeps it in fp32).
"""

from __future__ import annotations

import pytest
import torch

from kernels import KernelInputError, fused_moe, fused_moe_ref
from kernels.fused_moe import sort_slots_by_expert
from kernels.fused_moe.kernel import DECODE_TILES, DECODE_TOKENS, default_tiles
from kernels.fused_moe.slots import combine_slots, sort_slots_by_expert_torch
from kernels.testing import assert_close

GPU = pytest.mark.gpu
REL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def make_case(tokens, hidden, width, experts, top, dtype, generator, *, skip_expert=None):
    x = torch.randn(tokens, hidden, generator=generator).to(dtype)
    gate_up = (torch.randn(experts, hidden, 2 * width, generator=generator) * hidden**-0.5).to(dtype)
    down = (torch.randn(experts, width, hidden, generator=generator) * width**-0.5).to(dtype)
    logits = torch.randn(tokens, experts, generator=generator)
    if skip_expert is not None:
        logits[:, skip_expert] = float("-inf")  # an expert that receives no token
    weights, ids = logits.softmax(dim=-1).topk(top, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return x, gate_up, down, ids, weights


CASES = [
    # (tokens, hidden, ffn width, experts, top-k, dtype, tiles (block_m, block_n, block_k))
    pytest.param(1, 32, 16, 3, 2, torch.float32, (16, 32, 16), id="T1-D32-F16-E3-k2"),
    pytest.param(63, 64, 48, 5, 3, torch.float16, (16, 32, 16), id="T63-D64-F48-E5-k3-fp16"),
    pytest.param(20, 40, 24, 7, 2, torch.float32, (16, 16, 32), id="T20-D40-F24-E7-k2-odd-dims"),
    pytest.param(
        2049, 2048, 768, 128, 8, torch.bfloat16, (64, 128, 64), id="T2049-D2048-F768-E128-k8", marks=GPU
    ),  # fmt: skip
    pytest.param(5000, 256, 96, 60, 6, torch.bfloat16, (64, 128, 64), id="T5000-D256-F96-E60-k6", marks=GPU),
]


@pytest.mark.parametrize(("tokens", "hidden", "width", "experts", "top", "dtype", "tiles"), CASES)
def test_fused_moe_matches_reference(tokens, hidden, width, experts, top, dtype, tiles, device) -> None:
    generator = torch.Generator().manual_seed(9)
    case = make_case(tokens, hidden, width, experts, top, dtype, generator, skip_expert=experts - 1)
    x, gate_up, down, ids, weights = (t.to(device) for t in case)
    block_m, block_n, block_k = tiles
    out = fused_moe(x, gate_up, down, ids, weights, block_m=block_m, block_n=block_n, block_k=block_k)
    ref = fused_moe_ref(x, gate_up, down, ids, weights)
    assert out.dtype == x.dtype and not out.isnan().any()
    assert_close(out, ref, rel_tol=REL_TOL[dtype], what="fused_moe")


# bf16 on the GPU only, as in CASES: the Triton interpreter's bf16 products come out wrong at any tile size.
@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=GPU)])
def test_decode_sized_batches_take_the_decode_tiles(dtype: torch.dtype, device: str) -> None:
    """A few 16-bit tokens (a decode step) run with DECODE_TILES for both GEMMs by default, and stay right."""
    assert default_tiles(dtype, DECODE_TOKENS) == DECODE_TILES != default_tiles(dtype, DECODE_TOKENS + 1)
    assert default_tiles(torch.float32, 1) == default_tiles(torch.float32)
    case = make_case(5, 256, 96, 6, 2, dtype, torch.Generator().manual_seed(4))
    x, gate_up, down, ids, weights = (t.to(device) for t in case)
    out = fused_moe(x, gate_up, down, ids, weights)
    assert_close(
        out, fused_moe_ref(x, gate_up, down, ids, weights), rel_tol=REL_TOL[dtype], what="decode tiles"
    )


def test_fused_moe_down_tiles_differ_from_gate_up(device: str) -> None:
    """The down GEMM with its own tiles (N = D, K = F) gives the same result as the reference."""
    generator = torch.Generator().manual_seed(3)
    case = make_case(37, 48, 40, 5, 2, torch.float32, generator)
    x, gate_up, down, ids, weights = (t.to(device) for t in case)
    out = fused_moe(
        x, gate_up, down, ids, weights, block_m=16, block_n=32, block_k=16,
        down_tiles={"block_n": 16, "block_k": 32, "num_warps": 2, "num_stages": 2},
    )  # fmt: skip
    assert_close(
        out, fused_moe_ref(x, gate_up, down, ids, weights), rel_tol=REL_TOL[torch.float32], what="down_tiles"
    )
    # The down tiles reach the down kernel: a width its tl.arange cannot take fails there, not in gate_up.
    with pytest.raises(Exception, match="power of 2"):
        fused_moe(
            x, gate_up, down, ids, weights, block_m=16, block_n=32, block_k=16, down_tiles={"block_n": 24}
        )


def test_sort_slots_groups_by_expert_in_padded_blocks(device) -> None:
    ids = torch.tensor([[2, 0], [2, 1], [0, 2]], device=device)  # slots 0..5 -> experts 2,0,2,1,0,2
    sorted_slots, block_expert, n_blocks = sort_slots_by_expert(ids, experts=4, block_m=2)
    n_slots = 6
    # expert 0: slots 1,4 | expert 1: slot 3 + pad | expert 2: slots 0,2 | 5 + pad; expert 3 empty
    assert int(n_blocks) == 4
    assert sorted_slots[:8].tolist() == [1, 4, 3, n_slots, 0, 2, 5, n_slots]
    assert block_expert[:4].tolist() == [0, 1, 2, 2]


@pytest.mark.parametrize(
    ("tokens", "experts", "top", "block_m", "chunk", "case"),
    [
        (1, 3, 1, 16, 1024, "one-slot"),
        (37, 5, 2, 16, 1024, "uneven"),
        (150, 7, 3, 64, 64, "ragged-last-chunk"),  # 450 slots in 8 chunks of 64, the last one part-full
        (300, 6, 2, 16, 16, "many-chunks"),  # 38 chunks: the counts are summed over two row steps of 32
        (50, 9, 2, 4, 32, "one-hot-expert"),  # every slot on expert 4: one long segment, others empty
    ],
)
def test_triton_slot_sort_equals_the_torch_sort(tokens, experts, top, block_m, chunk, case, device) -> None:
    generator = torch.Generator().manual_seed(tokens)
    ids = torch.randint(0, experts, (tokens, top), generator=generator)
    if case == "one-hot-expert":
        ids[:] = 4
    for dtype in (torch.int64, torch.int32) if tokens < 50 else (torch.int64,):
        got = sort_slots_by_expert(ids.to(device, dtype), experts, block_m, chunk_size=chunk)
        want = sort_slots_by_expert_torch(ids.to(device), experts, block_m)
        used = int(want[2]) * block_m  # rows the GEMMs read; the Triton sort leaves the rest unset
        assert torch.equal(got[0][:used].cpu(), want[0][:used].cpu()), dtype
        for name, a, b in zip(("block_expert", "n_blocks"), got[1:], want[1:], strict=True):
            assert a.dtype == torch.int32, name
            assert torch.equal(a.cpu(), b.cpu()), (name, dtype)


def test_combine_sums_each_tokens_rows_in_fp32(device) -> None:
    generator = torch.Generator().manual_seed(3)
    rows = torch.randn(7 * 3, 1500, generator=generator).to(device, torch.bfloat16)  # 1500: two column blocks
    exact = rows.view(7, 3, 1500).float().sum(dim=1)  # three bf16 terms of similar size: exact in fp32
    assert torch.equal(combine_slots(rows, 7, 3, torch.float32).cpu(), exact.cpu())
    out = combine_slots(rows, 7, 3, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    # One bf16 rounding of the exact sum (the CPU interpreter truncates where the GPU rounds to nearest).
    assert ((out.float() - exact).abs() <= exact.abs() * 2**-7).all()


def test_fused_moe_rejects_bad_input(device: str) -> None:
    generator = torch.Generator().manual_seed(0)
    x, gate_up, down, ids, weights = (
        t.to(device) for t in make_case(4, 16, 8, 3, 2, torch.float32, generator)
    )
    with pytest.raises(KernelInputError, match="down must be"):
        fused_moe(x, gate_up, down[:, :4], ids, weights)
    with pytest.raises(KernelInputError, match="one shape"):
        fused_moe(x, gate_up, down, ids, weights[:, :1])
    with pytest.raises(KernelInputError, match="share one dtype"):
        fused_moe(x.half(), gate_up, down, ids, weights)
    with pytest.raises(KernelInputError, match="hidden"):
        fused_moe(x[:, :8], gate_up, down, ids, weights)
    with pytest.raises(KernelInputError, match="down_tiles takes"):
        fused_moe(x, gate_up, down, ids, weights, down_tiles={"block_m": 64})
