"""Tensor parallelism (issue 10): two ranks on the CPU over gloo give the single-process answers.

The same code runs over NCCL with one process per GPU (`--tp 2` on a two-GPU node); here the ranks are
CPU processes so CI proves the sharding, the all-reduces and the lockstep engine without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_runtime.config import KeyeConfig
from model_runtime.engine.base import GenerationRequest
from model_runtime.engine.native import NativeEngine
from model_runtime.parallel import TensorParallelEngine, shard_config, shard_tensor

QUERIES = ["When does the red circle appear?", "Find the blue square.", "When?"]


def _assert_same_answers(parallel: list, single: list, abs_tol: float) -> None:
    assert [c.token_ids for c in parallel] == [c.token_ids for c in single]
    for p, s in zip(parallel, single, strict=True):
        assert p.token_logprobs == pytest.approx(s.token_logprobs, abs=abs_tol)


def test_two_ranks_answer_exactly_like_one_process(tiny_ckpt: Path, make_video) -> None:
    video = make_video(n_frames=6)
    requests = [GenerationRequest(q, video, max_new_tokens=8) for q in QUERIES]
    single = NativeEngine(tiny_ckpt).generate(requests)
    engine = TensorParallelEngine(tiny_ckpt, tp=2, device="cpu")
    try:
        assert (
            engine.model.config.text.num_attention_heads
            == KeyeConfig.from_pretrained(tiny_ckpt).text.num_attention_heads // 2
        )
        parallel = engine.generate(requests)
        again = engine.generate(requests[:1])  # the followers keep serving batches
    finally:
        engine.close()
    _assert_same_answers(parallel, single, abs_tol=1e-4)
    assert again[0].token_ids == single[0].token_ids


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("attn_impl", ["reference", "triton"])
# both variants passed on two H200s in 165 s together (session 8); three engines JIT-compile the kernels
@pytest.mark.timeout(600)
def test_two_gpus_over_nccl_answer_like_one(tiny_ckpt: Path, make_video, attn_impl: str) -> None:
    video = make_video(n_frames=6)
    requests = [GenerationRequest(q, video, max_new_tokens=8) for q in QUERIES]
    options = {"device": "cuda", "dtype": torch.float32, "attn_impl": attn_impl, "moe_impl": attn_impl}
    single = NativeEngine(tiny_ckpt, **options).generate(requests)
    engine = TensorParallelEngine(tiny_ckpt, tp=2, **options)
    try:
        parallel = engine.generate(requests)
    finally:
        engine.close()
    _assert_same_answers(parallel, single, abs_tol=1e-3)


def test_fp8_experts_shard_then_quantise(tiny_ckpt: Path, make_video) -> None:
    video = make_video(n_frames=4)
    requests = [GenerationRequest(QUERIES[0], video, max_new_tokens=6)]
    single = NativeEngine(tiny_ckpt, quantize="fp8").generate(requests)
    engine = TensorParallelEngine(tiny_ckpt, tp=2, device="cpu", quantize="fp8")
    try:
        parallel = engine.generate(requests)
    finally:
        engine.close()
    # Block scales of each half differ from the whole's unless the halves are 128-aligned (the tiny
    # expert width is 32), so the answers agree up to FP8 rounding: same first tokens, close log-probs.
    assert parallel[0].token_ids[:2] == single[0].token_ids[:2]


def test_shards_cover_each_weight_once() -> None:
    gate_up = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8)  # E=2, D=3, 2F=8
    halves = [shard_tensor("model.layers.0.mlp.experts.gate_up_proj", gate_up, r, 2) for r in range(2)]
    gates = torch.cat([h[..., :2] for h in halves], dim=-1)
    ups = torch.cat([h[..., 2:] for h in halves], dim=-1)
    assert torch.equal(gates, gate_up[..., :4]) and torch.equal(ups, gate_up[..., 4:])
    o = torch.randn(6, 8)
    assert torch.equal(
        torch.cat([shard_tensor("model.layers.1.self_attn.o_proj.weight", o, r, 2) for r in range(2)], 1), o
    )
    norm = torch.randn(8)
    assert shard_tensor("model.layers.1.input_layernorm.weight", norm, 1, 2) is norm
    vision_q = torch.randn(8, 8)
    assert (
        shard_tensor("visual.vision_model.encoder.layers.0.self_attn.q_proj.weight", vision_q, 1, 2)
        is vision_q
    )


def test_a_tp_that_does_not_divide_the_heads_is_refused(tiny_ckpt: Path) -> None:
    config = KeyeConfig.from_pretrained(tiny_ckpt)
    with pytest.raises(ValueError, match="--tp 3 must divide the model's attention heads"):
        shard_config(config, 3)
    with pytest.raises(ValueError, match="needs tp >= 2"):
        TensorParallelEngine(tiny_ckpt, tp=1, device="cpu")


def test_a_checkpoint_that_cannot_load_fails_fast_and_leaves_no_rank_behind(tmp_path: Path) -> None:
    import shutil

    from model_runtime.checkpoint import init_checkpoint

    broken = init_checkpoint(tmp_path / "ck")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="(?i)safetensor|header|deserializ"):
        TensorParallelEngine(broken, tp=2, device="cpu")
    shutil.rmtree(broken)
    import multiprocessing

    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
    assert not torch.distributed.is_initialized()  # a later engine in this process can start


def test_the_runtime_benchmark_measures_two_ranks_in_lockstep(tmp_path: Path) -> None:
    """`benchmarks.runtime_gpu --tp 2` (the two-GPU report) runs its ranks' collectives to the end."""
    import json
    import subprocess
    import sys

    out = tmp_path / "tp.json"
    command = [sys.executable, "-m", "benchmarks.runtime_gpu", "--size", "tiny", "--device", "cpu", "--tp", "2",
               "--configs", "reference", "--sizes", "300", "--decode-steps", "2", "--out", str(out)]  # fmt: skip
    subprocess.run(command, check=True, timeout=120, capture_output=True)
    report = json.loads(out.read_text())
    assert report["tp"] == 2
    assert [r["what"] for r in report["results"]] == ["prefill", "decode @ 300 context"]
    assert all(r["seconds"] > 0 for r in report["results"])


def _shared_topk_rank(rank: int, port: int, out: str) -> None:
    from types import SimpleNamespace

    import torch.distributed as dist

    from kernels.indexer.reference import indexer_topk_ref
    from model_runtime.model import shared_topk

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        g = torch.Generator().manual_seed(0)
        rows, start, topk = 301, 150, 32  # an odd row count: the last share is short
        iq, iw = torch.randn(rows, 4, 16, generator=g), torch.rand(rows, 4, generator=g)
        ik = torch.randn(start + rows, 16, generator=g)
        kern = SimpleNamespace(indexer_topk=indexer_topk_ref)
        shared = shared_topk(kern, iq, iw, ik, topk, start, dist.group.WORLD)
        if rank == 0:
            torch.save({"shared": shared, "whole": indexer_topk_ref(iq, iw, ik, topk, start)}, out)
    finally:
        dist.destroy_process_group()


def test_ranks_share_the_indexer_rows_and_gather_the_same_selection(tmp_path: Path) -> None:
    """Under --tp each rank scores half the query rows (`shared_topk`); gathered, it is one rank's answer."""
    from tests.conftest import free_port

    out = str(tmp_path / "topk.pt")
    torch.multiprocessing.spawn(_shared_topk_rank, args=(free_port(), out), nprocs=2)
    result = torch.load(out)
    assert result["shared"].shape == (301, 32)
    assert torch.equal(result["shared"], result["whole"])
