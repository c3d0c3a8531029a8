"""Embedded mode's environment: SQLite everything, the checkpoint's own sampling, no leaked production URLs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.embedded import (
    SMALL_MODEL_SAMPLING,
    checkpoint_video_sampling,
    embedded_env,
    resolve_checkpoint,
    settings_from_env,
)


def _checkpoint(folder: Path, video_sampling: dict | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    pre = {"patch_size": 14} | ({"video_sampling": video_sampling} if video_sampling else {})
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


def test_env_is_all_local_and_drops_production_variables(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ck", None)
    base = {
        "PATH": "/bin",
        "TIMEMARK_DATABASE_URL": "postgresql://prod/db",
        "TIMEMARK_BROKER_URL": "redis://prod",
    }
    env = embedded_env(tmp_path / "data", ckpt, base=base)
    assert env["PATH"] == "/bin" and "TIMEMARK_DATABASE_URL" not in env and "TIMEMARK_BROKER_URL" not in env
    settings = settings_from_env(env)
    assert settings.embedded and settings.is_sqlite
    assert str(settings.broker_url).startswith("sqla+sqlite:///")
    assert str(settings.storage_url).startswith("file://")
    assert settings.engine_checkpoint == str(ckpt) and settings.engine_device == "cpu"
    # No sampling in the checkpoint: the small-model defaults.
    assert settings.sampling_max_pixels == SMALL_MODEL_SAMPLING["max_pixels"]


def test_checkpoint_sampling_becomes_the_service_default(tmp_path: Path) -> None:
    sampling = {
        "fps": 1.5,
        "min_pixels": 3136,
        "max_pixels": 6272,
        "video_total_pixels": 802816,
        "min_frames": 3,
    }
    ckpt = _checkpoint(tmp_path / "ck", sampling)
    assert checkpoint_video_sampling(ckpt) == sampling
    settings = settings_from_env(embedded_env(tmp_path / "data", ckpt, base={}))
    assert settings.sampling_defaults["fps"] == 1.5 and settings.sampling_defaults["min_frames"] == 3
    assert settings.sampling_defaults["video_total_pixels"] == 802816


def test_a_folder_without_config_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_checkpoint(str(tmp_path))
    path, trained = resolve_checkpoint(str(_checkpoint(tmp_path / "ok", None)))
    assert path == (tmp_path / "ok").resolve() and trained
