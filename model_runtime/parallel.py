"""Tensor parallelism (`--tp N`): one process per GPU, each holding 1/N of the attention heads and of every
expert's FFN width, with one all-reduce after attention and one after the MoE of each layer.

The split follows the usual Megatron pattern, chosen so that the memory planner's numbers hold
(`memory_plan`: heads, KV heads and `moe_intermediate_size` divided by tp):

- q/k/v projections are split by heads (column-parallel) and `o_proj` by its input (row-parallel): each
  rank attends with its heads over its share of the KV cache and adds a partial output;
- every expert's gate/up columns and down rows are split (the router and the top-k choice stay whole,
  so every rank routes each token to the same experts) and each rank adds a partial FFN output;
- the sa_indexer, norms, embeddings, lm_head and the vision tower are replicated: the indexer's top-k
  is shared by all heads (spec §2.1), so every rank computes the same selection from the same input.

After each all-reduce every rank holds the same hidden states, so all ranks take the same greedy (or
seeded) decisions and run the same engine code in lockstep. `TensorParallelEngine` is that engine: the
caller's process is rank 0 and starts the other ranks as processes; each request batch is broadcast
to them and every rank runs `NativeEngine.generate` on its shard.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from model_runtime.checkpoint import CheckpointReader, model_dtype, read_parameter
from model_runtime.config import KeyeConfig
from model_runtime.engine.base import Completion, GenerationRequest
from model_runtime.engine.native import NativeEngine
from model_runtime.fp8 import FP8, dequantize_blocks, is_scale, quantize_blocks
from model_runtime.model import Attention, SparseMoe, use_fp8_experts
from model_runtime.processor import KeyeProcessor, ModelInputs
from model_runtime.vlm import KeyeVL


def shard_config(config: KeyeConfig, tp: int) -> KeyeConfig:
    """The config of one rank's shard: heads, KV heads and expert width divided by `tp`."""
    text = config.text
    for what, n in (("attention heads", text.num_attention_heads), ("KV heads", text.num_key_value_heads),
                    ("moe_intermediate_size", text.moe_intermediate_size)):  # fmt: skip
        if n % tp:
            raise ValueError(f"--tp {tp} must divide the model's {what} ({n})")
    local = dataclasses.replace(
        text,
        num_attention_heads=text.num_attention_heads // tp,
        num_key_value_heads=text.num_key_value_heads // tp,
        moe_intermediate_size=text.moe_intermediate_size // tp,
    )
    return dataclasses.replace(config, text=local)


def shard_tensor(name: str, full: Tensor, rank: int, tp: int) -> Tensor:
    """This rank's slice of a checkpoint tensor (the whole tensor where the weight is replicated)."""
    if tp == 1 or not name.startswith("model.layers."):  # the vision tower is replicated
        return full
    if name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")) or (
        name.endswith(("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"))
    ):
        return full.chunk(tp, dim=0)[rank]
    if name.endswith("self_attn.o_proj.weight"):
        return full.chunk(tp, dim=1)[rank]
    if name.endswith("self_attn.o_proj.bias"):
        return full if rank == 0 else torch.zeros_like(full)  # added once, by the sum
    if name.endswith("mlp.experts.gate_up_proj"):  # [E, D, 2F]: gate columns, then up columns
        gate, up = full.chunk(2, dim=-1)
        return torch.cat([gate.chunk(tp, dim=-1)[rank], up.chunk(tp, dim=-1)[rank]], dim=-1)
    if name.endswith("mlp.experts.down_proj"):  # [E, F, D]
        return full.chunk(tp, dim=1)[rank]
    return full


def load_shard(
    ckpt_dir: str | Path,
    rank: int,
    tp: int,
    group: Any,
    *,
    device: torch.device,
    dtype: torch.dtype | str | None = None,
    attn_impl: str = "reference",
    moe_impl: str = "reference",
    quantize: str | None = None,
) -> KeyeVL:
    """Rank `rank`'s shard of the checkpoint, read tensor by tensor, all-reducing within `group`.

    FP8 experts are quantised after slicing (a pre-quantised checkpoint is dequantised, sliced and
    re-quantised; with slices on 128-column boundaries that is exact).
    """
    full_config = KeyeConfig.from_pretrained(ckpt_dir)
    config = shard_config(full_config, tp)
    dtype = model_dtype(dtype, device)
    fp8 = quantize == "fp8" or full_config.fp8_experts
    with torch.device("meta"):
        model = KeyeVL(config, attn_impl=attn_impl, moe_impl=moe_impl).to(dtype)
        if fp8:
            use_fp8_experts(model)
    model = model.to_empty(device=device)
    reader = CheckpointReader(ckpt_dir)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, param in params.items():
            if is_scale(name) or (config.text.tie_word_embeddings and name == "lm_head.weight"):
                continue
            full = read_parameter(reader, name, param.shape)
            if full.dtype == FP8:
                full = dequantize_blocks(full, reader.get(name + "_scale_inv"), dtype)
            local = shard_tensor(name, full, rank, tp).to(device)
            if param.dtype == FP8:
                local, scale = quantize_blocks(local)
                params[name + "_scale_inv"].copy_(scale)
            if tuple(local.shape) != tuple(param.shape):
                raise ValueError(f"{name}: shard {list(local.shape)} does not fit {list(param.shape)}")
            param.copy_(local)
    if config.text.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    for module in model.modules():
        if isinstance(module, (Attention, SparseMoe)):
            module.tp_group = group
    return model.eval()


# ---- the engine: rank 0 in the caller's process, the other ranks in processes it starts -------------


class TensorParallelEngine:
    """`NativeEngine` over `tp` processes (one per GPU, NCCL; or gloo on the CPU for tests).

    Same interface as the native engine (`generate`, `processor`, `close`), so the Celery task and the
    grounding code use it unchanged.
    """

    name = "native"

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        tp: int,
        device: str = "cuda",
        dtype: torch.dtype | str | None = None,
        attn_impl: str = "reference",
        moe_impl: str = "reference",
        quantize: str | None = None,
        index_fp8: bool = False,
        max_batch: int = 8,
        cuda_graphs: bool = True,  # accepted for a uniform interface: tensor-parallel ranks decode eagerly
        port: int | None = None,
    ):
        if tp < 2:
            raise ValueError("TensorParallelEngine needs tp >= 2 (use NativeEngine for one device)")
        on_gpu = device.startswith("cuda")
        if on_gpu and torch.cuda.device_count() < tp:
            raise ValueError(f"--tp {tp} needs {tp} GPUs; this machine has {torch.cuda.device_count()}")
        options = {"checkpoint": str(checkpoint), "tp": tp, "on_gpu": on_gpu, "dtype": dtype, "attn_impl": attn_impl,
                   "moe_impl": moe_impl, "quantize": quantize, "index_fp8": index_fp8, "max_batch": max_batch,
                   "port": port or _free_port()}  # fmt: skip
        context = mp.get_context("spawn")
        self._followers = [
            context.Process(target=_follow, args=(r, options), daemon=True) for r in range(1, tp)
        ]
        for process in self._followers:
            process.start()
        try:
            self._engine = _rank_engine(0, options)
        except BaseException:  # a rank that cannot load: the others would wait for it forever
            for process in self._followers:
                process.terminate()
                process.join(timeout=10)
            if dist.is_initialized():
                dist.destroy_process_group()
            raise
        self.processor: KeyeProcessor = self._engine.processor
        self.model = self._engine.model
        self.tp = tp

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        dist.broadcast_object_list([("generate", list(requests))], src=0)
        return self._engine.generate(requests)

    def generate_encoded(self, items: Sequence[tuple[GenerationRequest, ModelInputs]]) -> list[Completion]:
        dist.broadcast_object_list([("generate_encoded", list(items))], src=0)
        return self._engine.generate_encoded(items)

    def close(self) -> None:
        if not dist.is_initialized():
            return
        dist.broadcast_object_list([None], src=0)
        for process in self._followers:
            process.join(timeout=60)
        dist.destroy_process_group()
        self._engine.close()


def _rank_engine(rank: int, options: dict[str, Any]) -> NativeEngine:
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast (see deploy notes)
    on_gpu = options["on_gpu"]
    device = torch.device(f"cuda:{rank}") if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if on_gpu else "gloo", init_method=f"tcp://127.0.0.1:{options['port']}", rank=rank,
        world_size=options["tp"], device_id=device if on_gpu else None,
    )  # fmt: skip
    model = load_shard(
        options["checkpoint"], rank, options["tp"], dist.group.WORLD, device=device, dtype=options["dtype"],
        attn_impl=options["attn_impl"], moe_impl=options["moe_impl"], quantize=options["quantize"],
    )  # fmt: skip
    model.model.set_impl(index_fp8=options["index_fp8"])
    processor = KeyeProcessor.from_pretrained(options["checkpoint"])
    return NativeEngine.from_model(model, processor, max_batch=options["max_batch"])


def _follow(rank: int, options: dict[str, Any]) -> None:
    """A follower rank: run every batch rank 0 broadcasts, until it broadcasts None."""
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // options["tp"]))
    engine = _rank_engine(rank, options)
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            break
        method, payload = box[0]
        getattr(engine, method)(payload)
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
