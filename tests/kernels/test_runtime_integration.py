"""The tiny Keye model gives the same logits with the Triton kernels as with the reference path.

On the CPU the real Triton kernels run under the interpreter, injected into the model's
`KernelLoader` (which refuses the `kernels` package itself off-CUDA); on a GPU the loader imports
`kernels` as the runtime does for attn_impl="triton" / moe_impl="triton". 32 indexer heads make
exact score ties (which two correct top-k implementations may break differently) practically
impossible, as in M's contract test.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

import kernels

config_module = pytest.importorskip("model_runtime.config")
model_module = pytest.importorskip("model_runtime.model")
vlm_module = pytest.importorskip("model_runtime.vlm")

N_TOKENS = 120  # > the tiny topk, so the indexer really selects


def tiny_model(device: str, dtype: torch.dtype):
    config = config_module.KeyeConfig.tiny()
    config.text.sa.indexer_num_heads = 32
    model = vlm_module.init_weights(vlm_module.KeyeVL(config), seed=0).eval()
    assert config.text.sa.topk < N_TOKENS
    return model.to(device, dtype)


def prompt(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 400, (N_TOKENS,), generator=torch.Generator().manual_seed(0)).to(device)
    base = torch.arange(N_TOKENS, device=device)
    positions = torch.stack([base, base + (base % 3), base + (base % 5)])  # video-like 3-channel positions
    return ids, positions


def logits_both_ways(
    device: str, dtype: torch.dtype, loader, *, fp8: bool = False, index_fp8: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    model = tiny_model(device, dtype)
    if fp8:
        model_module.quantize_experts(model)
    ids, positions = prompt(device)
    with torch.no_grad():
        model.model.set_impl(attn_impl="reference", moe_impl="reference", index_fp8=index_fp8)
        reference = model(ids, positions)
        model.model.kernels = loader
        model.model.set_impl(attn_impl="triton", moe_impl="triton")
        fast = model(ids, positions)
    return fast, reference


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU variants below cover CUDA")
@pytest.mark.parametrize(
    ("fp8", "index_fp8"),
    [(False, False), (True, False), (False, True)],
    ids=["full-precision-experts", "fp8-experts", "fp8-indexer"],
)
def test_tiny_model_triton_kernels_match_reference_on_cpu_interpreter(fp8: bool, index_fp8: bool) -> None:
    scaled_calls = []

    def indexer_topk(*args, **kwargs):  # the real kernel; notes whether it got the e4m3 path
        scaled_calls.append(kwargs.get("scales") is not None)
        return kernels.indexer_topk(*args, **kwargs)

    triton_functions = SimpleNamespace(
        indexer_topk=indexer_topk,
        sparse_attention=kernels.sparse_attention,
        fused_moe=kernels.fused_moe,
        fused_moe_fp8=kernels.fused_moe_fp8,
        # The fused norm differs from the eager one by float32 ulps; the FP8 indexer's e4m3 rounding of q right
        # after it can turn such an ulp into a whole e4m3 step near a selection boundary, so with index_fp8 the
        # comparison keeps the eager norms and isolates the scoring kernels (the other two cases fuse them).
        **({} if index_fp8 else {"rms_norm": kernels.rms_norm}),
    )
    loader = model_module.KernelLoader(triton_functions)
    fast, reference = logits_both_ways("cpu", torch.float32, loader, fp8=fp8, index_fp8=index_fp8)
    assert not fast.isnan().any()
    # With the FP8 indexer the reference scores the rounded values in fp32 and the kernel multiplies their
    # exact e4m3 split: the same scores up to summation order, so the same selections.
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)
    assert scaled_calls and all(called == index_fp8 for called in scaled_calls)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("dtype", "tol"),
    [pytest.param(torch.float32, 2e-3, id="fp32"), pytest.param(torch.bfloat16, 0.15, id="bf16")],
)
def test_tiny_model_triton_kernels_match_reference_on_gpu(dtype: torch.dtype, tol: float) -> None:
    with no_fallback_warning():
        fast, reference = logits_both_ways("cuda", dtype, model_module.KernelLoader())
    torch.testing.assert_close(fast, reference, atol=tol, rtol=tol)


@pytest.mark.gpu
def test_tiny_model_fp8_indexer_kernel_matches_reference_on_gpu() -> None:
    without_fused_norm = SimpleNamespace(  # see the CPU test: e4m3 rounding right after the norm
        **{name: getattr(kernels, name) for name in kernels.__all__ if name != "rms_norm"}
    )
    with no_fallback_warning():
        fast, reference = logits_both_ways(
            "cuda", torch.bfloat16, model_module.KernelLoader(without_fused_norm), index_fp8=True
        )
    torch.testing.assert_close(fast, reference, atol=0.15, rtol=0.15)


@pytest.mark.gpu
def test_tiny_model_fp8_experts_kernel_matches_reference_on_gpu() -> None:
    with no_fallback_warning():
        fast, reference = logits_both_ways("cuda", torch.bfloat16, model_module.KernelLoader(), fp8=True)
    torch.testing.assert_close(fast, reference, atol=0.15, rtol=0.15)


@contextlib.contextmanager
def no_fallback_warning() -> Iterator[None]:
    """Fail if the runtime silently fell back to the reference path (it warns once when it does)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    fallbacks = [w for w in caught if "falls back" in str(w.message)]
    assert not fallbacks, f"triton path fell back: {fallbacks[0].message}"
