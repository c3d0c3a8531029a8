"""Config: config.json round trip, values read from it (not hard-coded), the exact 30B-A3B size."""

from __future__ import annotations

import pytest
import torch

from model_runtime.config import KeyeConfig
from model_runtime.model import count_parameters
from model_runtime.vlm import KeyeVL


def test_full_size_on_meta_device_has_the_published_parameter_count() -> None:
    with torch.device("meta"):
        model = KeyeVL(KeyeConfig.full())
    assert count_parameters(model) == 31_122_082_160


def test_dict_round_trip_keeps_every_value() -> None:
    for config in (KeyeConfig.tiny(), KeyeConfig.full()):
        assert KeyeConfig.from_dict(config.to_dict()) == config


def test_reads_official_flat_layout() -> None:
    d = KeyeConfig.full().to_dict()
    d["sa_config"]["topk"] = 1024
    d["rope_scaling"] = {"type": "default", "mrope_section": [32, 16, 16]}
    d["vision_config"]["num_hidden_layers"] = 3
    d["video_token_id"] = 7
    d["unknown_key"] = "ignored"
    config = KeyeConfig.from_dict(d)
    assert config.text.sa is not None and config.text.sa.topk == 1024
    assert config.text.mrope_section == [32, 16, 16]
    assert config.text.indexer_mrope_section == [16, 8, 8]
    assert config.vision.num_hidden_layers == 3
    assert config.video_token_id == 7


def test_without_sa_config_the_model_has_no_indexer() -> None:
    d = KeyeConfig.tiny().to_dict()
    del d["sa_config"]
    config = KeyeConfig.from_dict(d)
    assert config.text.sa is None
    names = [n for n, _ in KeyeVL(config).named_parameters()]
    assert not any("sa_indexer" in n for n in names)


def test_bad_configs_are_refused() -> None:
    d = KeyeConfig.tiny().to_dict()
    with pytest.raises(ValueError, match="mrope_section"):
        KeyeConfig.from_dict({**d, "rope_scaling": {"mrope_section": [4, 4, 4]}})
    with pytest.raises(ValueError, match="interleaved"):
        KeyeConfig.from_dict({**d, "rope_scaling": {"mrope_section": [4, 6, 6], "mrope_interleaved": True}})
    with pytest.raises(ValueError, match="unknown model size"):
        KeyeConfig.from_size("huge")


def test_from_pretrained_needs_config_json(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        KeyeConfig.from_pretrained(tmp_path)
