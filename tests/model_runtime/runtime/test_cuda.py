"""The native runtime on a CUDA GPU: same answers as the CPU, bf16 works, the Triton kernels plug in."""

from __future__ import annotations

import pytest
import torch

from model_runtime.config import KeyeConfig
from model_runtime.engine.base import GenerationRequest
from model_runtime.engine.native import NativeEngine
from model_runtime.model import KernelLoader, KVCache, Segment
from model_runtime.vlm import KeyeVL, init_weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _requests(video) -> list[GenerationRequest]:
    return [
        GenerationRequest(prompt="When does the red circle appear?", video=video, max_new_tokens=12),
        GenerationRequest(prompt="When does the blue square move?", video=video, max_new_tokens=12),
        GenerationRequest(prompt="Hello", max_new_tokens=6, temperature=0.7, seed=3),
    ]


def test_cuda_fp32_matches_cpu(tiny_ckpt, video) -> None:
    cpu = NativeEngine(tiny_ckpt).generate(_requests(video))
    gpu = NativeEngine(tiny_ckpt, device="cuda", dtype=torch.float32).generate(_requests(video))
    for a, b in zip(cpu, gpu, strict=True):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(
            torch.tensor(a.token_logprobs), torch.tensor(b.token_logprobs), atol=1e-3, rtol=1e-3
        )


def test_cuda_defaults_to_bf16_and_generates(tiny_ckpt, video) -> None:
    engine = NativeEngine(tiny_ckpt, device="cuda")
    assert engine.model.lm_head.weight.dtype == torch.bfloat16
    out = engine.generate(_requests(video))
    assert [len(c.token_ids) for c in out] == [12, 12, 6]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernels_match_reference(dtype: torch.dtype) -> None:
    pytest.importorskip("kernels")
    config = KeyeConfig.tiny()
    config.text.sa.indexer_num_heads = 32  # no exact score ties (see test_model.py)
    model = init_weights(KeyeVL(config), seed=0).to("cuda", dtype).eval()
    _separate_experts(model)
    n = 300
    ids = torch.randint(0, 400, (n,), generator=torch.Generator().manual_seed(0)).cuda()
    pos = torch.arange(n, device="cuda").expand(3, -1)
    with torch.no_grad():
        reference = model(ids, pos)
        model.model.kernels = KernelLoader()
        model.model.set_impl(attn_impl="triton", moe_impl="triton")
        fast = model(ids, pos)
    tol = 2e-3 if dtype == torch.float32 else 0.15
    torch.testing.assert_close(fast, reference, atol=tol, rtol=tol)


def test_full_width_layers_sparse_beyond_2048_tokens() -> None:
    """Two decoder layers at the 30B-A3B widths (32/4×128 heads, 128 experts, indexer 16×64, top-2048):
    exactly dense up to 2048 keys, chunked prefill + cached decode equal one full forward."""
    config = KeyeConfig.full()
    config.text.num_hidden_layers = 2
    config.vision = KeyeConfig.tiny().vision
    torch.manual_seed(0)
    model = init_weights(KeyeVL(config).to("cuda", torch.float32), seed=0).eval()
    _separate_experts(model)
    n, topk = 2600, config.text.sa.topk
    ids = torch.randint(0, 150_000, (n,), device="cuda")
    pos = torch.arange(n, device="cuda").expand(3, -1)
    with torch.no_grad():
        model.model.set_impl(attn_impl="dense")
        dense = model(ids, pos)
        model.model.set_impl(attn_impl="reference")
        sparse = model(ids, pos)
        cache = KVCache(config.text, capacity=16, device="cuda", dtype=torch.float32)
        steps = [model(ids[a : a + 1000], pos[:, a : a + 1000], [Segment(1000, cache)]) for a in (0, 1000)]
        steps += [model(ids[i : i + 1], pos[:, i : i + 1], [Segment(1, cache)]) for i in range(2000, n)]
    torch.testing.assert_close(sparse[:topk], dense[:topk], atol=5e-3, rtol=5e-3)
    assert (sparse[topk:] - dense[topk:]).abs().max() > 1e-3  # selection really happened
    stepwise = torch.cat(steps)
    torch.testing.assert_close(stepwise[:topk], sparse[:topk], atol=5e-3, rtol=5e-3)
    # Beyond top-k, GEMMs of other shapes may flip a near-tied key at the selection boundary of a
    # few rows; nearly every row must still agree.
    row_err = (stepwise[topk:] - sparse[topk:]).abs().amax(-1)
    assert (row_err < 5e-3).float().mean() >= 0.97, row_err


def _separate_experts(model: KeyeVL) -> None:
    """Spread the router logits so no token sits near a tie between its k-th and (k+1)-th expert: with
    random weights such ties are common, and rounding differences between two correct code paths
    would send a token to different experts."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(50.0)


def _decode_model(dtype: torch.dtype) -> KeyeVL:
    """The tiny model on the GPU with the Triton kernels, no exact indexer ties, no near-tied experts."""
    pytest.importorskip("kernels")
    config = KeyeConfig.tiny()
    config.text.sa.indexer_num_heads = 32
    model = init_weights(KeyeVL(config), seed=0).to("cuda", dtype).eval()
    _separate_experts(model)
    model.model.set_impl(attn_impl="triton", moe_impl="triton")
    return model


@pytest.mark.parametrize(
    ("dtype", "fp8_experts", "index_fp8"),
    [
        (torch.float32, False, False),
        (torch.bfloat16, False, False),
        (torch.bfloat16, True, False),
        (torch.bfloat16, False, True),
    ],
)
@torch.no_grad()
def test_captured_decode_replays_the_eager_step_and_matches_the_forward(
    dtype: torch.dtype, fp8_experts: bool, index_fp8: bool, decode_caches
) -> None:
    """Three decode paths over equal caches: the eager forward (prefill kernels), the paged step run eagerly
    (decode kernels), and that step captured once and replayed (model_runtime/decode.py); with FP8 experts too."""
    from model_runtime.decode import DecodeGraph, decode_state
    from model_runtime.model import Fp8Experts, quantize_experts

    model = _decode_model(dtype)
    model.model.set_impl(index_fp8=index_fp8)  # e4m3 indexer keys in the caches too (`decode_caches`)
    if fp8_experts:
        quantize_experts(model)
        assert isinstance(model.model.layers[0].mlp.experts, Fp8Experts)
    forward, eager, graphed = (decode_caches(model, "cuda", dtype) for _ in range(3))
    eager_state, graph_state = decode_state(eager, [8] * 3), decode_state(graphed, [8] * 3)
    assert eager_state is not None and graph_state is not None and len(graph_state.groups) == 2
    graph = DecodeGraph(model, graphed, graph_state)
    tokens = torch.tensor([5, 6, 7], device="cuda")
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for _ in range(8):
        positions = torch.tensor([c.length for c in forward], device="cuda").expand(3, -1)
        embeds = model.model.embed_tokens(tokens)
        want = model.model(embeds, positions, [Segment(1, c) for c in forward])
        stepped = model.model.decode_step(embeds, positions, eager_state)
        for cache in eager:
            cache.length += 1
        replayed = graph.step(graphed, tokens.tolist(), positions[0].tolist())
        torch.testing.assert_close(replayed, stepped, atol=0, rtol=0)  # same kernels, same order
        if not (fp8_experts or index_fp8):
            # (With FP8 experts or the e4m3 indexer, e4m3 rounding of the MoE input or of the next layer's
            # indexer q turns the two attention kernels' last-bit differences into whole e4m3 steps, which the
            # routing and the selection amplify (H200: one key swapped in 4 of 192 values). The paged step's
            # equivalence to the forward is the 16- and 32-bit cases' to show here, and test_decode.py's with
            # e4m3 keys on the CPU; e4m3 keys in the kernel are test_indexer_decode.py's.)
            torch.testing.assert_close(stepped.float(), want.float(), atol=tol, rtol=tol)
        tokens = model.logits(want).argmax(-1)
    assert graph.graph is not None and [c.length for c in graphed] == [c.length for c in forward]


def test_engine_decodes_through_captured_graphs(tiny_ckpt, video) -> None:
    """Greedy answers with graphs equal those without, shared video prefix included; answers of different
    lengths share one capture (the finished one stays frozen in the batch)."""
    from model_runtime.decode import DecodeGraph
    from model_runtime.processor import KeyeProcessor

    model = _decode_model(torch.float32)
    processor = KeyeProcessor.from_pretrained(tiny_ckpt)
    requests = _requests(video)[:2]  # the two questions share the video prefix
    requests[1].max_new_tokens = 5
    plain = NativeEngine.from_model(model, processor, cuda_graphs=False).generate(requests)
    engine = NativeEngine.from_model(model, processor)
    graphed = engine.generate(requests)
    assert engine.decode_graphs == 1 and [len(c.token_ids) for c in graphed] == [12, 5]
    for a, b in zip(plain, graphed, strict=True):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(
            torch.tensor(a.token_logprobs), torch.tensor(b.token_logprobs), atol=1e-3, rtol=1e-3
        )
    cache = KVCache(model.config.text, capacity=8, device="cuda", dtype=torch.float32)
    assert isinstance(engine._decode_graph([cache], [4]), DecodeGraph)


@torch.no_grad()
def test_a_step_that_cannot_be_captured_decodes_eagerly() -> None:
    """The reference MoE loops over experts on the host beyond 64 (token, expert) pairs, which a capture
    refuses: the graph warns once and every step still gives the paged step's answer."""
    from model_runtime.decode import DecodeGraph, decode_state

    model = _decode_model(torch.float32)
    model.model.set_impl(moe_impl="reference")
    text, batch = model.config.text, 33  # 66 pairs with the tiny top-2 routing

    def caches() -> list[KVCache]:
        out = []
        for i in range(batch):
            cache = KVCache(text, capacity=16, device="cuda", dtype=torch.float32)
            ids = torch.randint(0, 400, (6,), generator=torch.Generator().manual_seed(i)).cuda()
            model.model(
                model.model.embed_tokens(ids),
                torch.arange(6, device="cuda").expand(3, -1),
                [Segment(6, cache)],
            )
            out.append(cache)
        return out

    graphed, eager = caches(), caches()
    graph = DecodeGraph(model, graphed, decode_state(graphed, [3] * batch))
    eager_state = decode_state(eager, [3] * batch)
    tokens = torch.arange(batch, device="cuda")
    for step in range(3):
        positions = torch.tensor([c.length for c in eager], device="cuda").expand(3, -1)
        if step == 0:
            with pytest.warns(UserWarning, match="not captured"):
                got = graph.step(graphed, tokens.tolist(), positions[0].tolist())
        else:
            got = graph.step(graphed, tokens.tolist(), positions[0].tolist())
        want = model.model.decode_step(model.model.embed_tokens(tokens), positions, eager_state)
        for cache in eager:
            cache.length += 1
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        tokens = model.logits(want).argmax(-1)
    assert graph.failed and graph.graph is None and [c.length for c in graphed] == [c.length for c in eager]
