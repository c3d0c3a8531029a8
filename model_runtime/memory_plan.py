"""Memory planner: will this model, at this chunk budget, fit on these GPUs — decided before loading.

Loading 62 GB of weights only to run out of memory on the first 184K-token chunk wastes minutes of a
GPU node. `plan_memory` adds up, per GPU, the bytes of the weights (bf16, or FP8 e4m3 experts with
fp32 block scales), the KV cache, the indexer key cache, the prefill activations of one prefill chunk
and a fixed reserve; `check_fits` refuses a configuration that does not fit with one message that
names the knobs (FP8 experts, tensor parallelism, chunk tokens) and what each would change.
Everything is arithmetic on the config's shapes; nothing touches a GPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

GIB = 1024**3
FP8_BLOCK = 128  # DeepSeek-style 128x128 weight blocks, one fp32 scale each
WeightFormat = Literal["bf16", "fp8"]


class MemoryPlanError(ValueError):
    """The configuration does not fit in GPU memory; the message says which knobs would help."""


@dataclass(frozen=True)
class ModelDims:
    """The shapes the planner needs, read from the checkpoint config (`from_config`)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    experts_per_token: int
    moe_intermediate_size: int
    indexer_heads: int
    indexer_head_dim: int
    tie_word_embeddings: bool
    vision_params: int  # the whole vision tower + projector, kept in bf16 and replicated under tp

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        """Read the shapes from a `model_runtime.config.KeyeConfig` (its `text`, `text.sa`, `vision` parts)."""
        text, vision, sa = config.text, config.vision, config.text.sa
        return cls(
            vocab_size=text.vocab_size,
            hidden_size=text.hidden_size,
            num_layers=text.num_hidden_layers,
            num_heads=text.num_attention_heads,
            num_kv_heads=text.num_key_value_heads,
            head_dim=text.head_dim,
            num_experts=text.num_experts,
            experts_per_token=text.num_experts_per_tok,
            moe_intermediate_size=text.moe_intermediate_size,
            indexer_heads=sa.indexer_num_heads if sa is not None else 0,
            indexer_head_dim=sa.indexer_head_dim if sa is not None else 0,
            tie_word_embeddings=text.tie_word_embeddings,
            vision_params=_vision_params(vision, projector_out=text.hidden_size),
        )


def dims_from_checkpoint(checkpoint_dir: str | Path) -> ModelDims:
    """The shapes of a checkpoint folder, from its config.json alone (no weights are read)."""
    from model_runtime.config import KeyeConfig

    return ModelDims.from_config(KeyeConfig.from_pretrained(checkpoint_dir))


def _vision_params(vision: Any, *, projector_out: int) -> int:
    """SigLIP tower + `mlp_AR` projector parameter count (spec §3, §5)."""
    d, f, layers = vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers
    patch = vision.patch_size
    grid = vision.image_size // patch
    embeddings = d * vision.num_channels * patch * patch + d + grid * grid * d
    embeddings += vision.packing_position_embedding_size * d
    per_layer = 4 * d + 4 * (d * d + d) + (f * d + f) + (d * f + d)  # 2 LayerNorms, q/k/v/out, fc1, fc2
    merged = d * vision.spatial_merge_size**2
    projector = 2 * merged + (merged * merged + merged) + (projector_out * merged + projector_out)
    return embeddings + layers * per_layer + 2 * d + projector


@dataclass(frozen=True)
class ParamCounts:
    """Parameters grouped by how they are stored and sharded."""

    experts: int  # routed expert FFNs (FP8-able, sharded under tp)
    attention: int  # q/k/v/o projections (sharded under tp)
    embeddings: int  # embed_tokens + lm_head (replicated under tp: every rank computes whole logits)
    replicated: int  # norms, routers, indexers, vision tower + projector (whole copy on every GPU)

    @property
    def total(self) -> int:
        return self.experts + self.attention + self.embeddings + self.replicated


def count_params(dims: ModelDims) -> ParamCounts:
    """Count parameters by group; the full-size config gives 31,122,082,160 in all."""
    d, hd, layers = dims.hidden_size, dims.head_dim, dims.num_layers
    experts = layers * dims.num_experts * 3 * d * dims.moe_intermediate_size
    q_out, kv_out = dims.num_heads * hd, dims.num_kv_heads * hd
    attention = layers * (q_out * d + 2 * kv_out * d + d * q_out)
    indexer_q = dims.indexer_heads * dims.indexer_head_dim + dims.indexer_heads  # fused head weights
    indexer = indexer_q * d + dims.indexer_head_dim * d + dims.indexer_head_dim + 2 * dims.indexer_head_dim
    per_layer_replicated = 2 * d + 2 * hd + indexer + dims.num_experts * d  # norms, qk-norms, indexer, router
    embeddings = dims.vocab_size * d * (1 if dims.tie_word_embeddings else 2)
    replicated = layers * per_layer_replicated + d + dims.vision_params  # + final norm
    return ParamCounts(experts=experts, attention=attention, embeddings=embeddings, replicated=replicated)


def expert_bytes(dims: ModelDims, weight_format: WeightFormat) -> int:
    """Bytes of all routed experts: bf16, or one byte per weight plus an fp32 scale per 128x128 block."""
    d, f = dims.hidden_size, dims.moe_intermediate_size
    weights = dims.num_layers * dims.num_experts * 3 * d * f
    if weight_format == "bf16":
        return 2 * weights
    # gate_up [d, 2f] and down [f, d] per expert, each cut into 128x128 blocks (ragged edges round up)
    blocks = math.ceil(d / FP8_BLOCK) * math.ceil(2 * f / FP8_BLOCK) + math.ceil(f / FP8_BLOCK) * math.ceil(
        d / FP8_BLOCK
    )
    return weights + 4 * blocks * dims.num_layers * dims.num_experts


@dataclass(frozen=True)
class ActivationModel:
    """How the native engine's prefill spends working memory besides the per-token tensors.

    The reference/dense attention paths tile over queries so that one tile's scores hold at most
    `score_tile_elements` (queries x heads x keys; `model_runtime.model.SCORE_TILE_ELEMENTS`) and at
    most `max_query_tile` queries (the config's `sa_config.q_chunk_size`). `materialised_scores=False`
    models kernels that never hold a [queries, keys] matrix (flash attention, the Triton kernels).
    """

    score_tile_elements: int = 1 << 26
    max_query_tile: int = 512
    materialised_scores: bool = True


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU, by part. `fits` compares the total with the usable memory."""

    weights: int
    kv_cache: int
    indexer_cache: int
    activations: int
    reserve: int
    gpu_memory: int
    context_tokens: int
    prefill_chunk_tokens: int
    tp: int
    weight_format: WeightFormat

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.indexer_cache + self.activations + self.reserve

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_memory

    @property
    def headroom(self) -> int:
        return self.gpu_memory - self.total

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "fits": self.fits}

    def describe(self) -> str:
        """One line a person can read: the parts in GiB and the verdict."""
        parts = (
            f"weights {self.weights / GIB:.1f} + KV {self.kv_cache / GIB:.1f} + indexer "
            f"{self.indexer_cache / GIB:.2f} + activations {self.activations / GIB:.1f} + reserve "
            f"{self.reserve / GIB:.1f} = {self.total / GIB:.1f} GiB of {self.gpu_memory / GIB:.1f} GiB per GPU"
        )
        setting = f"{self.weight_format} weights, tp={self.tp}, {self.context_tokens} context tokens"
        return f"{setting}: {parts}"


def plan_memory(
    dims: ModelDims,
    *,
    context_tokens: int,
    gpu_memory_bytes: int,
    weight_format: WeightFormat = "bf16",
    tp: int = 1,
    prefill_chunk_tokens: int = 8192,
    kv_bytes: int = 2,
    indexer_cache_format: Literal["fp8", "bf16"] = "bf16",
    activations: ActivationModel = ActivationModel(),
    kv_copies: int = 1,
    reserve_bytes: int = 3 * GIB,
) -> MemoryPlan:
    """Bytes on each of `tp` GPUs to hold the model and prefill a `context_tokens`-token prompt.

    `context_tokens` is the chunk-token budget (how many tokens the KV cache must hold: the video chunk
    plus the question and answer); the prompt is prefilled `prefill_chunk_tokens` at a time.
    `kv_copies` counts whole copies of the context's KV + indexer cache alive at once (the native
    engine's `KVCache.fork` copies the encoded video prefix for each query branch it decodes).
    `reserve_bytes` covers the CUDA context, cuBLAS workspaces and allocator fragmentation.
    """
    if context_tokens <= 0 or prefill_chunk_tokens <= 0:
        raise ValueError("context_tokens and prefill_chunk_tokens must be positive")
    if kv_copies < 1:
        raise ValueError(f"kv_copies must be >= 1, got {kv_copies}")
    if tp < 1 or dims.num_kv_heads % tp or dims.num_heads % tp:
        raise ValueError(
            f"tp={tp} must divide the {dims.num_kv_heads} KV heads and {dims.num_heads} query heads"
        )
    if weight_format not in ("bf16", "fp8"):
        raise ValueError(f"weight_format must be 'bf16' or 'fp8', got {weight_format!r}")

    counts = count_params(dims)
    sharded = expert_bytes(dims, weight_format) + 2 * counts.attention
    weights = sharded // tp + 2 * (counts.replicated + counts.embeddings)

    # KV: K and V per layer for the kv heads this GPU owns (spec §2.3).
    kv_cache = (
        kv_copies
        * dims.num_layers
        * context_tokens
        * 2
        * (dims.num_kv_heads // tp)
        * dims.head_dim
        * kv_bytes
    )
    # The indexer has one key head, so every GPU keeps the whole indexer cache: the plain bf16 key (the
    # native engine's default), or the FP8 key + fp32 scale (68 B/token/layer: the fork, and the native
    # engine with index_fp8).
    per_token_layer = (
        dims.indexer_head_dim + 4 if indexer_cache_format == "fp8" else 2 * dims.indexer_head_dim
    )
    indexer_cache = kv_copies * dims.num_layers * context_tokens * per_token_layer

    act = _prefill_activation_bytes(
        dims, context_tokens, min(prefill_chunk_tokens, context_tokens), tp, activations
    )
    return MemoryPlan(
        weights=weights,
        kv_cache=kv_cache,
        indexer_cache=indexer_cache,
        activations=act,
        reserve=reserve_bytes,
        gpu_memory=gpu_memory_bytes,
        context_tokens=context_tokens,
        prefill_chunk_tokens=prefill_chunk_tokens,
        tp=tp,
        weight_format=weight_format,
    )


def _prefill_activation_bytes(
    dims: ModelDims, context: int, chunk: int, tp: int, model: ActivationModel
) -> int:
    """Peak working memory while prefilling the last `chunk` tokens against `context` cached ones.

    Counted: the prompt's input embeddings (built once for the whole prompt, visual tokens scattered in),
    one layer's live tensors for the chunk (residual, normed input, q/k/v, attention output, indexer
    q/w, MoE routing, gathered expert inputs and their gate/up/act/down outputs), the attention and
    indexer score tiles over the whole context, and the last token's fp32 logits. While the embeddings
    are built, three [context, D] copies exist at once (visual tokens, text embeddings, the scattered
    result) but no layer runs, so the peak is the larger of the two moments.
    """
    d, hd = dims.hidden_size, dims.head_dim
    heads, kv_heads = dims.num_heads // tp, dims.num_kv_heads // tp
    k, f = dims.experts_per_token, dims.moe_intermediate_size // tp
    prompt_embeds = context * d * 2
    per_token = 2 * (
        2 * d  # residual + normed input
        + (heads + 2 * kv_heads) * hd  # q, k, v
        + heads * hd  # attention output before o_proj
        + k * (d + 2 * f + f + d)  # gathered inputs, gate|up, SiLU(gate)*up, expert outputs
    )
    per_token += 4 * (
        dims.indexer_heads * (dims.indexer_head_dim + 1) + dims.num_experts
    )  # fp32 indexer q/w, router
    scores = 0
    if model.materialised_scores:
        tile = max(1, min(model.max_query_tile, chunk, model.score_tile_elements // (heads * context)))
        # per (query, key) pair: fp32 attention scores of this GPU's heads, fp32 per-head indexer
        # scores, their sum, its masked copy and sorted values (3 x 4 B), the sort's int64 indices,
        # and two bool masks (causal, selected)
        per_pair = 4 * heads + 4 * dims.indexer_heads + 3 * 4 + 8 + 2
        scores = tile * context * per_pair
    logits = dims.vocab_size * 4
    return max(3 * prompt_embeds, prompt_embeds + chunk * per_token + scores + logits)


def check_fits(dims: ModelDims, **plan_options: Any) -> MemoryPlan:
    """Plan with `plan_options` (the arguments of `plan_memory`) and return the plan if it fits.

    Otherwise raise `MemoryPlanError` whose message gives the bytes by part and, for each knob (FP8
    experts, tensor parallelism, chunk tokens), what the plan would become with it turned.
    """
    plan = plan_memory(dims, **plan_options)
    if plan.fits:
        return plan

    hints: list[str] = []
    if plan.weight_format == "bf16":
        fp8 = plan_memory(dims, **{**plan_options, "weight_format": "fp8"})
        hints.append(
            f"FP8 experts (--quantize fp8) -> {fp8.total / GIB:.1f} GiB{' (fits)' if fp8.fits else ''}"
        )
    doubled = plan.tp * 2
    if dims.num_kv_heads % doubled == 0 and dims.num_heads % doubled == 0:
        wider = plan_memory(dims, **{**plan_options, "tp": doubled})
        hints.append(
            f"--tp {doubled} -> {wider.total / GIB:.1f} GiB per GPU{' (fits)' if wider.fits else ''}"
        )
    largest = largest_context_that_fits(dims, **plan_options)
    if largest > 0:
        hints.append(f"chunk tokens <= {largest} (now {plan.context_tokens})")
    else:
        hints.append("no chunk-token budget fits with these weights: turn FP8 or tp first")
    raise MemoryPlanError(
        f"does not fit: {plan.describe()}; short by {-plan.headroom / GIB:.1f} GiB. Knobs: "
        + "; ".join(hints)
    )


def largest_context_that_fits(dims: ModelDims, **plan_options: Any) -> int:
    """The largest chunk-token budget (a multiple of 1024) that fits with the other options, or 0."""
    options = {key: value for key, value in plan_options.items() if key != "context_tokens"}
    lo, hi = 0, 1 << 22  # 4M tokens: beyond any config's positions
    while hi - lo > 1024:
        mid = (lo + hi) // 2 // 1024 * 1024
        if plan_memory(dims, context_tokens=mid, **options).fits:
            lo = mid
        else:
            hi = mid
    return lo
