"""The GPU pod's preStop drain, against a real Celery prefork worker on the local Redis.

A throwaway Celery app (one slow task, a queue of its own, the same reliability knobs core.queue sets
that matter here: late acks, prefetch 1, prefetch disabled) runs in a worker subprocess whose node name
ends in a unique "hostname". `drain` must stop that node's consumer, wait for the running task to finish
(or give up at its deadline), and leave the next message in the Redis list for another pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_support import load_deploy_module

APP_SOURCE = textwrap.dedent(
    """
    import os, time
    from celery import Celery

    app = Celery("drain-test", broker=os.environ["DRAIN_BROKER"])
    app.conf.update(
        task_acks_late=True, worker_prefetch_multiplier=1, worker_disable_prefetch=True,
        task_default_queue=os.environ["DRAIN_QUEUE"], task_ignore_result=True,
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
    )

    @app.task(name="drain.slow")
    def slow(marker: str, seconds: float) -> None:
        time.sleep(seconds)
        with open(marker, "w") as handle:
            handle.write("done")
    """
)


def wait_until(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def celery_worker(tmp_path: Path, redis_url: str) -> Iterator[dict[str, Any]]:
    """A prefork worker (-c 1) consuming a unique queue as node `w@<unique host>`; the client app beside it."""
    queue, host = f"drain-{uuid.uuid4().hex[:8]}", f"pod-{uuid.uuid4().hex[:8]}"
    (tmp_path / "drain_app.py").write_text(APP_SOURCE)
    env = {**os.environ, "DRAIN_BROKER": redis_url, "DRAIN_QUEUE": queue, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-m", "celery", "-A", "drain_app", "worker", "-P", "prefork", "-c", "1",
               "-Q", queue, "-n", f"w@{host}", "--without-gossip", "--without-mingle", "-l", "WARNING"]  # fmt: skip
    log = (tmp_path / "worker.log").open("w")
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    sys.path.insert(0, str(tmp_path))
    os.environ["DRAIN_BROKER"], os.environ["DRAIN_QUEUE"] = redis_url, queue
    try:
        import drain_app

        yield {"app": drain_app.app, "slow": drain_app.slow, "queue": queue, "host": host, "dir": tmp_path}
    finally:
        process.send_signal(signal.SIGQUIT)  # cold shutdown: the test is over, do not wait for tasks
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("drain_app", None)
        for key in ("DRAIN_BROKER", "DRAIN_QUEUE"):
            os.environ.pop(key, None)
        import redis

        client = redis.Redis.from_url(redis_url)
        client.delete(queue)
        client.close()


def queued(app: Any, queue: str) -> int:
    with app.connection_for_read() as conn:
        return int(conn.default_channel.client.llen(queue))


@pytest.mark.slow
def test_drain_stops_consuming_waits_for_the_running_task_and_leaves_the_next(celery_worker) -> None:
    control = load_deploy_module("docker/worker_control")
    app, host, queue, folder = (celery_worker[key] for key in ("app", "host", "queue", "dir"))
    nodes = wait_until(
        lambda: control.local_nodes(app, host, timeout_s=1.0), 60, "the worker to answer pings"
    )
    assert nodes == [f"w@{host}"]

    first = folder / "first.done"
    celery_worker["slow"].delay(str(first), 4.0)
    wait_until(lambda: control.running_tasks(app, nodes, timeout_s=1.0) == 1, 30, "the task to start")

    # A deadline shorter than the task: drain gives up (the soft shutdown handles the rest).
    assert control.drain(app, queue, hostname=host, wait_s=0.2, poll_s=0.2, log=lambda _: None) is False
    assert not first.exists()
    started = time.monotonic()
    assert control.drain(app, queue, hostname=host, wait_s=60, poll_s=0.3, log=lambda _: None) is True
    assert first.exists(), "drain returned before the running task finished"
    assert time.monotonic() - started > 0.5

    second = folder / "second.done"
    celery_worker["slow"].delay(str(second), 0.1)
    time.sleep(2.0)  # ample time for a consuming worker to pick it up
    assert not second.exists() and queued(app, queue) == 1, "a drained worker took a new task"


@pytest.mark.slow
def test_drain_without_a_local_node_returns_at_once(redis_url: str) -> None:
    from celery import Celery

    control = load_deploy_module("docker/worker_control")
    app = Celery("drain-empty", broker=redis_url)
    started = time.monotonic()
    messages: list[str] = []
    assert control.drain(app, "gpu", hostname=f"absent-{uuid.uuid4().hex}", wait_s=60, log=messages.append)
    assert time.monotonic() - started < 10 and "nothing to drain" in messages[0]
