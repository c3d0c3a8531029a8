"""Keye-VL-2.0 configuration as plain dataclasses, filled from the checkpoint's `config.json`.

The official config is flat Qwen-VL style: LM fields at the top level, `vision_config` and `sa_config`
nested, mRoPE sections under `rope_scaling.mrope_section` (spec §1.2). `KeyeConfig.from_dict` reads that
layout (and also a nested `text_config`), `to_dict` writes it back. Defaults describe nothing real:
use `KeyeConfig.tiny()` for the toy model the tests run and `KeyeConfig.full()` for the 30B-A3B numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class SparseAttnConfig:
    """The per-layer `sa_indexer` ("lightning indexer") and its top-k selection (spec §2.2)."""

    indexer_num_heads: int = 4
    indexer_head_dim: int = 16
    indexer_num_kv_heads: int = 1
    topk: int = 48
    q_chunk_size: int = 64
    kv_chunk_size: int = 64


@dataclass
class TextConfig:
    """The Qwen3-MoE decoder (spec §1)."""

    vocab_size: int = 512
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 128  # dense FFN width: present in config.json, unused (every layer is MoE)
    moe_intermediate_size: int = 32
    num_experts: int = 8
    num_experts_per_tok: int = 2
    norm_topk_prob: bool = True
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000_000.0
    mrope_section: list[int] = field(default_factory=lambda: [4, 6, 6])
    max_position_embeddings: int = 262_144
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    sa: SparseAttnConfig | None = field(default_factory=SparseAttnConfig)

    def __post_init__(self) -> None:
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(
                f"mrope_section {self.mrope_section} must sum to head_dim/2 = {self.head_dim // 2}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.sa is not None and self.indexer_mrope_section is None:
            raise ValueError(
                f"indexer_head_dim {self.sa.indexer_head_dim} does not scale mrope_section {self.mrope_section} "
                "to whole numbers"
            )

    @property
    def indexer_mrope_section(self) -> list[int] | None:
        """The LM's sections scaled by D_I / head_dim (spec §2.2 step 3), or None if not integral."""
        if self.sa is None:
            return None
        scaled = [s * self.sa.indexer_head_dim / self.head_dim for s in self.mrope_section]
        if any(s != int(s) for s in scaled):
            return None
        return [int(s) for s in scaled]


@dataclass
class VisionConfig:
    """The SigLIP tower (spec §3.1) and the 2×2 merge of the projector (spec §3.2)."""

    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_channels: int = 3
    patch_size: int = 14
    image_size: int = 56  # the learned position table is (image_size / patch_size)² rows
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    spatial_merge_size: int = 2
    packing_position_embedding_size: int = 32_768  # rows of the unused `packing_position_embedding`

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_grid(self) -> int:
        return self.image_size // self.patch_size


# Flat keys of config.json that belong to the LM (everything in TextConfig except the nested ones).
_TEXT_KEYS = tuple(f.name for f in fields(TextConfig) if f.name not in ("sa", "mrope_section"))


@dataclass
class KeyeConfig:
    """Everything `config.json` says: LM, vision tower, projector, special token ids."""

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector_ln_eps: float = 1e-5
    image_token_id: int = 0
    video_token_id: int = 0
    vision_start_token_id: int = 0
    vision_end_token_id: int = 0
    eos_token_id: int | list[int] = 0
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    architectures: list[str] = field(default_factory=lambda: ["KeyeVL2MoeForConditionalGeneration"])
    model_type: str = "KeyeVL2"
    torch_dtype: str = "bfloat16"
    quantization_config: dict[str, Any] | None = None  # set on pre-quantised (FP8) checkpoints

    @property
    def fp8_experts(self) -> bool:
        return (self.quantization_config or {}).get("quant_method") == "fp8"

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def tiny(cls) -> KeyeConfig:
        """A toy model of the same architecture. Token ids are those of the tiny tokenizer (448 BPE tokens,
        then the Keye added tokens in order); `init_checkpoint` re-reads them from the tokenizer."""
        return cls(
            text=TextConfig(),
            vision=VisionConfig(packing_position_embedding_size=64),
            torch_dtype="float32",
            image_token_id=460,
            video_token_id=461,
            vision_start_token_id=457,
            vision_end_token_id=458,
            eos_token_id=450,
            pad_token_id=448,
        )

    @classmethod
    def full(cls) -> KeyeConfig:
        """Keye-VL-2.0-30B-A3B (spec §1.2, §3.1, §4.5)."""
        text = TextConfig(
            vocab_size=151_936,
            hidden_size=2048,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            intermediate_size=6144,
            moe_intermediate_size=768,
            num_experts=128,
            num_experts_per_tok=8,
            mrope_section=[16, 24, 24],
            sa=SparseAttnConfig(
                indexer_num_heads=16, indexer_head_dim=64, topk=2048, q_chunk_size=512, kv_chunk_size=512
            ),
        )
        vision = VisionConfig(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=384,
        )
        return cls(
            text=text,
            vision=vision,
            image_token_id=151_655,
            video_token_id=151_656,
            vision_start_token_id=151_652,
            vision_end_token_id=151_653,
            eos_token_id=151_645,
            pad_token_id=151_643,
        )

    @classmethod
    def from_size(cls, size: str) -> KeyeConfig:
        if size == "tiny":
            return cls.tiny()
        if size == "full":
            return cls.full()
        raise ValueError(f"unknown model size {size!r} (expected 'tiny' or 'full')")

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path) -> KeyeConfig:
        path = Path(checkpoint_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json in {checkpoint_dir}")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a JSON config ({err})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
        return cls.from_dict(config)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeyeConfig:
        """Read the official flat layout; a nested `text_config` (Qwen3-VL style) wins where present."""
        flat = {**d, **d.get("text_config", {})}
        text_kwargs = {k: flat[k] for k in _TEXT_KEYS if k in flat}
        rope_scaling = flat.get("rope_scaling") or {}
        if "mrope_section" in rope_scaling:
            text_kwargs["mrope_section"] = list(rope_scaling["mrope_section"])
        if rope_scaling.get("mrope_interleaved"):
            raise ValueError("interleaved mRoPE sections are not implemented (spec §1.2 assumes contiguous)")
        sa = flat.get("sa_config")
        text_kwargs["sa"] = _pick(SparseAttnConfig, sa) if sa else None
        if "head_dim" not in text_kwargs and "hidden_size" in text_kwargs:
            text_kwargs["head_dim"] = text_kwargs["hidden_size"] // text_kwargs["num_attention_heads"]
        vision = _pick(VisionConfig, d.get("vision_config", {}))
        top = {f.name: d[f.name] for f in fields(cls) if f.name not in ("text", "vision") and f.name in d}
        return cls(text=TextConfig(**text_kwargs), vision=vision, **top)

    def to_dict(self) -> dict[str, Any]:
        text = asdict(self.text)
        sa = text.pop("sa")
        out: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("text", "vision")
        }
        if out["quantization_config"] is None:
            del out["quantization_config"]
        out.update({k: v for k, v in text.items() if k != "mrope_section"})
        out["rope_scaling"] = {"type": "mrope", "mrope_section": list(self.text.mrope_section)}
        if sa is not None:
            out["sa_config"] = sa
        out["vision_config"] = asdict(self.vision)
        return out

    def save(self, checkpoint_dir: str | Path) -> None:
        Path(checkpoint_dir, "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _pick(cls: type, d: dict[str, Any]) -> Any:
    """Build a dataclass from the keys it knows; config.json carries many it does not use."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})
