"""Settings: env prefix, embedded defaults, refusal of default secrets, JSON lists from the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import Settings


def test_default_secret_refused_outside_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIMEMARK_SECRET_KEY", raising=False)
    monkeypatch.delenv("TIMEMARK_EMBEDDED", raising=False)
    with pytest.raises(ValidationError, match="TIMEMARK_SECRET_KEY"):
        Settings()
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(secret_key="short")


def test_embedded_defaults_fill_local_places(tmp_path) -> None:
    settings = Settings(embedded=True, data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path}/timemark.db"
    assert settings.broker_url.startswith("sqla+sqlite:///")
    assert settings.storage_url == f"file://{tmp_path}/objects"
    assert settings.is_sqlite


def test_environment_is_read_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIMEMARK_SECRET_KEY", "k" * 32)
    monkeypatch.setenv("TIMEMARK_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("TIMEMARK_URL_ALLOW_CIDRS", '["10.0.0.0/8", "127.0.0.1/32"]')
    monkeypatch.setenv("TIMEMARK_WEBHOOK_RETRY_SCHEDULE_S", "[0, 1, 2]")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.url_allow_cidrs == ("10.0.0.0/8", "127.0.0.1/32")
    assert settings.webhook_retry_schedule_s == (0.0, 1.0, 2.0)
    assert "k" * 32 not in repr(settings)  # secrets stay out of logs


@pytest.mark.parametrize(
    "bad",
    [
        {"url_allow_cidrs": ("not-a-network",)},
        {"storage_url": "ftp://x"},
        {"task_soft_time_limit_s": 900, "task_time_limit_s": 600},
        {"sampling_min_pixels": 300_000},
        {"webhook_retry_schedule_s": ()},
    ],
)
def test_bad_values_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(secret_key="s" * 32, **bad)


def test_frozen() -> None:
    settings = Settings(secret_key="s" * 32)
    with pytest.raises(ValidationError):
        settings.embedded = True  # type: ignore[misc]
