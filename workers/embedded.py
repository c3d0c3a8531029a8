"""Embedded mode (DESIGN §4): the whole service on one machine with no servers to install.

The same API and worker code as production, other URLs: SQLite in a data folder instead of
PostgreSQL, kombu's SQLAlchemy transport on a SQLite file instead of Redis, a local storage folder
instead of S3, the native engine on the CPU. `embedded_env` is the environment both processes get;
`prepare` migrates the database and finds a checkpoint; `run_embedded` starts a Celery worker (solo
pool, both queues, beat inside for the sweeper) as a child process and serves the API in this one.
Until the small synthetic-trained model ships, the checkpoint is a tiny random-weight model made
once in a cache folder: its answers are then noise, and the commands say so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from model_runtime.video.sampling import checkpoint_video_sampling

if TYPE_CHECKING:
    from core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINED_CHECKPOINT = REPO_ROOT / "model_runtime" / "checkpoints" / "keye-synth-small"
RANDOM_CHECKPOINT_NOTE = (
    "using a tiny RANDOM-WEIGHT checkpoint (the trained small model is not in this checkout): "
    "the segments it finds are noise; only the plumbing is real"
)


def cache_dir() -> Path:
    return Path.home() / ".cache" / "timemark"


def resolve_checkpoint(requested: str | None) -> tuple[Path, bool]:
    """The checkpoint to serve and whether it is a trained one (False: tiny random weights, made once)."""
    if requested:
        path = Path(requested).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a checkpoint folder (no config.json)")
        return path, True
    if (TRAINED_CHECKPOINT / "config.json").is_file():
        return TRAINED_CHECKPOINT, True
    random_dir = cache_dir() / "checkpoints" / "tiny-random-seed0"
    if not (random_dir / "config.json").is_file():
        from model_runtime.checkpoint import init_checkpoint

        init_checkpoint(random_dir, size="tiny", seed=0)
    return random_dir, False


# Sampling for small CPU models when the checkpoint names none: the trained small model's regime
# (2 fps, 8–15 tokens per frame, 4,096 visual tokens a context; a 160×96 frame is 15 tokens).
SMALL_MODEL_SAMPLING = {
    "fps": 2.0,
    "min_pixels": 8 * 784,
    "max_pixels": 15 * 784,
    "video_total_pixels": 4096 * 784,
    "min_frames": 2,
}


def embedded_env(data_dir: Path, checkpoint: Path, *, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the embedded API and worker (strings, for child processes).

    A checkpoint that records its training sampling makes it the service default, so jobs that
    omit `sampling` show the model frames like the ones it learned from.
    """
    env = dict(os.environ if base is None else base)
    for key in [k for k in env if k.startswith("TIMEMARK_")]:
        del env[key]  # a stray production URL must not leak into the embedded service
    env.update(
        {
            "TIMEMARK_EMBEDDED": "1",
            "TIMEMARK_DATA_DIR": str(data_dir),
            "TIMEMARK_ENGINE_KIND": "native",
            "TIMEMARK_ENGINE_CHECKPOINT": str(checkpoint),
            "TIMEMARK_ENGINE_DEVICE": "cpu",
            "TIMEMARK_SWEEP_INTERVAL_S": "10",
            "TIMEMARK_QUEUED_STALE_AFTER_S": "30",
            # Loopback webhooks and URLs are fine on one's own machine.
            "TIMEMARK_URL_ALLOW_CIDRS": '["127.0.0.0/8"]',
        }
    )
    # One thread: the CPU model is tiny, and on a shared machine more threads only spin against each other.
    env.setdefault("OMP_NUM_THREADS", "1")
    sampling = checkpoint_video_sampling(checkpoint) or SMALL_MODEL_SAMPLING
    for name in ("fps", "min_pixels", "max_pixels", "video_total_pixels", "min_frames", "max_frames"):
        if sampling.get(name) is not None:
            env[f"TIMEMARK_SAMPLING_{name.upper()}"] = str(sampling[name])
    return env


def migrate(database_url: str) -> None:
    """`alembic upgrade head` on the embedded database."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url)
    command.upgrade(config, "head")


def settings_from_env(env: dict[str, str]) -> Settings:
    """Settings for `env` without touching this process's environment."""
    from core.settings import Settings

    values = {k.removeprefix("TIMEMARK_").lower(): v for k, v in env.items() if k.startswith("TIMEMARK_")}
    if "url_allow_cidrs" in values:
        values["url_allow_cidrs"] = tuple(json.loads(values["url_allow_cidrs"]))
    return Settings(**values)


def worker_command(queues: str = "cpu,gpu", *, beat: bool = True, pool: str = "solo") -> list[str]:
    command = [sys.executable, "-c", "from timemark.cli import main; main()", "worker", "--queues", queues]
    command += ["--pool", pool]
    if beat:
        command.append("--beat")
    return command


@contextmanager
def child_process(
    command: list[str], env: dict[str, str], *, log_path: Path | None = None
) -> Iterator[subprocess.Popen]:
    """Start `command`; on exit stop it (SIGTERM, then SIGKILL after 10 s). On Linux the child also gets
    SIGTERM if this process dies without that clean-up (SIGKILL, a crash), so it is never orphaned."""
    log = log_path.open("ab") if log_path else None
    process = subprocess.Popen(
        command,
        env=env,
        stdout=log or None,
        stderr=subprocess.STDOUT if log else None,
        start_new_session=True,
        preexec_fn=_terminate_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
    )
    try:
        yield process
    finally:
        stop_process(process)
        if log:
            log.close()


def _terminate_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def stop_process(process: subprocess.Popen, *, grace_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def wait_ready(base_url: str, *, timeout_s: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll `/readyz` until the API answers 200 (database and broker up)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the service exited with code {process.returncode} while starting")
        try:
            answer = httpx.get(f"{base_url}/readyz", timeout=2.0)
            if answer.status_code == 200:
                return
            last = f"HTTP {answer.status_code}"
        except httpx.HTTPError as err:
            last = type(err).__name__
        time.sleep(0.25)
    raise TimeoutError(f"the service at {base_url} was not ready after {timeout_s:.0f} s ({last})")


def run_embedded(
    data_dir: Path, checkpoint: str | None, *, host: str, port: int, log: Callable[[str], None] = print
) -> None:
    """`timemark serve --embedded`: migrate, start the worker, serve the API until interrupted."""
    import uvicorn

    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    ckpt, trained = resolve_checkpoint(checkpoint)
    if not trained:
        log(f"note: {RANDOM_CHECKPOINT_NOTE}")
    env = embedded_env(data_dir, ckpt)
    # This process serves the API: anything in it that reads settings must see the embedded ones.
    os.environ.update(env)
    from core.queue import declare_queues
    from core.settings import get_settings

    get_settings.cache_clear()
    settings = settings_from_env(env)
    migrate(str(settings.database_url))
    declare_queues(settings)  # before the worker and the API race to create them
    with child_process(worker_command(), env, log_path=data_dir / "worker.log"):
        log(
            f"embedded timemark on http://{host}:{port} (data in {data_dir}, worker log {data_dir / 'worker.log'})"
        )
        from api.main import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
