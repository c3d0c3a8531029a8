"""The worker app: task names and queues, a torch-free parent process, one engine per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.queue import TASK_QUEUES
from core.settings import Settings
from workers.app import create_worker_app
from workers.context import EngineConfigError, WorkerContext, engine_options


# Celery 5.7 deprecates the `queue` task attribute in favour of task_routes; we set both (the routes
# decide), and its router reads the attribute, which warns.
@pytest.mark.filterwarnings(r"ignore:\s*The 'queue' task attribute is deprecated")
def test_every_routed_task_is_registered_with_its_queue_and_late_acks() -> None:
    app = create_worker_app(Settings(secret_key="x" * 32, broker_url="redis://127.0.0.1:6379/3"))
    for name, queue in TASK_QUEUES.items():
        assert app.tasks[name].acks_late, name
        assert app.amqp.router.route({}, name)["queue"].name == queue, name


def test_worker_parent_never_imports_torch() -> None:
    """CUDA does not survive fork(): the prefork parent must not have touched torch or the runtime."""
    code = (
        "import sys; from workers.app import create_worker_app; create_worker_app();"
        "bad = [m for m in ('torch', 'model_runtime', 'av') if m in sys.modules]; assert not bad, bad"
    )
    env = {**os.environ, "TIMEMARK_SECRET_KEY": "x" * 32}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).parents[2])


def test_engine_settings_are_checked() -> None:
    with pytest.raises(EngineConfigError, match="CHECKPOINT"):
        engine_options(Settings(secret_key="x" * 32, engine_kind="native"))
    with pytest.raises(EngineConfigError, match="BASE_URL"):
        engine_options(Settings(secret_key="x" * 32, engine_kind="openai"))
    kind, options = engine_options(
        Settings(
            secret_key="x" * 32, engine_kind="openai", engine_base_url="http://m:8000/v1", engine_model="keye"
        )
    )
    assert kind == "openai" and options["model"] == "keye" and options["api_key"] is None
    kind, options = engine_options(
        Settings(
            secret_key="x" * 32, engine_checkpoint="/ckpt", engine_index_fp8=True, engine_attn_impl="triton"
        )
    )
    assert kind == "native" and options["index_fp8"] is True and options["attn_impl"] == "triton"
    assert options["cuda_graphs"] is True  # the default; TIMEMARK_ENGINE_CUDA_GRAPHS=false turns it off
    _, options = engine_options(
        Settings(secret_key="x" * 32, engine_checkpoint="/ckpt", engine_cuda_graphs=False)
    )
    assert options["cuda_graphs"] is False


def test_engine_is_loaded_once_per_process(worker_settings: Any) -> None:
    ctx = WorkerContext(worker_settings)
    try:
        first = ctx.engine()
        assert ctx.engine() is first
    finally:
        ctx.close()
