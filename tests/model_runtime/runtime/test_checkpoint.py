"""Checkpoint: official names, lazy loading, fused and per-expert experts, clear refusals, tiny init."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from model_runtime.checkpoint import CheckpointError, init_checkpoint, load_model, save_checkpoint
from model_runtime.config import KeyeConfig
from model_runtime.vlm import KeyeVL, init_weights


def _tiny_model(seed: int = 3) -> tuple[KeyeVL, KeyeConfig]:
    config = KeyeConfig.tiny()
    return init_weights(KeyeVL(config), seed=seed), config


def _assert_same_weights(a: KeyeVL, b: KeyeVL) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_round_trip_under_official_names(tmp_path: Path) -> None:
    model, config = _tiny_model()
    save_checkpoint(model, config, tmp_path)
    names = set(load_file(tmp_path / "model.safetensors"))
    for official in (
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.layers.1.self_attn.sa_indexer.q_proj.weight",
        "model.layers.1.self_attn.sa_indexer.k_norm.bias",
        "model.layers.0.mlp.gate.weight",
        "model.layers.0.mlp.experts.gate_up_proj",
        "model.layers.0.mlp.experts.down_proj",
        "visual.vision_model.embeddings.packing_position_embedding.weight",
        "visual.vision_model.encoder.layers.1.self_attn.out_proj.bias",
        "visual.vision_model.post_layernorm.weight",
        "mlp_AR.pre_norm.weight",
        "mlp_AR.linear_2.bias",
    ):
        assert official in names
    _assert_same_weights(model, load_model(tmp_path))


def test_fused_expert_shapes_follow_the_official_layout(tmp_path: Path) -> None:
    model, config = _tiny_model()
    save_checkpoint(model, config, tmp_path)
    t = config.text
    tensors = load_file(tmp_path / "model.safetensors")
    gate_up = tensors["model.layers.0.mlp.experts.gate_up_proj"]
    assert gate_up.shape == (t.num_experts, t.hidden_size, 2 * t.moe_intermediate_size)
    assert tensors["model.layers.0.mlp.experts.down_proj"].shape == (
        t.num_experts,
        t.moe_intermediate_size,
        t.hidden_size,
    )
    q = tensors["model.layers.0.self_attn.sa_indexer.q_proj.weight"]
    assert q.shape == (t.sa.indexer_num_heads * (t.sa.indexer_head_dim + 1), t.hidden_size)


def test_per_expert_layout_loads_to_the_same_model(tmp_path: Path) -> None:
    model, config = _tiny_model()
    save_checkpoint(model, config, tmp_path, expert_layout="per_expert")
    names = set(load_file(tmp_path / "model.safetensors"))
    assert "model.layers.0.mlp.experts.7.gate_proj.weight" in names
    assert "model.layers.0.mlp.experts.gate_up_proj" not in names
    f = config.text.moe_intermediate_size
    # gate_proj of expert 2 is the first F output columns of the fused input-major tensor, transposed.
    fused = model.model.layers[0].mlp.experts.gate_up_proj[2]
    assert torch.equal(
        load_file(tmp_path / "model.safetensors")["model.layers.0.mlp.experts.2.gate_proj.weight"],
        fused[:, :f].T.detach(),
    )
    _assert_same_weights(model, load_model(tmp_path))


def test_sharded_checkpoint_loads_through_its_index(tmp_path: Path) -> None:
    model, config = _tiny_model()
    save_checkpoint(model, config, tmp_path, max_shard_bytes=200_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    _assert_same_weights(model, load_model(tmp_path))


def test_missing_and_misshaped_tensors_are_listed_in_one_error(tmp_path: Path) -> None:
    model, config = _tiny_model()
    save_checkpoint(model, config, tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.self_attn.sa_indexer.k_norm.bias"]
    del tensors["mlp_AR.linear_1.weight"]
    tensors["model.layers.0.self_attn.q_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"][:-1]
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # ignored, not an error
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    message = str(err.value)
    assert "2 missing" in message and "1 mis-shaped" in message
    assert "model.layers.1.self_attn.sa_indexer.k_norm.bias" in message
    assert "mlp_AR.linear_1.weight" in message
    assert "model.layers.0.self_attn.q_proj.weight: checkpoint [127, 64], model expects [128, 64]" in message


def test_missing_experts_are_reported(tmp_path: Path) -> None:
    model, config = _tiny_model()
    save_checkpoint(model, config, tmp_path, expert_layout="per_expert")
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.experts.5.up_proj.weight"]
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"experts\.5\.up_proj"):
        load_model(tmp_path)


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    KeyeConfig.tiny().save(tmp_path)
    with pytest.raises(CheckpointError, match="no safetensors"):
        load_model(tmp_path)


def test_init_checkpoint_writes_a_complete_reproducible_folder(tmp_path: Path) -> None:
    a = init_checkpoint(tmp_path / "a", seed=1)
    b = init_checkpoint(tmp_path / "b", seed=1)
    c = init_checkpoint(tmp_path / "c", seed=2)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ):
        assert (a / name).is_file()
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    config = json.loads((a / "config.json").read_text())
    tokenizer = json.loads((a / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert config["video_token_id"] == added["<|video_pad|>"]
    assert config["vision_start_token_id"] == added["<|vision_start|>"]
    assert config["eos_token_id"] == added["<|im_end|>"]
    assert "<|frame|>" in added
    assert KeyeConfig.from_dict(config) == KeyeConfig.tiny()  # tiny()'s ids are the tokenizer's
    assert config["vocab_size"] >= max(added.values()) + 1
    with pytest.raises(ValueError, match="only size 'tiny'"):
        init_checkpoint(tmp_path / "d", size="full")


def test_cli_model_init(tmp_path: Path) -> None:
    from timemark.cli import app
    from timemark.cli import model as _model_cli  # noqa: F401  (registers the `model` group)

    result = CliRunner().invoke(
        app, ["model", "init", "--size", "tiny", "--out", str(tmp_path / "ck"), "--seed", "5"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    info = CliRunner().invoke(app, ["model", "info", str(tmp_path / "ck")])
    assert info.exit_code == 0 and "params=" in info.output
    bad = CliRunner().invoke(app, ["model", "init", "--size", "full", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0
    # Never over another checkpoint's files, and nothing half-written for a bad layout.
    again = CliRunner().invoke(app, ["model", "init", "--out", str(tmp_path / "ck"), "--seed", "6"])
    assert again.exit_code == 2 and "not an empty folder" in again.stderr
    layout = CliRunner().invoke(
        app, ["model", "init", "--out", str(tmp_path / "y"), "--expert-layout", "foo"]
    )
    assert (
        layout.exit_code == 2 and "--expert-layout must be" in layout.stderr and not (tmp_path / "y").exists()
    )
