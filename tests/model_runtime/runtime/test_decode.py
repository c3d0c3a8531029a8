"""Decode through device-side page tables (model_runtime/decode.py) == the eager cached forward; branches carved
from a prefix's spare rows share its storage. The CUDA graph around the step is tested in test_cuda.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model_runtime.config import KeyeConfig
from model_runtime.decode import decode_state
from model_runtime.model import KernelLoader, KVCache, Segment
from model_runtime.vlm import KeyeVL, init_weights

kernels = pytest.importorskip("kernels")


@pytest.fixture(scope="module")
def model() -> KeyeVL:
    config = KeyeConfig.tiny()
    config.text.sa.indexer_num_heads = 32  # no exact score ties at the top-k boundary (see test_model.py)
    model = init_weights(KeyeVL(config), seed=0).eval()
    # The decode kernels' plain-PyTorch twins: the same contract on the CPU.
    twins = {
        "indexer_decode_topk": kernels.indexer_decode_topk_ref,
        "sparse_decode": kernels.sparse_decode_ref,
        "indexer_topk": kernels.indexer_topk_ref,
        "sparse_attention": kernels.sparse_attention_ref,
        "fused_moe": kernels.fused_moe_ref,
        "rms_norm": kernels.rms_norm_ref,
    }
    model.model.kernels = KernelLoader(SimpleNamespace(**twins))
    return model


@pytest.fixture
def index_fp8(model: KeyeVL, request: pytest.FixtureRequest):
    """The model's indexer arithmetic for one test (e4m3-rounded q and k, keys cached as e4m3 + scale)."""
    model.model.set_impl(index_fp8=request.param)
    yield request.param
    model.model.set_impl(index_fp8=False)


@pytest.mark.parametrize("index_fp8", [False, True], indirect=True, ids=["bf16-keys", "e4m3-keys"])
@torch.no_grad()
def test_decode_steps_equal_the_eager_forward(model: KeyeVL, index_fp8: bool, decode_caches) -> None:
    eager, paged = decode_caches(model), decode_caches(model)  # e4m3 indexer keys with index_fp8
    state = decode_state(paged, steps=[5, 5, 5])
    assert state is not None
    assert [(g.lo, g.hi) for g in state.groups] == [(0, 2), (2, 3)]  # the branches share one launch
    tokens = torch.tensor([5, 6, 7])
    for _ in range(5):
        positions = torch.tensor([c.length for c in eager]).expand(3, -1)
        embeds = model.model.embed_tokens(tokens)
        want = model.model(embeds, positions, [Segment(1, c) for c in eager])
        got = model.model.decode_step(embeds, positions, state)
        for cache in paged:
            cache.length += 1
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        tokens = model.logits(want).argmax(-1)
    for a, b in zip(eager, paged, strict=True):  # the keys landed where the eager forward put them
        for layer in range(model.config.text.num_hidden_layers):
            for x, y in zip(a.read(layer, a.length), b.read(layer, b.length), strict=True):
                torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_a_finished_sequence_stays_frozen_while_the_others_decode(model: KeyeVL, decode_caches) -> None:
    """A sequence marked inactive neither advances nor disturbs its keys or its neighbours' (the engine keeps
    finished answers in the captured batch instead of capturing again)."""
    eager, paged = decode_caches(model), decode_caches(model)
    state = decode_state(paged, steps=[4, 2, 4])
    assert state is not None
    tokens = torch.tensor([5, 6, 7])
    for step in range(4):
        live = [0, 1, 2] if step < 2 else [0, 2]
        state.set_active([i in live for i in range(3)])
        embeds = model.model.embed_tokens(tokens)
        positions = torch.tensor([c.length for c in paged]).expand(3, -1)
        got = model.model.decode_step(embeds, positions, state)
        want = model.model(embeds[live], positions[:, live], [Segment(1, eager[i]) for i in live])
        for i in live:
            paged[i].length += 1
        torch.testing.assert_close(got[live], want, atol=1e-5, rtol=1e-5)
    assert [c.length for c in paged] == [c.length for c in eager]
    for a, b in zip(eager, paged, strict=True):
        for layer in range(model.config.text.num_hidden_layers):
            for x, y in zip(a.read(layer, a.length), b.read(layer, b.length), strict=True):
                torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)


def test_branches_take_the_prefix_spare_rows() -> None:
    text = KeyeConfig.tiny().text
    prefix = KVCache(text, capacity=8, spare=10)
    prefix.length = 8
    first, second = prefix.branch(extra_capacity=4), prefix.branch(extra_capacity=4)
    third = prefix.branch(extra_capacity=4)  # 2 spare rows left: its own storage
    assert first.storage[0] is prefix.storage[0] is second.storage[0]
    assert third.storage[0] is not prefix.storage[0]
    np.testing.assert_array_equal(first.storage_rows(), [*range(8), 8, 9, 10, 11])
    np.testing.assert_array_equal(second.storage_rows(), [*range(8), 12, 13, 14, 15])
    assert third.storage_rows() is None  # its rows and its parent's live apart: no single page table
    first.length = 9
    grandchild = first.branch(
        extra_capacity=2
    )  # a carved branch has no spare rows: it never takes a sibling's
    assert grandchild.storage[0] is not prefix.storage[0]
    second.k[0, 0] = 1.0  # a branch writes only its own rows
    assert prefix.storage[0][0, 12].eq(1.0).all() and prefix.k.eq(0).all() and first.k.eq(0).all()


def test_a_branch_that_grows_moves_to_storage_of_its_own() -> None:
    text = KeyeConfig.tiny().text
    prefix = KVCache(text, capacity=4, spare=2)
    prefix.length = 4
    branch = prefix.branch(extra_capacity=2)
    branch.k[0, :2] = 3.0
    branch.length = 6
    branch.reserve(1)
    assert branch.storage[0] is not prefix.storage[0] and branch.k[0, :2].eq(3.0).all()
    assert decode_state([branch], steps=[1]) is None
