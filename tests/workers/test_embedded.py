"""Embedded mode's environment: SQLite everything, the checkpoint's own sampling, no leaked production URLs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
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


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_child_never_outlives_a_parent_that_is_killed(tmp_path: Path) -> None:
    """The embedded service's worker must not be orphaned when the service dies without cleaning up."""
    pid_file = tmp_path / "child.pid"
    parent_code = (
        "import sys, time\n"
        "from workers.embedded import child_process\n"
        f"with child_process([sys.executable, '-c', 'import time; time.sleep(120)'], {{}}) as child:\n"
        f"    open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "    time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and parent.poll() is None, "the parent did not start its child"
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    parent.kill()  # SIGKILL: no finally, no clean-up in the parent
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child_pid}").exists() and "Z" not in _state(child_pid):
        assert time.monotonic() < deadline, "the child outlived its killed parent"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"
