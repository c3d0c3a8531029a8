"""Reading and writing checkpoints in the official Keye-VL-2.0 layout (spec §5).

The model's parameter names already are the official tensor names, so the one mapping table below only
says what differs: names to ignore, and the per-expert alternative to the fused expert tensors. The
loader opens safetensors shards lazily and reads tensor by tensor (never a whole shard), checks every
tensor's shape, and refuses a checkpoint with one error listing everything missing or mis-shaped.
`init_checkpoint` writes a random-weight checkpoint (config, weights, tokenizer, preprocessor config)
that tests and the CPU demo run on.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from model_runtime.config import KeyeConfig
from model_runtime.fp8 import (
    FP8,
    QUANTIZATION_CONFIG,
    SCALE_SUFFIX,
    Fp8Experts,
    dequantize_blocks,
    is_scale,
    quantize_blocks,
)
from model_runtime.model import use_fp8_experts
from model_runtime.processor import DEFAULT_PREPROCESSOR_CONFIG
from model_runtime.tokenizer import build_tiny_tokenizer, save_tokenizer
from model_runtime.vlm import KeyeVL, init_weights

# ---- the mapping table ------------------------------------------------------------------------------
# Checkpoint tensors that exist but are not model parameters (spec §5).
IGNORED_TENSORS = (re.compile(r"rotary_emb\.inv_freq$"), re.compile(r"^visual\.vision_model\.head\."))
# Fused expert tensor (model parameter, official fused name) → its per-expert spelling. Per expert e:
# gate_up_proj[e] = [gate_proj.weightᵀ | up_proj.weightᵀ] (input-major), down_proj[e] = down_proj.weightᵀ.
PER_EXPERT = {
    "mlp.experts.gate_up_proj": ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight"),
    "mlp.experts.down_proj": ("mlp.experts.{e}.down_proj.weight",),
}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded into the model its config describes."""


# ---- loading ----------------------------------------------------------------------------------------


def load_model(
    ckpt_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    attn_impl: str = "reference",
    moe_impl: str = "reference",
    quantize: str | None = None,
) -> KeyeVL:
    """Build the model `config.json` describes and fill it from the checkpoint's safetensors.

    dtype defaults to bfloat16 on CUDA and float32 elsewhere. Parameters are created on the meta device
    and materialised directly on `device`, so a 30B checkpoint never sits twice in memory.
    `quantize="fp8"` stores the routed experts in FP8 (`model_runtime.fp8`), quantising each expert
    tensor on `device` as it is read; a pre-quantised checkpoint (its config's `quantization_config`)
    loads in FP8 either way.
    """
    if quantize not in (None, "fp8"):
        raise ValueError(f"quantize must be None or 'fp8', got {quantize!r}")
    ckpt = Path(ckpt_dir)
    config = KeyeConfig.from_pretrained(ckpt)
    device = torch.device(device)
    dtype = model_dtype(dtype, device)
    with torch.device("meta"):
        model = KeyeVL(config, attn_impl=attn_impl, moe_impl=moe_impl).to(dtype)
        if quantize == "fp8" or config.fp8_experts:
            use_fp8_experts(model)
    model = model.to_empty(device=device)
    load_state(model, ckpt)
    return model.eval()


def model_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """The weights' dtype: as asked (a torch dtype or its name), else bf16 on CUDA and fp32 elsewhere."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        return getattr(torch, dtype)
    return dtype


def load_state(model: KeyeVL, ckpt_dir: str | Path) -> None:
    """Copy every parameter from the checkpoint, or raise CheckpointError listing all problems."""
    reader = CheckpointReader(ckpt_dir)
    missing: list[str] = []
    misshaped: list[str] = []
    loaded: dict[str, Tensor] = {}
    tied = model.config.text.tie_word_embeddings
    for name, param in model.named_parameters(remove_duplicate=True):
        if (tied and name == "lm_head.weight") or is_scale(name):
            continue  # FP8 scales are read or computed with their weight
        try:
            tensor = read_parameter(reader, name, param.shape)
        except KeyError as exc:
            missing.append(str(exc.args[0]))
            continue
        if tuple(tensor.shape) != tuple(param.shape):
            misshaped.append(f"{name}: checkpoint {list(tensor.shape)}, model expects {list(param.shape)}")
            continue
        scale_name = name + SCALE_SUFFIX
        if tensor.dtype == FP8 and scale_name not in reader:
            missing.append(scale_name)
            continue
        if param.dtype == FP8 and tensor.dtype == FP8:
            loaded[scale_name] = reader.get(scale_name)
        elif param.dtype == FP8:  # quantise at load time, on the model's device
            tensor, loaded[scale_name] = quantize_blocks(tensor.to(param.device))
        elif tensor.dtype == FP8:  # an FP8 checkpoint into a bf16/fp32 model
            tensor = dequantize_blocks(tensor, reader.get(scale_name), param.dtype)
        loaded[name] = tensor
    if missing or misshaped:
        raise CheckpointError(_problem_report(ckpt_dir, missing, misshaped))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in loaded.items():
            params[name].copy_(tensor)


def read_parameter(reader: CheckpointReader, name: str, shape: torch.Size) -> Tensor:
    """The checkpoint tensor for a model parameter: by its own name, else assembled from per-expert ones."""
    if name in reader:
        return reader.get(name)
    for fused, parts in PER_EXPERT.items():
        if name.endswith(fused):
            prefix = name[: -len(fused)]
            per_expert = []
            for e in range(shape[0]):
                names = [prefix + p.format(e=e) for p in parts]
                absent = [n for n in names if n not in reader]
                if absent:
                    raise KeyError(f"{name} (or per-expert {absent[0]} …)")
                # Per-expert weights are [out, in]; the fused layout is input-major [in, out].
                parts_read = [reader.get(n) for n in names]
                if any(t.dtype == FP8 for t in parts_read):
                    raise CheckpointError(
                        f"{names[0]}: per-expert FP8 tensors are not supported (use the fused layout)"
                    )
                per_expert.append(torch.cat([t.T for t in parts_read], dim=1))
            return torch.stack(per_expert)
    raise KeyError(name)


def _problem_report(ckpt_dir: Any, missing: list[str], misshaped: list[str], show: int = 20) -> str:
    lines = [f"checkpoint {ckpt_dir} does not match its config.json:"]
    for title, items in (("missing", missing), ("mis-shaped", misshaped)):
        if items:
            lines.append(f"  {len(items)} {title} tensor(s):")
            lines += [f"    {item}" for item in items[:show]]
            if len(items) > show:
                lines.append(f"    … and {len(items) - show} more")
    return "\n".join(lines)


class CheckpointReader:
    """Lazy access to tensors by name across safetensors shards (index json, one file, or a folder)."""

    def __init__(self, ckpt_dir: str | Path):
        folder = Path(ckpt_dir)
        index = folder / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.location = {name: folder / shard for name, shard in weight_map.items()}
        else:
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"no safetensors files in {folder}")
            self.location = {}
            for path in files:
                with safe_open(path, framework="pt") as f:
                    self.location.update({name: path for name in f.keys()})  # noqa: SIM118
        self._open: dict[Path, Any] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.location

    def names(self) -> list[str]:
        return [n for n in self.location if not any(p.search(n) for p in IGNORED_TENSORS)]

    def get(self, name: str) -> Tensor:
        path = self.location[name]
        if path not in self._open:
            self._open[path] = safe_open(path, framework="pt")
        return self._open[path].get_tensor(name)


# ---- saving -----------------------------------------------------------------------------------------


def save_checkpoint(
    model: KeyeVL,
    config: KeyeConfig,
    out_dir: str | Path,
    *,
    expert_layout: str = "fused",
    max_shard_bytes: int = 4 << 30,
) -> Path:
    """Write config.json and the weights under their official names (fused or per-expert experts),
    sharded with a `model.safetensors.index.json` when larger than `max_shard_bytes`."""
    if expert_layout not in ("fused", "per_expert"):
        raise ValueError(f"expert_layout must be 'fused' or 'per_expert', got {expert_layout!r}")
    fp8 = any(isinstance(m, Fp8Experts) for m in model.modules())
    if fp8 and expert_layout != "fused":
        raise ValueError("FP8 experts are written in the fused layout only")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataclasses.replace(config, quantization_config=dict(QUANTIZATION_CONFIG) if fp8 else None).save(out)
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, tensor in _official_tensors(model, expert_layout):
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / SINGLE_FILE), metadata={"format": "pt"})
        return out
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    (out / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2) + "\n")
    return out


def _official_tensors(model: KeyeVL, expert_layout: str) -> Iterator[tuple[str, Tensor]]:
    tied = model.config.text.tie_word_embeddings
    for name, param in model.named_parameters():
        if tied and name == "lm_head.weight":
            continue
        tensor = param.detach().cpu().contiguous()
        fused = next((f for f in PER_EXPERT if name.endswith(f)), None)
        if fused is None or expert_layout == "fused":
            yield name, tensor
            continue
        prefix, parts = name[: -len(fused)], PER_EXPERT[fused]
        for e in range(tensor.shape[0]):
            chunks = tensor[e].chunk(len(parts), dim=1)  # [in, out] each
            for part, chunk in zip(parts, chunks, strict=True):
                yield prefix + part.format(e=e), chunk.T.contiguous()


def init_checkpoint(
    out_dir: str | Path, size: str = "tiny", seed: int = 0, *, expert_layout: str = "fused"
) -> Path:
    """A random-weight checkpoint of the Keye architecture: config.json, model.safetensors (official
    names), tokenizer.json + tokenizer_config.json (toy BPE with the Keye special tokens),
    preprocessor_config.json. Only "tiny" is written to disk; a full-size random model belongs on the
    GPU (`init_weights(KeyeVL(KeyeConfig.full()))`), not in 62 GB of files."""
    if size != "tiny":
        raise ValueError(f"init_checkpoint writes only size 'tiny' (got {size!r})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    save_tokenizer(tokenizer, out)
    config = KeyeConfig.tiny()
    ids = tokenizer.token_to_id
    config.text.vocab_size = -(-tokenizer.get_vocab_size(with_added_tokens=True) // 64) * 64
    config.image_token_id, config.video_token_id = ids("<|image_pad|>"), ids("<|video_pad|>")
    config.vision_start_token_id, config.vision_end_token_id = ids("<|vision_start|>"), ids("<|vision_end|>")
    config.eos_token_id, config.pad_token_id = ids("<|im_end|>"), ids("<|endoftext|>")
    torch.manual_seed(seed)
    model = init_weights(KeyeVL(config), seed=seed)
    save_checkpoint(model, config, out, expert_layout=expert_layout)
    (out / "preprocessor_config.json").write_text(json.dumps(DEFAULT_PREPROCESSOR_CONFIG, indent=2) + "\n")
    generation = {
        "eos_token_id": [config.eos_token_id, config.pad_token_id],
        "pad_token_id": config.pad_token_id,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out
