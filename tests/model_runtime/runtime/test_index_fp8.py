"""The indexer's FP8 path (spec §2.2 steps 4-5): values on the e4m3 grid, an exact re-split for the FP8
kernel, the kernels' own quantiser's values, and a model flag that reaches the indexer and the cache."""

from __future__ import annotations

import pytest
import torch

from model_runtime.config import KeyeConfig
from model_runtime.index_fp8 import E4M3_MAX, hadamard, round_fp8, split_fp8
from model_runtime.model import KVCache, Segment, mrope_cos_sin
from model_runtime.vlm import KeyeVL, init_weights


def vectors(seed: int = 0) -> torch.Tensor:
    """[40, 64] vectors with an outlier channel and magnitudes from 1e-3 to 1e3."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 64, generator=gen)
    x[:, 5] *= 30.0
    return x * torch.logspace(-3, 3, 40)[:, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rounded_values_split_back_exactly(dtype: torch.dtype) -> None:
    rounded = round_fp8(vectors().to(dtype))
    assert rounded.dtype == dtype
    q, scale = split_fp8(rounded)
    assert q.dtype == torch.float8_e4m3fn
    assert torch.equal(torch.exp2(torch.log2(scale).round()), scale)  # powers of two
    assert float(q.float().abs().max()) <= E4M3_MAX
    assert torch.equal((q.float() * scale[:, None]).to(dtype), rounded)


def test_round_fp8_is_the_kernels_quantiser() -> None:
    kernels = pytest.importorskip("kernels")
    x = vectors(1)
    q8, scale = kernels.quantize_indexer_fp8_ref(x)  # rotates, then quantises (the FP8 kernel's oracle input)
    assert torch.equal(round_fp8(x), q8.float() * scale[:, None])


def test_rotation_keeps_dot_products_and_rounding_stays_close() -> None:
    x, y = vectors(2), vectors(3)
    h = hadamard(64, x.device)
    torch.testing.assert_close((x @ h) @ (y @ h).T, x @ y.T, rtol=1e-5, atol=1e-3)
    exact, rounded = x @ y.T, round_fp8(x) @ round_fp8(y).T
    rel = (rounded - exact).norm() / exact.norm()
    assert 0 < rel < 0.05  # e4m3 keeps 3 mantissa bits: a few percent, never zero


def test_a_width_that_is_not_a_power_of_two_is_refused() -> None:
    with pytest.raises(ValueError, match="power-of-two"):
        round_fp8(torch.ones(3, 48))


def test_the_model_flag_rounds_the_indexer_outputs_and_the_cache_keeps_them() -> None:
    model = init_weights(KeyeVL(KeyeConfig.tiny()), seed=0).eval()
    text = model.config.text
    n = text.sa.topk + 20  # past the top-k, so keys are really selected
    ids = torch.randint(0, 400, (n,), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(n).expand(3, n)
    indexer = model.model.layers[0].self_attn.sa_indexer
    x = torch.randn(n, text.hidden_size, generator=torch.Generator().manual_seed(1))
    rope = mrope_cos_sin(positions, text.sa.indexer_head_dim, text.indexer_mrope_section, text.rope_theta)
    with torch.no_grad():
        q, w, k = indexer(x, rope)
        q8, w8, k8 = indexer(x, rope, fp8=True)
        assert torch.equal(w8, w)
        assert torch.equal(q8, round_fp8(q)) and torch.equal(k8, round_fp8(k))
        keys = {}
        for flag in (True, False):
            model.model.set_impl(index_fp8=flag)
            cache = KVCache(text, capacity=8)
            model(ids, positions, [Segment(n, cache)])
            keys[flag] = cache.read(0, n)[2]
    assert not model.model.index_fp8
    for flag, stored in keys.items():  # only FP8-rounded keys lie on the e4m3 grid times their scales
        q, scale = split_fp8(stored)
        assert torch.equal(q.float() * scale[:, None], stored) == flag


def test_an_e4m3_index_cache_gives_the_same_logits_as_a_full_precision_one() -> None:
    """Prefill past the top-k, then decode: the e4m3 + scale cache (grown, branched and forked on the way)
    holds the rounded keys exactly, so every step's logits are those of a cache in the model's dtype."""
    model = init_weights(KeyeVL(KeyeConfig.tiny()), seed=0).eval()
    model.model.set_impl(index_fp8=True)
    text = model.config.text
    n = text.sa.topk + 30
    ids = torch.randint(0, 400, (n,), generator=torch.Generator().manual_seed(2))
    positions = torch.arange(n).expand(3, n)
    logits = {}
    with torch.no_grad():
        for fp8_cache in (False, True):
            prefix = KVCache(text, capacity=4, index_fp8=fp8_cache)  # small: it must grow
            steps = [model(ids[:40], positions[:, :40], [Segment(40, prefix)])]
            branch = prefix.branch(extra_capacity=2)
            for i in range(40, n - 10):
                steps.append(model(ids[i : i + 1], positions[:, i : i + 1], [Segment(1, branch)]))
            twin = branch.fork(extra_capacity=10)
            steps.append(model(ids[n - 10 :], positions[:, n - 10 :], [Segment(10, twin)]))
            logits[fp8_cache] = torch.cat(steps)
            if fp8_cache:
                assert twin.index_k.dtype == torch.float8_e4m3fn and twin.index_k.element_size() == 1
                assert twin.index_scale is not None and twin.index_scale.dtype == torch.float32
    assert torch.equal(logits[True], logits[False])
