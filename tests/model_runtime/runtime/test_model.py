"""The LM: cached decode == full forward, sparse attention vs dense and vs a naive loop, MoE, backends."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from model_runtime.config import KeyeConfig
from model_runtime.model import (
    Attention,
    ForwardContext,
    KernelLoader,
    KVCache,
    Segment,
    causal_attention,
    moe_reference,
    mrope_cos_sin,
    padded_causal_attention,
    similar_lengths,
    topk_masked_attention,
)
from model_runtime.vlm import KeyeVL, init_weights

N_TOKENS = 120  # > the tiny topk (48), so the indexer really selects


@pytest.fixture(scope="module")
def tiny() -> KeyeVL:
    return init_weights(KeyeVL(KeyeConfig.tiny()), seed=0).eval()


def _prompt(n: int = N_TOKENS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 400, (n,), generator=gen)
    # Hand-made 3-channel positions that differ per channel, as a video prompt has.
    base = torch.arange(n)
    positions = torch.stack([base, base + (base % 3), base + (base % 5)])
    return ids, positions


def test_tiny_topk_is_smaller_than_test_prompts(tiny: KeyeVL) -> None:
    assert tiny.config.text.sa.topk < N_TOKENS


@pytest.mark.parametrize("impl", ["dense", "reference"])
def test_full_forward_equals_prefill_then_cached_decode(tiny: KeyeVL, impl: str) -> None:
    tiny.model.set_impl(attn_impl=impl)
    ids, pos = _prompt()
    with torch.no_grad():
        full = tiny(ids, pos)  # [N, V]
        cache = KVCache(tiny.config.text, capacity=4)  # small on purpose: it must grow
        steps = [tiny(ids[:30], pos[:, :30], [Segment(30, cache)])]
        for i in range(30, N_TOKENS):
            steps.append(tiny(ids[i : i + 1], pos[:, i : i + 1], [Segment(1, cache)]))
    assert cache.length == N_TOKENS
    torch.testing.assert_close(torch.cat(steps), full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["dense", "reference"])
def test_chunked_prefill_equals_one_pass(tiny: KeyeVL, impl: str) -> None:
    tiny.model.set_impl(attn_impl=impl)
    ids, pos = _prompt()
    with torch.no_grad():
        full = tiny(ids, pos)
        cache = KVCache(tiny.config.text)
        chunks = [
            tiny(ids[a : a + 37], pos[:, a : a + 37], [Segment(len(ids[a : a + 37]), cache)])
            for a in range(0, N_TOKENS, 37)
        ]
    torch.testing.assert_close(torch.cat(chunks), full, atol=2e-5, rtol=1e-4)


def test_ragged_batch_equals_separate_sequences(tiny: KeyeVL) -> None:
    tiny.model.set_impl(attn_impl="reference")
    (a_ids, a_pos), (b_ids, b_pos) = _prompt(70, seed=1), _prompt(90, seed=2)
    with torch.no_grad():
        alone = [tiny(a_ids, a_pos), tiny(b_ids, b_pos)]
        caches = [KVCache(tiny.config.text), KVCache(tiny.config.text)]
        together = tiny(
            torch.cat([a_ids, b_ids]),
            torch.cat([a_pos, b_pos], 1),
            [Segment(70, caches[0]), Segment(90, caches[1])],
        )
    torch.testing.assert_close(together, torch.cat(alone), atol=2e-5, rtol=1e-4)
    assert [c.length for c in caches] == [70, 90]


@pytest.mark.parametrize("impl", ["dense", "reference"])
def test_fresh_sequences_packed_together_equal_each_alone(tiny: KeyeVL, impl: str) -> None:
    # Training packs dozens of fresh sequences: dense attention runs them as one padded call, the
    # reference sparse path (beyond topk) one by one; either way each must equal its own forward.
    tiny.model.set_impl(attn_impl=impl)
    prompts = [_prompt(n, seed=n) for n in (70, 13, 90, 1)]
    with torch.no_grad():
        alone = torch.cat([tiny(ids, pos) for ids, pos in prompts])
        together = tiny(
            torch.cat([ids for ids, _ in prompts]),
            torch.cat([pos for _, pos in prompts], 1),
            [Segment(len(ids)) for ids, _ in prompts],
        )
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-4)


def test_packed_fresh_sequences_run_under_bf16_autocast(tiny: KeyeVL) -> None:
    """Training's path: several fresh sequences in one dense forward, bf16 autocast (the H200 runs)."""
    tiny.model.set_impl(attn_impl="dense")
    prompts = [_prompt(n, seed=n) for n in (70, 66, 13)]
    ids, pos = torch.cat([i for i, _ in prompts]), torch.cat([p for _, p in prompts], 1)
    segments = [Segment(len(i)) for i, _ in prompts]
    with torch.no_grad():
        full = tiny(ids, pos, segments)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny(ids, pos, segments)
    assert low.isfinite().all()
    assert (low.float().argmax(-1) == full.argmax(-1)).float().mean() > 0.9


def test_padded_attention_matches_causal_attention_per_sequence_with_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 1, 12, 7]
    q = torch.randn(sum(lengths), 4, 8, generator=gen, requires_grad=True)
    k = torch.randn(sum(lengths), 2, 8, generator=gen, requires_grad=True)
    v = torch.randn(sum(lengths), 2, 8, generator=gen, requires_grad=True)
    cuts = torch.tensor([0, *lengths]).cumsum(0).tolist()
    order = [2, 0, 3, 1]  # any subset, in any order: the rows come back sequence after sequence
    packed = padded_causal_attention(q, k, v, [cuts[i] for i in order], [lengths[i] for i in order], 0.3)
    one_by_one = torch.cat(
        [causal_attention(q[cuts[i] : cuts[i + 1]], k[cuts[i] : cuts[i + 1]], v[cuts[i] : cuts[i + 1]], 0, 0.3)
         for i in order]
    )  # fmt: skip
    torch.testing.assert_close(packed, one_by_one, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(packed.square().sum(), (q, k, v))
    expected = torch.autograd.grad(one_by_one.square().sum(), (q, k, v))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_padded_sparse_attention_matches_the_reference_per_sequence_with_gradients() -> None:
    """Training batches run the reference top-k attention as one masked call: same rows, same grads."""
    gen = torch.Generator().manual_seed(1)
    lengths, topk, scale = [30, 3, 41, 17], 9, 0.3  # one sequence shorter than topk: it selects all
    n = sum(lengths)
    q = torch.randn(n, 4, 8, generator=gen, requires_grad=True)
    k = torch.randn(n, 2, 8, generator=gen, requires_grad=True)
    v = torch.randn(n, 2, 8, generator=gen, requires_grad=True)
    iq, iw, ik = (
        torch.randn(n, 3, 6, generator=gen),
        torch.randn(n, 3, generator=gen),
        torch.randn(n, 6, generator=gen),
    )
    ik[40:60] = ik[40]  # ties: a run of keys that score the same, broken toward the earlier key
    cuts = torch.tensor([0, *lengths]).cumsum(0).tolist()
    order = [2, 0, 3, 1]
    packed = padded_causal_attention(
        q, k, v, [cuts[i] for i in order], [lengths[i] for i in order], scale, (iq, iw, ik, topk)
    )
    one_by_one = []
    for i in order:
        r = slice(cuts[i], cuts[i + 1])
        one_by_one.append(
            topk_masked_attention(q[r], k[r], v[r], iq[r], iw[r], ik[r], 0, topk, scale, q_chunk=8)
        )
    expected_rows = torch.cat(one_by_one)
    assert packed.isfinite().all()
    torch.testing.assert_close(packed, expected_rows, atol=1e-6, rtol=1e-5)
    dense = padded_causal_attention(q, k, v, [cuts[i] for i in order], [lengths[i] for i in order], scale)
    assert not torch.allclose(packed, dense, atol=1e-3)  # the selection really dropped keys
    grads = torch.autograd.grad(packed.square().sum(), (q, k, v))
    expected = torch.autograd.grad(expected_rows.square().sum(), (q, k, v))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_batch_of_fresh_sequences_gives_each_its_own_forward_logits(tiny: KeyeVL) -> None:
    """The packed training path (dense and reference) = each sequence alone through the model."""
    prompts = [_prompt(n, seed=n) for n in (N_TOKENS, 20, 77)]  # 20 ≤ topk: dense; the others select
    ids = torch.cat([p[0] for p in prompts])
    positions = torch.cat([p[1] for p in prompts], dim=1)
    try:
        for impl in ("reference", "dense"):
            tiny.model.set_impl(attn_impl=impl)
            with torch.no_grad():
                packed = tiny(ids, positions, [Segment(len(p[0])) for p in prompts])
                alone = torch.cat([tiny(p[0], p[1]) for p in prompts])
            torch.testing.assert_close(packed, alone, atol=2e-4, rtol=1e-4)
    finally:
        tiny.model.set_impl(attn_impl="reference")


def test_similar_lengths_bound_the_padding_and_cover_every_sequence() -> None:
    lengths = [400, 2600, 380, 420, 2500, 1, 390]
    groups = similar_lengths(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        padded = len(group) * max(lengths[i] for i in group) ** 2
        assert padded <= 2 * sum(lengths[i] ** 2 for i in group)
    assert len(groups) <= 3  # the short crops share a call, the whole chunks another
    assert similar_lengths([]) == [] and similar_lengths([5]) == [[0]]


def test_sparse_selection_changes_the_output_beyond_topk(tiny: KeyeVL) -> None:
    ids, pos = _prompt()
    with torch.no_grad():
        tiny.model.set_impl(attn_impl="dense")
        dense = tiny(ids, pos)
        tiny.model.set_impl(attn_impl="reference")
        sparse = tiny(ids, pos)
    topk = tiny.config.text.sa.topk
    # Exactly dense while every causal range fits in topk, different after.
    torch.testing.assert_close(sparse[:topk], dense[:topk], atol=2e-5, rtol=1e-4)
    assert (sparse[topk:] - dense[topk:]).abs().max() > 1e-3


def _attention_inputs(seed: int = 0, n: int = N_TOKENS):
    config = KeyeConfig.tiny().text
    torch.manual_seed(seed)
    attn = Attention(config, 0)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3) if p.ndim > 1 else torch.nn.init.uniform_(p, 0.5, 1.5)
    x = torch.randn(n, config.hidden_size)
    _, pos = _prompt(n, seed)
    ctx = ForwardContext(
        segments=[Segment(n)],
        starts=[0],
        rope=mrope_cos_sin(pos, config.head_dim, config.mrope_section, config.rope_theta),
        index_rope=mrope_cos_sin(
            pos, config.sa.indexer_head_dim, config.indexer_mrope_section, config.rope_theta
        ),
        attn_impl="reference",
        moe_impl="reference",
        kernels=KernelLoader(),
    )
    q, k, v = attn.project(x, ctx)
    iq, iw, ik = attn.sa_indexer(x, ctx.index_rope)
    return attn, q, k, v, iq, iw, ik


def test_topk_mask_with_topk_at_least_length_equals_dense() -> None:
    _, q, k, v, iq, iw, ik = _attention_inputs()
    scale = q.shape[-1] ** -0.5
    dense = causal_attention(q, k, v, 0, scale)
    masked = topk_masked_attention(q, k, v, iq, iw, ik, 0, N_TOKENS, scale, q_chunk=16)
    torch.testing.assert_close(masked, dense, atol=1e-5, rtol=1e-5)


def _naive_sparse(q, k, v, iq, iw, ik, topk: int, scale: float) -> torch.Tensor:
    """Per query: score every causal key one by one, keep the topk best (ties to the earlier key),
    softmax over exactly those keys, per head with its kv group."""
    n, n_heads, _ = q.shape
    group = n_heads // k.shape[1]
    out = torch.zeros_like(q)
    for t in range(n):
        scores = []
        for s in range(t + 1):
            scores.append(
                sum(float(iw[t, j]) * max(0.0, float(iq[t, j] @ ik[s])) for j in range(iq.shape[1]))
            )
        order = sorted(range(t + 1), key=lambda s: (-scores[s], s))[:topk]
        keep = torch.tensor(sorted(order))
        for h in range(n_heads):
            logits = (k[keep, h // group] @ q[t, h]) * scale
            out[t, h] = logits.softmax(0) @ v[keep, h // group]
    return out


@pytest.mark.parametrize("topk", [8, 33])
def test_topk_mask_equals_naive_loop_over_selected_keys(topk: int) -> None:
    n = 60
    _, q, k, v, iq, iw, ik = _attention_inputs(seed=1, n=n)
    scale = q.shape[-1] ** -0.5
    with torch.no_grad():
        masked = topk_masked_attention(q, k, v, iq, iw, ik, 0, topk, scale, q_chunk=7, tile_elements=4096)
        naive = _naive_sparse(q, k, v, iq, iw, ik, topk, scale)
    torch.testing.assert_close(masked, naive, atol=1e-5, rtol=1e-4)


def test_topk_mask_with_history_equals_without() -> None:
    """A query block that starts after cached keys selects as the same rows of a full pass."""
    _, q, k, v, iq, iw, ik = _attention_inputs(seed=2)
    scale = q.shape[-1] ** -0.5
    with torch.no_grad():
        full = topk_masked_attention(q, k, v, iq, iw, ik, 0, 20, scale, q_chunk=64)
        tail = topk_masked_attention(q[90:], k, v, iq[90:], iw[90:], ik, 90, 20, scale, q_chunk=64)
        last = topk_masked_attention(q[-1:], k, v, iq[-1:], iw[-1:], ik, N_TOKENS - 1, 20, scale, q_chunk=64)
    torch.testing.assert_close(tail, full[90:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(last, full[-1:], atol=1e-6, rtol=1e-5)  # the decode gather path


@pytest.mark.parametrize("n", [13, 70])  # 26 pairs: gathered weights; 140 pairs: loop over experts
def test_moe_reference_equals_per_token_loop(n: int) -> None:
    torch.manual_seed(0)
    d, f, e, k = 16, 8, 6, 2
    x = torch.randn(n, d)
    gate_up, down = torch.randn(e, d, 2 * f), torch.randn(e, f, d)
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(n)])
    weights = torch.rand(n, k)
    expected = torch.zeros(n, d)
    for t in range(n):
        for slot in range(k):
            h = x[t] @ gate_up[ids[t, slot]]
            expected[t] += weights[t, slot] * ((torch.nn.functional.silu(h[:f]) * h[f:]) @ down[ids[t, slot]])
    torch.testing.assert_close(moe_reference(x, gate_up, down, ids, weights), expected, atol=1e-4, rtol=1e-5)


def test_router_renormalises_top_k_softmax(tiny: KeyeVL) -> None:
    moe = tiny.model.layers[0].mlp
    x = torch.randn(5, tiny.config.text.hidden_size)
    ids, weights = moe.route(x)
    probs = moe.gate(x).softmax(-1)
    assert ids.shape == (5, tiny.config.text.num_experts_per_tok)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5))
    torch.testing.assert_close(weights, probs.gather(1, ids) / probs.gather(1, ids).sum(-1, keepdim=True))


def test_triton_falls_back_to_reference_with_one_warning_on_cpu(tiny: KeyeVL) -> None:
    ids, pos = _prompt()
    with torch.no_grad():
        tiny.model.set_impl(attn_impl="reference", moe_impl="reference")
        reference = tiny(ids, pos)
        tiny.model.set_impl(attn_impl="triton", moe_impl="triton")
        tiny.model.kernels = KernelLoader()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fallback = tiny(ids, pos)
            tiny(ids, pos)
        tiny.model.set_impl(attn_impl="reference", moe_impl="reference")
    assert len([w for w in caught if "falls back" in str(w.message)]) == 1
    torch.testing.assert_close(fallback, reference)


def test_bad_arguments_are_refused(tiny: KeyeVL) -> None:
    ids, pos = _prompt(10)
    with pytest.raises(ValueError, match="attn_impl"):
        tiny.model.set_impl(attn_impl="flash")
    with pytest.raises(ValueError, match="segments cover"):
        tiny(ids, pos, [Segment(4)])
    with pytest.raises(ValueError, match="positions"):
        tiny(ids, pos[:, :5])
    with pytest.raises(ValueError, match="visual placeholders"):
        tiny(torch.full((3,), tiny.config.video_token_id), torch.zeros(3, 3, dtype=torch.long))


def test_branch_reads_its_parent_and_equals_a_fork(tiny: KeyeVL) -> None:
    tiny.model.set_impl(attn_impl="reference")
    ids, pos = _prompt()
    prefix = KVCache(tiny.config.text)
    with torch.no_grad():
        tiny(ids[:70], pos[:, :70], [Segment(70, prefix)])
        branch, fork = prefix.branch(extra_capacity=2), prefix.fork()
        via_branch = tiny(ids[70:], pos[:, 70:], [Segment(50, branch)])  # grows past its capacity
        via_fork = tiny(ids[70:], pos[:, 70:], [Segment(50, fork)])
    assert branch.k.shape[1] >= 50 and branch.length == fork.length == N_TOKENS
    torch.testing.assert_close(via_branch, via_fork, atol=0, rtol=0)
    torch.testing.assert_close(branch.fork().k[:, :N_TOKENS], fork.k[:, :N_TOKENS], atol=0, rtol=0)
    with torch.no_grad():
        tiny(ids[:1], pos[:, :1], [Segment(1, prefix)])  # the parent grows: its branches are invalid
        with pytest.raises(RuntimeError, match="grew"):
            tiny(ids[:1], pos[:, :1], [Segment(1, branch)])


def test_fork_is_independent(tiny: KeyeVL) -> None:
    ids, pos = _prompt(20)
    cache = KVCache(tiny.config.text)
    with torch.no_grad():
        tiny(ids[:10], pos[:, :10], [Segment(10, cache)])
        twin = cache.fork(extra_capacity=10)
        tiny(ids[10:], pos[:, 10:], [Segment(10, twin)])
    assert (cache.length, twin.length) == (10, 20)
    assert torch.equal(twin.k[:, :10], cache.k[:, :10])


def test_triton_path_follows_the_kernel_contract() -> None:
    """The 'triton' code path, fed the kernels' plain-PyTorch twins, equals the reference path.

    Many indexer heads make an exact tie (a score of exactly 0 because every head's ReLU is 0)
    practically impossible; the two top-k implementations break such ties differently, both rightly.
    """
    kernels = pytest.importorskip("kernels")
    config = KeyeConfig.tiny()
    config.text.sa.indexer_num_heads = 32
    tiny = init_weights(KeyeVL(config), seed=0).eval()
    twins = _reference_twins(kernels)
    ids, pos = _prompt()
    with torch.no_grad():
        tiny.model.set_impl(attn_impl="reference", moe_impl="reference")
        reference = tiny(ids, pos)
        saved, tiny.model.kernels = tiny.model.kernels, KernelLoader(twins)
        tiny.model.set_impl(attn_impl="triton", moe_impl="triton")
        try:
            contract = tiny(ids, pos)
        finally:
            tiny.model.kernels = saved
            tiny.model.set_impl(attn_impl="reference", moe_impl="reference")
    torch.testing.assert_close(contract, reference, atol=1e-4, rtol=1e-4)


def _reference_twins(kernels, **replaced) -> SimpleNamespace:
    """What the runtime's `KernelLoader` hands out, as the kernels' plain-PyTorch twins (some replaced)."""
    twins = {
        "indexer_topk": kernels.indexer_topk_ref,
        "sparse_attention": kernels.sparse_attention_ref,
        "fused_moe": kernels.fused_moe_ref,
        "rms_norm": kernels.rms_norm_ref,
    }
    return SimpleNamespace(**{**twins, **replaced})


def test_gradients_flow_through_the_sparse_path() -> None:
    """Training runs the same forward: the LM loss reaches attention and experts (the top-k choice
    itself is not differentiable, so the indexer gets no gradient from it, as in the paper)."""
    model = init_weights(KeyeVL(KeyeConfig.tiny()), seed=0)
    ids, pos = _prompt()
    logits = model(ids, pos)
    torch.nn.functional.cross_entropy(logits[:-1], ids[1:]).backward()
    layer = model.model.layers[1]
    for param in (
        layer.self_attn.q_proj.weight,
        layer.self_attn.k_norm.weight,
        layer.mlp.experts.down_proj,
        layer.mlp.gate.weight,
        model.model.embed_tokens.weight,
    ):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0
    assert layer.self_attn.sa_indexer.k_proj.weight.grad is None


def test_fused_norms_are_skipped_where_autograd_needs_the_eager_ones() -> None:
    """attn_impl="triton" runs the norms as one kernel only without autograd (the kernel has no backward) and
    only on even dims; with gradients on, the same model takes the eager norms and its loss still trains them."""
    kernels = pytest.importorskip("kernels")
    calls: list[tuple[int, ...]] = []

    def counting_norm(x, weight, eps, rope=None):  # the real oracle, counted
        calls.append(tuple(x.shape))
        return kernels.rms_norm_ref(x, weight, eps, rope)

    twins = _reference_twins(kernels, rms_norm=counting_norm)
    model = init_weights(KeyeVL(KeyeConfig.tiny()), seed=0)
    model.model.kernels = KernelLoader(twins)
    model.model.set_impl(attn_impl="triton", moe_impl="triton")
    ids, pos = _prompt()
    with torch.no_grad():
        model(ids, pos)
    layers = len(model.model.layers)
    # per layer: two layer norms, q, k and the indexer's q; then the final norm
    assert len(calls) == 5 * layers + 1
    calls.clear()
    logits = model(ids, pos)
    assert calls == []
    torch.nn.functional.cross_entropy(logits[:-1], ids[1:]).backward()
    assert model.model.layers[0].self_attn.q_norm.weight.grad is not None


@torch.no_grad()
def test_fused_input_projections_keep_the_forward_and_the_checkpoint_names() -> None:
    """One GEMM for q, k, v and the indexer's q and k (engines fuse them): the same logits, the five weights
    become views of the fused one (no second copy), and state_dict still names every checkpoint tensor."""
    model = init_weights(KeyeVL(KeyeConfig.tiny()), seed=0).eval()
    ids, positions = _prompt()
    names = set(model.state_dict())
    before = model(ids, positions)
    model.model.fuse_input_projections()
    attn = model.model.layers[1].self_attn
    assert attn.in_proj is not None
    storage = attn.in_proj.untyped_storage().data_ptr()
    assert all(lin.weight.untyped_storage().data_ptr() == storage for lin in attn.input_linears())
    torch.testing.assert_close(model(ids, positions), before, atol=1e-5, rtol=1e-5)
    assert set(model.state_dict()) == names
    model.model.fuse_input_projections()  # a second call changes nothing
    assert attn.in_proj.untyped_storage().data_ptr() == storage
