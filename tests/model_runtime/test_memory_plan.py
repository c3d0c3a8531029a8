"""The memory planner's arithmetic, checked against numbers worked out by hand for the full-size model."""

from __future__ import annotations

import pytest

from model_runtime.memory_plan import (
    GIB,
    ActivationModel,
    MemoryPlanError,
    ModelDims,
    check_fits,
    count_params,
    expert_bytes,
    largest_context_that_fits,
    plan_memory,
)

# Spec §1.2 / §3 shapes; the vision tower + projector count (481,422,704) is worked out in
# test_vision_params_by_hand below.
FULL = ModelDims(
    vocab_size=151_936,
    hidden_size=2048,
    num_layers=48,
    num_heads=32,
    num_kv_heads=4,
    head_dim=128,
    num_experts=128,
    experts_per_token=8,
    moe_intermediate_size=768,
    indexer_heads=16,
    indexer_head_dim=64,
    tie_word_embeddings=False,
    vision_params=481_422_704,
)
CHUNK = 184_320  # the Keye server's whole-video token budget
H100 = 80 * GIB
H200 = 141 * 10**9


def test_vision_params_by_hand() -> None:
    from types import SimpleNamespace

    from model_runtime.memory_plan import _vision_params

    vision = SimpleNamespace(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        patch_size=14,
        image_size=384,
        num_channels=3,
        packing_position_embedding_size=32768,
        spatial_merge_size=2,
    )
    patch = 1152 * 3 * 14 * 14 + 1152
    positions = 729 * 1152 + 32768 * 1152
    layer = 4 * 1152 + 4 * (1152 * 1152 + 1152) + (4304 * 1152 + 4304) + (1152 * 4304 + 1152)
    projector = 2 * 4608 + (4608 * 4608 + 4608) + (2048 * 4608 + 2048)
    assert _vision_params(vision, projector_out=2048) == patch + positions + 27 * layer + 2 * 1152 + projector
    assert patch + positions + 27 * layer + 2 * 1152 + projector == 481_422_704


def test_dims_from_the_full_config() -> None:
    from model_runtime.config import KeyeConfig
    from model_runtime.model import SCORE_TILE_ELEMENTS

    assert ModelDims.from_config(KeyeConfig.full()) == FULL
    assert ActivationModel().score_tile_elements == SCORE_TILE_ELEMENTS  # the planner models the engine


def test_full_size_parameter_count() -> None:
    counts = count_params(FULL)
    assert counts.total == 31_122_082_160
    assert counts.experts == 48 * 128 * 3 * 2048 * 768 == 28_991_029_248


def test_bf16_weights_are_62_2_gb() -> None:
    plan = plan_memory(FULL, context_tokens=CHUNK, gpu_memory_bytes=H200)
    assert plan.weights == 2 * 31_122_082_160 == 62_244_164_320


def test_fp8_experts_with_block_scales() -> None:
    # per expert: gate_up 2048x1536 -> 16x12 blocks, down 768x2048 -> 6x16 blocks: 288 fp32 scales
    scales = 48 * 128 * 288 * 4
    assert scales == 7_077_888
    assert expert_bytes(FULL, "fp8") == 28_991_029_248 + scales
    plan = plan_memory(FULL, context_tokens=CHUNK, gpu_memory_bytes=H200, weight_format="fp8")
    non_expert_bf16 = 2 * (31_122_082_160 - 28_991_029_248)
    assert plan.weights == 28_991_029_248 + scales + non_expert_bf16 == 33_260_212_960


def test_kv_and_indexer_cache_for_one_chunk() -> None:
    plan = plan_memory(FULL, context_tokens=CHUNK, gpu_memory_bytes=H200, indexer_cache_format="fp8")
    assert plan.kv_cache == 48 * CHUNK * 2 * 4 * 128 * 2 == 18_119_393_280  # the "about 18 GB"
    assert plan.indexer_cache == 48 * CHUNK * 68 == 601_620_480  # 64 FP8 bytes + one fp32 scale
    bf16_index = plan_memory(
        FULL, context_tokens=CHUNK, gpu_memory_bytes=H200
    )  # what the native engine keeps
    assert bf16_index.indexer_cache == 48 * CHUNK * 128


def test_forked_prefixes_multiply_the_caches() -> None:
    one = plan_memory(FULL, context_tokens=CHUNK, gpu_memory_bytes=H200)
    three = plan_memory(FULL, context_tokens=CHUNK, gpu_memory_bytes=H200, kv_copies=3)
    assert three.kv_cache == 3 * one.kv_cache and three.indexer_cache == 3 * one.indexer_cache


def test_tensor_parallel_two_halves_the_sharded_parts() -> None:
    plan = plan_memory(FULL, context_tokens=CHUNK, gpu_memory_bytes=H100, tp=2, indexer_cache_format="fp8")
    counts = count_params(FULL)
    sharded = 2 * (counts.experts + counts.attention)  # embeddings and lm_head stay whole (parallel.py)
    assert plan.weights == sharded // 2 + 2 * (counts.replicated + counts.embeddings) == 32_347_165_408
    assert plan.kv_cache == 18_119_393_280 // 2  # two of the four KV heads per GPU
    assert plan.indexer_cache == 601_620_480  # one key head: every GPU keeps all of it


def test_activations_by_hand() -> None:
    plan = plan_memory(FULL, context_tokens=CHUNK, gpu_memory_bytes=H200, prefill_chunk_tokens=8192)
    prompt_embeds = CHUNK * 2048 * 2
    per_token = 2 * (2 * 2048 + 40 * 128 + 32 * 128 + 8 * (2048 + 1536 + 768 + 2048)) + 4 * (16 * 65 + 128)
    tile = (1 << 26) // (32 * CHUNK)  # 11 queries per score tile at 184K keys
    assert tile == 11
    scores = tile * CHUNK * (4 * 32 + 4 * 16 + 12 + 8 + 2)
    logits = 151_936 * 4
    while_layers_run = prompt_embeds + 8192 * per_token + scores + logits
    while_embedding = 3 * prompt_embeds  # visual tokens + text embeddings + scattered result
    assert plan.activations == while_layers_run > while_embedding  # 2.28 GB vs 2.26 GB
    small_chunks = plan_memory(FULL, context_tokens=CHUNK, gpu_memory_bytes=H200, prefill_chunk_tokens=256)
    assert small_chunks.activations == while_embedding  # with 256-token chunks, building the embeddings peaks


def test_bf16_full_chunk_does_not_fit_80gb_and_names_the_knobs() -> None:
    with pytest.raises(MemoryPlanError) as info:
        check_fits(FULL, context_tokens=CHUNK, gpu_memory_bytes=H100)
    message = str(info.value)
    assert "--quantize fp8" in message and "--tp 2" in message and "chunk tokens <=" in message
    assert "weights 58.0" in message  # 62.2 GB = 58.0 GiB


def test_fp8_or_tp2_fit_80gb_with_a_kernel_that_keeps_no_score_matrix() -> None:
    flash = ActivationModel(materialised_scores=False)
    fp8 = check_fits(
        FULL, context_tokens=CHUNK, gpu_memory_bytes=H100, weight_format="fp8", activations=flash
    )
    tp2 = check_fits(FULL, context_tokens=CHUNK, gpu_memory_bytes=H100, tp=2, activations=flash)
    assert fp8.fits and tp2.fits and tp2.total < fp8.total


def test_largest_context_is_the_boundary() -> None:
    options = {"gpu_memory_bytes": H100, "weight_format": "bf16"}
    largest = largest_context_that_fits(FULL, **options)
    assert 0 < largest < CHUNK
    assert plan_memory(FULL, context_tokens=largest, **options).fits
    assert not plan_memory(FULL, context_tokens=largest + 1024, **options).fits


def test_bad_knobs_are_refused() -> None:
    with pytest.raises(ValueError, match="tp=3"):
        plan_memory(FULL, context_tokens=CHUNK, gpu_memory_bytes=H100, tp=3)
    with pytest.raises(ValueError, match="weight_format"):
        plan_memory(FULL, context_tokens=CHUNK, gpu_memory_bytes=H100, weight_format="int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kv_copies"):
        plan_memory(FULL, context_tokens=CHUNK, gpu_memory_bytes=H100, kv_copies=0)
    with pytest.raises(ValueError, match="positive"):
        plan_memory(FULL, context_tokens=0, gpu_memory_bytes=H100)


def test_dims_from_a_checkpoint_folder(tmp_path) -> None:
    from model_runtime.config import KeyeConfig
    from model_runtime.memory_plan import dims_from_checkpoint

    KeyeConfig.full().save(tmp_path)  # config.json only: the planner reads no weights
    assert dims_from_checkpoint(tmp_path) == FULL
