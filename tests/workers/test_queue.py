"""core.queue: reliability settings, routing by name on real Redis, the embedded SQLite transport."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.queue import (
    QueueUnavailableError,
    broker_ping,
    declare_queues,
    enqueue,
    make_celery,
    queue_length,
)
from core.settings import Settings

REDIS_HOST = "127.0.0.1"


def _settings(**kw: object) -> Settings:
    return Settings(secret_key="x" * 32, **kw)


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[tuple[str, redis.Redis, str]]:
    """A broker URL with a key prefix of this test's own on the session's Redis DB; cleaned after."""
    from .conftest import delete_prefixed, prefixed_broker

    url, prefix = prefixed_broker(redis_url)
    client = redis.Redis.from_url(redis_url)
    yield url, client, prefix
    client.close()
    delete_prefixed(redis_url, prefix)


def test_reliability_settings_are_set_everywhere() -> None:
    settings = _settings(broker_url="redis://127.0.0.1:6379/3", visibility_timeout_s=4000)
    conf = make_celery(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_disable_prefetch
    assert conf.broker_transport_options["visibility_timeout"] == 4000
    assert conf.result_backend_transport_options["visibility_timeout"] == 4000
    assert conf.task_soft_time_limit == settings.task_soft_time_limit_s < conf.task_time_limit < 4000
    assert conf.task_ignore_result
    assert conf.worker_cancel_long_running_tasks_on_connection_loss
    assert conf.task_routes["timemark.infer"]["queue"] == "gpu"
    assert conf.task_routes["timemark.probe"]["queue"] == "cpu"
    assert conf.beat_schedule["timemark-sweep"]["task"] == "timemark.sweep"


def test_visibility_timeout_below_hard_limit_is_refused() -> None:
    settings = _settings(
        broker_url="redis://127.0.0.1:6379/3", task_time_limit_s=4000, task_soft_time_limit_s=100
    )
    with pytest.raises(ValueError, match="visibility"):
        make_celery(settings)


def test_enqueue_routes_by_name_to_the_right_redis_list(redis_db: tuple[str, redis.Redis, str]) -> None:
    url, client, prefix = redis_db
    settings = _settings(broker_url=url)
    task_id = enqueue("timemark.infer", "job-1", 3, settings=settings)
    enqueue("timemark.probe", "job-1", settings=settings)
    assert client.llen(f"{prefix}gpu") == 1 and client.llen(f"{prefix}cpu") == 1
    message = json.loads(client.lpop(f"{prefix}gpu"))
    assert message["headers"]["task"] == "timemark.infer"
    assert message["headers"]["id"] == task_id
    assert broker_ping(settings)


def test_unknown_task_or_queue_is_refused() -> None:
    settings = _settings(broker_url="redis://127.0.0.1:6379/3")
    with pytest.raises(ValueError, match="unknown task"):
        enqueue("timemark.nope", settings=settings)
    with pytest.raises(ValueError, match="unknown queue"):
        enqueue("timemark.probe", "j", queue="fast", settings=settings)


def test_dead_broker_gives_typed_error_quickly() -> None:
    settings = _settings(broker_url="redis://127.0.0.1:1/3")  # nothing listens on port 1
    assert broker_ping(settings) is False
    with pytest.raises(QueueUnavailableError):
        enqueue("timemark.probe", "j", settings=settings)


def test_embedded_transport_stores_messages_in_sqlite(tmp_path: Path) -> None:
    settings = _settings(embedded=True, data_dir=tmp_path)
    assert str(settings.broker_url).startswith("sqla+sqlite")
    assert broker_ping(settings)
    enqueue("timemark.finalize", "job-9", settings=settings)
    db_file = Path(str(settings.broker_url).removeprefix("sqla+sqlite:///"))
    with sqlite3.connect(db_file) as conn:
        (count,) = conn.execute("select count(*) from kombu_message").fetchone()
    assert count == 1


def test_declared_embedded_queues_take_publishers_that_start_together(tmp_path: Path) -> None:
    # The embedded service declares its queues before starting the worker and the API: kombu's SQLite
    # transport would otherwise have both insert the queue row at once, and one publish fail.
    settings = _settings(embedded=True, data_dir=tmp_path)
    declare_queues(settings)
    declare_queues(settings)  # idempotent
    db_file = Path(str(settings.broker_url).removeprefix("sqla+sqlite:///"))
    with sqlite3.connect(db_file) as conn:
        assert sorted(name for (name,) in conn.execute("select name from kombu_queue")) == ["cpu", "gpu"]
    publish = (
        "import sys; from core.queue import enqueue; from core.settings import Settings; "
        "s = Settings(embedded=True, data_dir=sys.argv[1]); "
        "[enqueue('timemark.probe', f'job-{i}', settings=s) for i in range(10)]"
    )
    publishers = [
        subprocess.Popen([sys.executable, "-c", publish, str(tmp_path)], cwd=Path(__file__).parents[2])
        for _ in range(2)
    ]
    assert [p.wait(timeout=60) for p in publishers] == [0, 0]
    with sqlite3.connect(db_file) as conn:
        (count,) = conn.execute("select count(*) from kombu_message").fetchone()
    assert count == 20


def test_importing_queue_stays_light() -> None:
    code = "import sys, core.queue; assert 'torch' not in sys.modules and 'workers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_key_prefix_isolates_a_shared_redis_database(redis_db: tuple[str, redis.Redis, str]) -> None:
    url, client, prefix = redis_db
    other = url.replace(prefix, f"other-{prefix}")
    enqueue("timemark.probe", "job-1", settings=_settings(broker_url=url))
    assert client.llen(f"{prefix}cpu") == 1
    assert queue_length("cpu", _settings(broker_url=url)) == 1
    assert queue_length("cpu", _settings(broker_url=other)) == 0  # another app on the same DB sees nothing
    delete_keys = list(client.scan_iter(match=f"other-{prefix}*"))
    if delete_keys:
        client.delete(*delete_keys)


@pytest.mark.parametrize("prefix", ["", "has space", "x" * 65])
def test_bad_key_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="key_prefix"):
        make_celery(_settings(broker_url=f"redis://127.0.0.1:6379/3?key_prefix={prefix}"))
